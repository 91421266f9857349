"""Prepare PASCAL VOC 2012 segmentation and the SBD augmented set (VOCaug) for segzoo and GluonCV.

Result under ``--root`` (default ``~/.mxnet/datasets/voc``)::

    VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation/{train,val,trainval}.txt,...}
    VOCaug/dataset/{img,cls,inst,train.txt,val.txt,trainval.txt,train_aug.txt}
    VOC2007/...                      (only with --voc2007)

``train_aug.txt`` is the standard 10,582-image training list: (SBD train + SBD val + VOC2012 train)
minus VOC2012 val. ``trainval.txt`` is GluonCV's ``pascal_aug`` train split (SBD train + val, 11,355
images, which overlaps VOC2012 val).

Examples::

    python scripts/datasets/pascal_voc.py                          # download (resumable) and prepare
    python scripts/datasets/pascal_voc.py --download-dir ~/archives --no-download   # offline
"""
import os

from segzoo.cli import base_parser
from segzoo.data.base import read_id_list
from segzoo.utils.prepare import (Archive, PrepareError, add_common_args, fetch_archives, finish,
                                  resolve_dirs, run, write_lines)

_VOC_URL = 'http://host.robots.ox.ac.uk/pascal/VOC/'
_SBD_URL = 'http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/'

# Published archives (file name, official URL, SHA-1). Tests may replace entries.
ARCHIVES = {
    'voc2012': Archive('VOCtrainval_11-May-2012.tar', _VOC_URL + 'voc2012/VOCtrainval_11-May-2012.tar',
                       '4e443f8a2eca6b1dac8a6c57641b67dd40621a49'),
    'sbd': Archive('benchmark.tgz', _SBD_URL + 'benchmark.tgz', '7129e0a480c2d6afb02b517bb18ac54283bfaa35'),
    'voc2007_trainval': Archive('VOCtrainval_06-Nov-2007.tar', _VOC_URL + 'voc2007/VOCtrainval_06-Nov-2007.tar',
                                '34ed68851bce2a36e2a223fa52c661d592c66b3c'),
    'voc2007_test': Archive('VOCtest_06-Nov-2007.tar', _VOC_URL + 'voc2007/VOCtest_06-Nov-2007.tar',
                            '41a8d6e12baa5ab18ee7f8f8029b9e11805b4ef1'),
}

# Where each archive's top folder goes under --root.
_REMAP = {
    'voc2012': [('VOCdevkit/VOC2012', 'VOC2012')],
    'sbd': [('benchmark_RELEASE', 'VOCaug')],
    'voc2007_trainval': [('VOCdevkit/VOC2007', 'VOC2007')],
    'voc2007_test': [('VOCdevkit/VOC2007', 'VOC2007')],
}


def parse_args(argv=None):
    parser = base_parser(__doc__.split('\n')[0])
    add_common_args(parser, 'voc')
    parser.add_argument('--voc2007', action='store_true', help='also prepare VOC2007 trainval and test')
    return parser.parse_args(argv)


def _missing(root, ids, patterns):
    return [p.format(i) for i in ids for p in patterns if not os.path.isfile(os.path.join(root, p.format(i)))]


def _check_files(root, ids, patterns, what):
    missing = _missing(root, ids, patterns)
    if missing:
        shown = ', '.join(missing[:5]) + (f' and {len(missing) - 5} more' if len(missing) > 5 else '')
        raise PrepareError(f'{what} under {root} is incomplete: missing {shown}. Re-run with --overwrite to '
                           'extract the archives again.')


def verify_voc(root, year='2012'):
    """Check ``VOC<year>`` (split lists, JPEGs and masks) and return ``{split: count}``."""
    base = os.path.join(root, f'VOC{year}')
    seg = os.path.join(base, 'ImageSets', 'Segmentation')
    counts = {}
    for split in ('train', 'val', 'trainval', 'test'):
        path = os.path.join(seg, f'{split}.txt')
        if not os.path.isfile(path):
            if split in ('train', 'val'):
                raise PrepareError(f'{path} is missing: VOC{year} was not extracted correctly.')
            continue
        ids = read_id_list(path)
        patterns = ['JPEGImages/{}.jpg'] + ([] if split == 'test' else ['SegmentationClass/{}.png'])
        _check_files(base, ids, patterns, f'VOC{year} {split}')
        counts[split] = len(ids)
    return counts


def verify_sbd(root):
    """Check ``VOCaug/dataset`` (lists, images, ``cls/*.mat``), write ``trainval.txt``; return counts."""
    base = os.path.join(root, 'VOCaug', 'dataset')
    counts = {}
    lists = {}
    for split in ('train', 'val'):
        path = os.path.join(base, f'{split}.txt')
        if not os.path.isfile(path):
            raise PrepareError(f'{path} is missing: the SBD archive was not extracted correctly.')
        lists[split] = read_id_list(path)
        _check_files(base, lists[split], ['img/{}.jpg', 'cls/{}.mat'], f'SBD {split}')
        counts[split] = len(lists[split])
    # GluonCV's pascal_aug 'train' split: SBD train followed by SBD val.
    write_lines(os.path.join(base, 'trainval.txt'), lists['train'] + lists['val'])
    counts['trainval'] = len(lists['train']) + len(lists['val'])
    return counts


def compute_train_aug(root):
    """Ids of the standard train_aug split: (SBD train + SBD val + VOC2012 train) minus VOC2012 val, sorted."""
    from segzoo.data.pascal_aug import train_aug_ids  # the dataset owns the definition of its splits
    try:
        return list(train_aug_ids(root))
    except FileNotFoundError as exc:
        raise PrepareError(str(exc)) from exc


def main(args):
    """Obtain, extract and verify the archives; write the split lists; return the per-split counts."""
    resolve_dirs(args, 'voc')
    keys = ['voc2012', 'sbd'] + (['voc2007_trainval', 'voc2007_test'] if args.voc2007 else [])
    fetch_archives(args, {key: ARCHIVES[key] for key in keys}, remap=_REMAP)
    counts = {'VOC2012': verify_voc(args.root, '2012'), 'VOCaug': verify_sbd(args.root)}
    if args.voc2007:
        counts['VOC2007'] = verify_voc(args.root, '2007')
    train_aug = compute_train_aug(args.root)
    write_lines(os.path.join(args.root, 'VOCaug', 'dataset', 'train_aug.txt'), train_aug)
    counts['VOCaug']['train_aug'] = len(train_aug)
    return finish(args, 'Pascal VOC', counts)


if __name__ == '__main__':
    run(main, parse_args)
