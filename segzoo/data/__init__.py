"""Segmentation datasets with GluonCV's names, folders and item types.

``get_segmentation_dataset(name, ...)`` builds one of::

    pascal_voc   VOCSegmentation      21 classes   root holds VOC2012/                      (~/.mxnet/datasets/voc)
    pascal_aug   VOCAugSegmentation   21 classes   root holds VOCaug/ (+ VOC2012/)          (~/.mxnet/datasets/voc)
    coco         COCOSegmentation     21 classes   root holds annotations/, train2017/...   (~/.mxnet/datasets/coco)
    ade20k       ADE20KSegmentation  150 classes   root holds ADEChallengeData2016/         (~/.mxnet/datasets/ade)
    citys        CitySegmentation     19 classes   root holds leftImg8bit/, gtFine/         (~/.mxnet/datasets/citys)
    folder       FolderSegmentation   classes.txt  root holds classes.txt, images/, masks/  (your own data)

``$MXNET_HOME/datasets`` replaces ``~/.mxnet/datasets`` when ``MXNET_HOME`` is set.
"""
from .ade20k import ADE20KSegmentation
from .base import BASE_SIZE, CROP_SIZE, IGNORE_LABEL, MODES, DatasetError, SegmentationDataset
from .cityscapes import CitySegmentation
from .coco import COCOSegmentation
from .folder import FolderSegmentation
from .pascal_aug import LeakySplitWarning, VOCAugSegmentation, train_aug_ids
from .pascal_voc import VOCSegmentation

__all__ = ['ADE20KSegmentation', 'COCOSegmentation', 'CitySegmentation', 'DATASETS', 'DatasetError',
           'FolderSegmentation', 'IGNORE_LABEL', 'LeakySplitWarning', 'MODES', 'NUM_CLASS', 'SegmentationDataset',
           'VOCAugSegmentation', 'VOCSegmentation',
           'get_segmentation_dataset', 'train_aug_ids']

DATASETS = {
    'pascal_voc': VOCSegmentation,
    'pascal_aug': VOCAugSegmentation,
    'coco': COCOSegmentation,
    'ade20k': ADE20KSegmentation,
    'citys': CitySegmentation,
    'folder': FolderSegmentation,
}

# Number of classes per dataset name (the folder dataset's comes from its classes.txt, so it is not here).
NUM_CLASS = {name: cls.NUM_CLASS for name, cls in DATASETS.items() if cls.NUM_CLASS}


def get_segmentation_dataset(name, split='train', mode=None, root=None, transform=None, base_size=BASE_SIZE,
                             crop_size=CROP_SIZE, transforms=None, **kwargs):
    """Build a segmentation dataset by name (GluonCV's ``get_segmentation_dataset``).

    Parameters
    ----------
    name : str
        One of ``DATASETS`` (case-insensitive): pascal_voc, pascal_aug, coco, ade20k, citys, folder (your own
        data: ``root`` holds classes.txt, images/<split>/, masks/<split>/).
    split : str
        Which file list; the valid values depend on the dataset (see its class). Note that ``pascal_voc``
        ``'train'`` is VOC trainval and ``pascal_aug`` ``'train'`` is SBD train+val, as in GluonCV; pascal_aug
        ``'train_aug'`` is the standard 10,582-image set.
    mode : str or None
        ``'train'``, ``'val'``, ``'testval'`` or ``'test'``; ``None`` means ``split``.
    root : str or None
        Dataset folder with GluonCV's meaning; ``None`` means ``$MXNET_HOME/datasets/<voc|coco|ade|citys>``.
    transform : callable or None
        GluonCV's image transform (items of GluonCV's types, ``mx.nd``); see
        :class:`segzoo.data.base.SegmentationDataset`.
    base_size, crop_size : int
        Sizes of the built-in train/val pipelines.
    transforms : str, callable or None
        The item pipeline instead: ``'gluoncv'`` or ``'composer'`` (that recipe's pipeline for ``mode``, numpy
        items normalised for the network), or ``f(image, label, rng) -> item`` (``segzoo.data.transforms``).
    **kwargs
        Dataset options, e.g. ``gluoncv_mask_pad=True``, or ``include_crowd`` / ``min_pixels`` for coco.

    Returns
    -------
    SegmentationDataset

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones), split or mode.
    FileNotFoundError
        If the data is not where ``root`` says (the message shows the layout and the preparation command).
    """
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f'unknown dataset {name!r}; valid names: {", ".join(DATASETS)}')
    return DATASETS[key](root=root, split=split, mode=mode, transform=transform, base_size=base_size,
                         crop_size=crop_size, transforms=transforms, **kwargs)
