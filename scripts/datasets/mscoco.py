"""Prepare MS COCO 2017 for segzoo's and GluonCV's ``coco`` segmentation dataset (20 VOC classes).

Result under ``--root`` (default ``~/.mxnet/datasets/coco``)::

    train2017/*.jpg  val2017/*.jpg  annotations/instances_{train,val}2017.json

Then the list of kept image ids (images with more than 1000 pixels of the 20 VOC classes) is cached by
instantiating ``segzoo.data.coco.COCOSegmentation`` for each split; on the full data train keeps
92,516 images.

Examples::

    python scripts/datasets/mscoco.py
    python scripts/datasets/mscoco.py --download-dir ~/archives --no-download
"""
import os

from segzoo.cli import base_parser
from segzoo.utils.prepare import (Archive, PrepareError, add_common_args, fetch_archives, finish,
                                  require_dirs, resolve_dirs, run)

_BASE = 'http://images.cocodataset.org/'

# Published archives (file name, official URL, SHA-1). Tests may replace entries.
ARCHIVES = {
    'train2017': Archive('train2017.zip', _BASE + 'zips/train2017.zip', '10ad623668ab00c62c096f0ed636d6aff41faca5'),
    'val2017': Archive('val2017.zip', _BASE + 'zips/val2017.zip', '4950dc9d00dbe1c933ee0170f5797584351d2a41'),
    'annotations': Archive('annotations_trainval2017.zip', _BASE + 'annotations/annotations_trainval2017.zip',
                           '8551ee4bb5860311e79dace7e79cb91e432e78b3'),
}

_ANNOTATIONS = {'train': 'annotations/instances_train2017.json', 'val': 'annotations/instances_val2017.json'}


def parse_args(argv=None):
    parser = base_parser(__doc__.split('\n')[0])
    add_common_args(parser, 'coco')
    parser.add_argument('--no-cache', action='store_true',
                        help='do not build the id cache (segzoo.data.coco.COCOSegmentation) after extraction')
    return parser.parse_args(argv)


def verify_coco(root):
    """Check the folders and annotation files; return ``{split: number of images on disk}``."""
    require_dirs(root, ['train2017', 'val2017', 'annotations'], 'the COCO archives were not extracted correctly')
    for rel in _ANNOTATIONS.values():
        if not os.path.isfile(os.path.join(root, rel)):
            raise PrepareError(f'{os.path.join(root, rel)} is missing: annotations_trainval2017.zip was not '
                               'extracted correctly.')
    return {split: sum(1 for n in os.listdir(os.path.join(root, f'{split}2017')) if n.endswith('.jpg'))
            for split in ('train', 'val')}


def build_id_cache(root):
    """Instantiate ``COCOSegmentation`` per split (which builds and caches its kept-id list); return sizes."""
    try:
        from segzoo.data.coco import COCOSegmentation
    except ImportError as exc:
        raise PrepareError(f'segzoo.data.coco.COCOSegmentation is not available ({exc}); the images are in '
                           'place, run again with --no-cache or after installing segzoo fully.') from exc
    return {split: len(COCOSegmentation(root=root, split=split)) for split in ('train', 'val')}


def main(args):
    """Obtain, extract and verify the archives, build the id cache; return the counts."""
    resolve_dirs(args, 'coco')
    fetch_archives(args, ARCHIVES)
    counts = {'images': verify_coco(args.root)}
    if not args.no_cache:
        counts['segmentation'] = build_id_cache(args.root)
    return finish(args, 'COCO 2017', counts)


if __name__ == '__main__':
    run(main, parse_args)
