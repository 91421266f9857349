"""Check a folder dataset (your own data) before training, or write the 10-image example from the bundled photos.

Examples::

    python scripts/datasets/folder.py DIR                 # problems (with file names), per-split counts, histogram
    python scripts/datasets/folder.py DIR --split train   # only that split
    python scripts/datasets/folder.py --make-example DIR  # 3 classes (background, person, other), 8 train + 2 val

The layout is in ``segzoo/data/folder.py``. The check exits with status 1 when anything is wrong, so it can guard a
training script; train.py runs the cheap part of it (image headers instead of full decodes) by itself.
"""
import argparse
import os
import shutil
import sys

import numpy as np
from PIL import Image

from segzoo.data.folder import check_folder
from segzoo.utils.fileio import write_lines
from segzoo.utils.viz import class_palette

VOC_SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'segzoo',
                          'sample_data', 'voc_mini', 'VOC2012')
EXAMPLE_CLASSES = ('background', 'person', 'other')
EXAMPLE_COLORS = ((0, 0, 0), (220, 20, 60), (70, 130, 180))
VOC_PERSON = 15


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('root', help='the dataset folder (classes.txt, images/<split>/, masks/<split>/)')
    parser.add_argument('--split', action='append', default=None, help='check only this split (repeatable)')
    parser.add_argument('--headers-only', action='store_true',
                        help='read image headers instead of decoding every image (what train.py runs)')
    parser.add_argument('--make-example', action='store_true',
                        help='write the example dataset into ROOT from the bundled VOC photographs, then check it')
    parser.add_argument('--num-train', type=int, default=8, help='--make-example: training images')
    parser.add_argument('--num-val', type=int, default=2, help='--make-example: validation images')
    return parser.parse_args(argv)


def _voc_ids(split):
    with open(os.path.join(VOC_SAMPLE, 'ImageSets', 'Segmentation', f'{split}.txt')) as f:
        return [line.strip() for line in f if line.strip()]


def _voc_mask(image_id):
    return np.array(Image.open(os.path.join(VOC_SAMPLE, 'SegmentationClass', image_id + '.png')))


def make_example(root, num_train=8, num_val=2):
    """Write a 3-class folder dataset (background, person, other) into `root` from the bundled VOC images.

    The VOC training images with the most person pixels go to ``train``, the VOC val images with the most to
    ``val``; masks are index PNGs (VOC person -> 1, the 19 other objects -> 2, borders stay 255) with the
    colours of ``palette.txt`` attached. Returns ``{split: [names]}``.
    """
    chosen = {}
    for split, voc_split, count in (('train', 'train', num_train), ('val', 'val', num_val)):
        ids = sorted(_voc_ids(voc_split), key=lambda i: -(_voc_mask(i) == VOC_PERSON).mean())[:count]
        chosen[split] = sorted(ids)
        for sub in ('images', 'masks'):
            os.makedirs(os.path.join(root, sub, split), exist_ok=True)
        for image_id in chosen[split]:
            shutil.copyfile(os.path.join(VOC_SAMPLE, 'JPEGImages', image_id + '.jpg'),
                            os.path.join(root, 'images', split, image_id + '.jpg'))
            voc = _voc_mask(image_id)
            mask = np.where(voc == VOC_PERSON, 1, np.where((voc > 0) & (voc < 255), 2, voc)).astype(np.uint8)
            picture = Image.fromarray(mask, mode='P')
            picture.putpalette(class_palette(EXAMPLE_COLORS))   # all 256 entries, so 255 stays 255
            picture.save(os.path.join(root, 'masks', split, image_id + '.png'))
    write_lines(os.path.join(root, 'classes.txt'), EXAMPLE_CLASSES)
    write_lines(os.path.join(root, 'palette.txt'), [' '.join(map(str, rgb)) for rgb in EXAMPLE_COLORS])
    return chosen


def main(args):
    """Check (after ``--make-example``, write) the folder; returns the report (exit status 1 when not ok)."""
    if args.make_example:
        chosen = make_example(args.root, args.num_train, args.num_val)
        print(f'wrote {args.root}: ' + ', '.join(f'{len(v)} {k}' for k, v in chosen.items()) + ' images, classes '
              + ', '.join(EXAMPLE_CLASSES))
    try:
        report = check_folder(args.root, args.split, decode_images=not args.headers_only)
    except (ValueError, FileNotFoundError) as err:      # no usable classes.txt: nothing else can be checked
        raise SystemExit(f'error: {err}') from err
    print(report.format())
    return report


if __name__ == '__main__':
    sys.exit(0 if main(parse_args()).ok else 1)
