"""Prepare Cityscapes (fine annotations) for segzoo's and GluonCV's ``citys`` dataset.

Cityscapes needs an account: log in at https://www.cityscapes-dataset.com/downloads/ and download
``gtFine_trainvaltest.zip`` (241 MB) and ``leftImg8bit_trainvaltest.zip`` (11 GB) into one folder, then::

    python scripts/datasets/cityscapes.py --download-dir ~/Downloads

Result under ``--root`` (default ``~/.mxnet/datasets/citys``)::

    leftImg8bit/{train,val,test}/<city>/*_leftImg8bit.png
    gtFine/{train,val,test}/<city>/*_gtFine_labelIds.png          (2,975 / 500 / 1,525 images)
"""
import os

from segzoo.cli import base_parser
from segzoo.utils.prepare import (Archive, PrepareError, add_common_args, fetch_archives, finish,
                                  obtain_archive, require_dirs, resolve_dirs, run)

_LOGIN_URL = 'https://www.cityscapes-dataset.com/downloads/'

# Published archives (file name, where to get them, SHA-1). Tests may replace entries.
ARCHIVES = {
    'gtFine': Archive('gtFine_trainvaltest.zip', 'https://www.cityscapes-dataset.com/file-handling/?packageID=1',
                      '99f532cb1af174f5fcc4c5bc8feea8c66246ddbc'),
    'leftImg8bit': Archive('leftImg8bit_trainvaltest.zip',
                           'https://www.cityscapes-dataset.com/file-handling/?packageID=3',
                           '2c0b77ce9933cc635adda307fbba5566f5d9d404'),
}

_IMAGE_SUFFIX = '_leftImg8bit.png'
_MASK_SUFFIX = '_gtFine_labelIds.png'


def parse_args(argv=None):
    parser = base_parser(__doc__.split('\n')[0])
    add_common_args(parser, 'citys', download_help='folder holding gtFine_trainvaltest.zip and '
                                                   'leftImg8bit_trainvaltest.zip (default: the current folder)')
    args = parser.parse_args(argv)
    if args.download_dir is None:
        args.download_dir = os.getcwd()
    return args


def _stems(folder, suffix):
    found = set()
    for city in sorted(os.listdir(folder)):
        city_dir = os.path.join(folder, city)
        if os.path.isdir(city_dir):
            found.update(os.path.join(city, n[:-len(suffix)]) for n in os.listdir(city_dir) if n.endswith(suffix))
    return found


def verify_citys(root):
    """Check that every image of each split has its labelIds mask; return ``{split: pairs}``."""
    splits = ('train', 'val', 'test')
    require_dirs(root, [f'{kind}/{s}' for kind in ('leftImg8bit', 'gtFine') for s in splits],
                 'the Cityscapes zips were not extracted correctly')
    counts = {}
    for split in splits:
        images = _stems(os.path.join(root, 'leftImg8bit', split), _IMAGE_SUFFIX)
        masks = _stems(os.path.join(root, 'gtFine', split), _MASK_SUFFIX)
        lonely = sorted(images - masks)
        if lonely:
            raise PrepareError(f'{root}: {len(lonely)} {split} images have no {_MASK_SUFFIX} mask, e.g. '
                               f'{lonely[:5]}. Re-run with --overwrite.')
        counts[split] = len(images)
    return counts


def _obtain(archive, args):
    if args.mirror is None and not os.path.isfile(os.path.join(args.download_dir, archive.filename)):
        raise PrepareError(f'{archive.filename} is not in {args.download_dir}. Cityscapes requires a login: '
                           f'download it from {_LOGIN_URL} ({archive.url}, SHA-1 {archive.sha1}) into that folder '
                           'and pass it with --download-dir.')
    return obtain_archive(archive, args.download_dir, args.mirror, args.no_download or args.mirror is None,
                          args.retries, args.timeout, progress=not args.quiet)


def main(args):
    """Verify and extract the two zips; return the per-split counts."""
    if args.download_dir is None:
        args.download_dir = os.getcwd()
    resolve_dirs(args, 'citys')
    fetch_archives(args, ARCHIVES, obtain=_obtain)
    counts = verify_citys(args.root)
    finish(args, 'Cityscapes', {'gtFine + leftImg8bit': counts})
    return counts


if __name__ == '__main__':
    run(main, parse_args)
