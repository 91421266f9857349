"""Cityscapes fine annotations (19 evaluation classes).

M. Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR 2016.
"""
import os

from .base import IGNORE_LABEL, SegmentationDataset, default_root, make_label_lut, map_labels, read_label_image

__all__ = ['CITYSCAPES_CLASSES', 'CITYSCAPES_EVAL_IDS', 'CitySegmentation']

# Training id -> name (GluonCV's spelling, including its 'bicyle').
CITYSCAPES_CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
                      'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle',
                      'bicyle')

# The labelIds (0..33 in *_gtFine_labelIds.png) that are evaluated; their position is the training id.
CITYSCAPES_EVAL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

CITYSCAPES_LABEL_LUT = make_label_lut({**{label_id: IGNORE_LABEL for label_id in range(34)},
                                       **{label_id: i for i, label_id in enumerate(CITYSCAPES_EVAL_IDS)}})

_IMAGE_TAG, _MASK_TAG = 'leftImg8bit', 'gtFine_labelIds'


class CitySegmentation(SegmentationDataset):
    """Cityscapes, ``citys`` (GluonCV's ``CitySegmentation``).

    Parameters
    ----------
    root : str or None
        The Cityscapes folder itself, holding ``leftImg8bit/`` and ``gtFine/``; default
        ``$MXNET_HOME/datasets/citys`` (``~/.mxnet/datasets/citys``).
    split : str
        ``'train'`` (2,975), ``'val'`` (500), ``'trainval'`` (train then val) or ``'test'`` (1,525; its
        official masks are empty, so use mode ``'test'``). Files are sorted by city and name (GluonCV keeps the
        file system's order). Every image must have its ``*_gtFine_labelIds.png`` (GluonCV skips unpaired images
        with a print; segzoo raises).
    mode, transform, base_size, crop_size, gluoncv_mask_pad, transforms
        See :class:`segzoo.data.base.SegmentationDataset`.

    Notes
    -----
    labelIds are mapped to the 19 training ids by ``CITYSCAPES_EVAL_IDS``; every other id in 0..33 is ignored
    (-1); values above 33 are an error naming the file.
    """

    NUM_CLASS = 19
    CLASSES = CITYSCAPES_CLASSES
    LABEL_LUT = CITYSCAPES_LABEL_LUT
    NAME = 'citys'
    SPLITS = {'train': ('train',), 'val': ('val',), 'trainval': ('train', 'val'), 'test': ('test',)}
    LAYOUT = ('  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n'
              '  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png')
    PREPARE = ('python scripts/datasets/cityscapes.py (with gtFine_trainvaltest.zip and '
               'leftImg8bit_trainvaltest.zip downloaded by hand from cityscapes-dataset.com)')

    def __init__(self, root=None, split='train', mode=None, transform=None, **kwargs):
        super().__init__(default_root('citys') if root is None else root, split, mode, transform, **kwargs)
        for part in self.SPLITS[split]:
            image_dir = self._require(os.path.join(self.root, _IMAGE_TAG, part), 'image folder')
            images = _walk_images(image_dir)
            if not images:
                raise self._missing(os.path.join(image_dir, '<city>', f'*_{_IMAGE_TAG}.png'), 'images')
            self.images += images
            if self.mode != 'test':
                self.masks += [_mask_path(self.root, part, p) for p in images]
        if self.mode != 'test':
            self._check_files(self.masks, 'masks')

    def _read_mask(self, index):
        path = self.masks[index]
        return map_labels(read_label_image(path), self.LABEL_LUT, path)


def _walk_images(folder):
    paths = []
    for city in sorted(os.listdir(folder)):
        city_dir = os.path.join(folder, city)
        if os.path.isdir(city_dir):
            paths += [os.path.join(city_dir, n) for n in sorted(os.listdir(city_dir)) if n.endswith('.png')]
    return paths


def _mask_path(root, part, image_path):
    city = os.path.basename(os.path.dirname(image_path))
    name = os.path.basename(image_path).replace(_IMAGE_TAG, _MASK_TAG)
    return os.path.join(root, 'gtFine', part, city, name)
