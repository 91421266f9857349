"""PASCAL VOC 2012 semantic segmentation (21 classes, palette PNG masks).

M. Everingham et al., "The PASCAL Visual Object Classes Challenge: A Retrospective", IJCV 2015.
"""
import os

from .base import IGNORE_LABEL, SegmentationDataset, default_root, make_label_lut, map_labels, read_label_image

__all__ = ['VOC_CLASSES', 'VOCSegmentation']

# Training id -> name; shared by pascal_voc, pascal_aug and coco (GluonCV's names).
VOC_CLASSES = ('background', 'airplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
               'diningtable', 'dog', 'horse', 'motorcycle', 'person', 'potted-plant', 'sheep', 'sofa', 'train', 'tv')

# VOC masks: 0..20 are classes, 255 marks object borders and difficult regions (ignored).
VOC_LABEL_LUT = make_label_lut({**{k: k for k in range(len(VOC_CLASSES))}, 255: IGNORE_LABEL})


class VOCSegmentation(SegmentationDataset):
    """PASCAL VOC 2012 segmentation, ``pascal_voc`` (GluonCV's ``VOCSegmentation``).

    Parameters
    ----------
    root : str or None
        Folder holding ``VOC2012/``; default ``$MXNET_HOME/datasets/voc`` (``~/.mxnet/datasets/voc``).
    split : str
        * ``'train'``: **GluonCV's meaning, the official trainval list** (``trainval.txt``, 2,913 images). GluonCV
          trains its final VOC stage on trainval on purpose (for test-server submissions, gluon-cv PR #464), so
          it includes the 1,449 val images: do not evaluate a model trained on it on ``'val'``.
        * ``'trainval'``: the same list, named explicitly.
        * ``'train_official'``: the official ``train.txt`` (1,464 images), disjoint from ``'val'``: train on it to
          get a held-out validation score on ``'val'``.
        * ``'val'``: ``val.txt`` (1,449 images).
        * ``'test'``: ``test.txt`` (1,456 images, no masks; use mode ``'test'``).
    mode, transform, base_size, crop_size, gluoncv_mask_pad, transforms
        See :class:`segzoo.data.base.SegmentationDataset`.

    Notes
    -----
    Masks: 0..20 are classes, 255 becomes -1 (ignore). GluonCV returns this mask as float32; segzoo returns int32
    with the same values.
    """

    BASE_DIR = 'VOC2012'
    NUM_CLASS = 21
    CLASSES = VOC_CLASSES
    LABEL_LUT = VOC_LABEL_LUT
    NAME = 'pascal_voc'
    SPLITS = {'train': 'trainval.txt', 'trainval': 'trainval.txt', 'train_official': 'train.txt', 'val': 'val.txt',
              'test': 'test.txt'}
    LAYOUT = ('  VOC2012/JPEGImages/<id>.jpg\n'
              '  VOC2012/SegmentationClass/<id>.png\n'
              '  VOC2012/ImageSets/Segmentation/{train,val,trainval,test}.txt')
    PREPARE = 'python scripts/datasets/pascal_voc.py'

    def __init__(self, root=None, split='train', mode=None, transform=None, **kwargs):
        super().__init__(default_root('voc') if root is None else root, split, mode, transform, **kwargs)
        voc_root = self._require(os.path.join(self.root, self.BASE_DIR), 'VOC2012 folder')
        ids = self._read_list(os.path.join(voc_root, 'ImageSets', 'Segmentation', self.SPLITS[split]))
        self.images = [os.path.join(voc_root, 'JPEGImages', i + '.jpg') for i in ids]
        self._check_files(self.images, 'images')
        if self.mode != 'test':
            self.masks = [os.path.join(voc_root, 'SegmentationClass', i + '.png') for i in ids]
            self._check_files(self.masks, 'masks')

    def _read_mask(self, index):
        path = self.masks[index]
        return map_labels(read_label_image(path), self.LABEL_LUT, path)
