"""Prepare ADE20K (MIT Scene Parsing, ADEChallengeData2016) for segzoo's and GluonCV's ``ade20k`` dataset.

Result under ``--root`` (default ``~/.mxnet/datasets/ade``)::

    ADEChallengeData2016/{images,annotations}/{training,validation}/   (20,210 / 2,000 pairs)
    release_test/testing/*.jpg                                          (only with --test)

Examples::

    python scripts/datasets/ade20k.py
    python scripts/datasets/ade20k.py --download-dir ~/archives --no-download
"""
import os

from segzoo.cli import base_parser
from segzoo.utils.prepare import (Archive, PrepareError, add_common_args, fetch_archives, finish,
                                  require_dirs, resolve_dirs, run)

_BASE = 'http://data.csail.mit.edu/places/ADEchallenge/'

# Published archives (file name, official URL, SHA-1). Tests may replace entries.
ARCHIVES = {
    'trainval': Archive('ADEChallengeData2016.zip', _BASE + 'ADEChallengeData2016.zip',
                        '219e1696abb36c8ba3a3afe7fb2f4b4606a897c7'),
    'test': Archive('release_test.zip', _BASE + 'release_test.zip', 'e05747892219d10e9243933371a497e905a4860c'),
}


def parse_args(argv=None):
    parser = base_parser(__doc__.split('\n')[0])
    add_common_args(parser, 'ade')
    parser.add_argument('--test', action='store_true', help='also prepare the test images (release_test.zip)')
    return parser.parse_args(argv)


def verify_ade(root):
    """Check that every image has its annotation (and vice versa); return ``{split: pairs}``."""
    base = os.path.join(root, 'ADEChallengeData2016')
    splits = ('training', 'validation')
    require_dirs(base, [f'{kind}/{s}' for kind in ('images', 'annotations') for s in splits],
                 'ADEChallengeData2016.zip was not extracted correctly')
    counts = {}
    for split in splits:
        images = {n[:-4] for n in os.listdir(os.path.join(base, 'images', split)) if n.endswith('.jpg')}
        masks = {n[:-4] for n in os.listdir(os.path.join(base, 'annotations', split)) if n.endswith('.png')}
        unpaired = sorted(images ^ masks)
        if unpaired:
            raise PrepareError(f'{base}: {len(unpaired)} {split} images without annotation or annotations '
                               f'without image, e.g. {unpaired[:5]}. Re-run with --overwrite.')
        counts[split] = len(images)
    return counts


def main(args):
    """Obtain, extract and verify the archives; return the per-split counts."""
    resolve_dirs(args, 'ade')
    fetch_archives(args, {key: ARCHIVES[key] for key in ['trainval'] + (['test'] if args.test else [])})
    counts = verify_ade(args.root)
    if args.test:
        test_dir = os.path.join(args.root, 'release_test', 'testing')
        if not os.path.isdir(test_dir):
            raise PrepareError(f'{test_dir} is missing: release_test.zip was not extracted correctly.')
        counts['testing'] = sum(1 for n in os.listdir(test_dir) if n.endswith('.jpg'))
    finish(args, 'ADE20K', {'ADEChallengeData2016': counts})
    return counts


if __name__ == '__main__':
    run(main, parse_args)
