"""PASCAL VOC augmented with SBD (``pascal_aug``): the standard ``train_aug`` set and GluonCV's splits.

B. Hariharan, P. Arbelaez, L. Bourdev, S. Maji, J. Malik, "Semantic Contours from Inverse Detectors", ICCV 2011
(the SBD annotations, ``benchmark_RELEASE``).
"""
import os
import warnings

import numpy as np

from .base import (DatasetError, SegmentationDataset, default_root, make_label_lut, map_labels, read_id_list,
                   read_label_image)
from .pascal_voc import VOC_CLASSES, VOC_LABEL_LUT

__all__ = ['LeakySplitWarning', 'VOCAugSegmentation', 'read_sbd_mask', 'train_aug_ids']

PREPARE = 'python scripts/datasets/pascal_voc.py'

# SBD GTcls masks hold 0..20 only (no border/ignore value).
SBD_LABEL_LUT = make_label_lut({k: k for k in range(len(VOC_CLASSES))})


class LeakySplitWarning(UserWarning):
    """A training split contains images of the split that is used for evaluation."""


def _voc_list(root, name):
    return os.path.join(root, 'VOC2012', 'ImageSets', 'Segmentation', name)


def _sbd_dir(root):
    return os.path.join(root, 'VOCaug', 'dataset')


def train_aug_ids(root):
    """Ids of the standard ``train_aug`` set (10,582 images on the full data).

    ``train_aug`` = SBD train (8,498) + SBD val (2,857) + VOC2012 seg train (1,464), minus VOC2012 seg val
    (1,449), so no image of the VOC2012 val set is in it.

    Parameters
    ----------
    root : str
        Folder holding ``VOC2012/`` and ``VOCaug/`` (GluonCV's ``voc`` root).

    Returns
    -------
    list of str
        Sorted, unique image ids.

    Raises
    ------
    FileNotFoundError
        If one of the four list files is missing (the message names them and the preparation command).
    """
    root = os.path.expanduser(root)
    files = {'sbd_train': os.path.join(_sbd_dir(root), 'train.txt'),
             'sbd_val': os.path.join(_sbd_dir(root), 'val.txt'),
             'voc_train': _voc_list(root, 'train.txt'),
             'voc_val': _voc_list(root, 'val.txt')}
    missing = [path for path in files.values() if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError('train_aug needs the SBD and VOC2012 split lists; missing: ' + ', '.join(missing) +
                                f'\nExpected VOCaug/dataset/{{train,val}}.txt and '
                                f'VOC2012/ImageSets/Segmentation/{{train,val}}.txt under {root}.'
                                f'\nPrepare them with: {PREPARE}')
    ids = {name: set(read_id_list(path)) for name, path in files.items()}
    return sorted((ids['sbd_train'] | ids['sbd_val'] | ids['voc_train']) - ids['voc_val'])


def read_sbd_mask(path):
    """Read the class mask ``GTcls.Segmentation`` of an SBD ``cls/<id>.mat`` file as raw values (H, W).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    DatasetError
        If scipy cannot read it or it has no ``GTcls.Segmentation``; the message names the file.
    """
    import scipy.io

    if not os.path.isfile(path):
        raise FileNotFoundError(f'mask file not found: {path}')
    try:
        mat = scipy.io.loadmat(path, mat_dtype=True, squeeze_me=True, struct_as_record=False)
    except Exception as err:  # scipy raises several unrelated types for damaged files
        raise DatasetError(f'cannot read SBD mask {path}: {type(err).__name__}: {err}') from None
    try:
        return np.asarray(mat['GTcls'].Segmentation)
    except (KeyError, AttributeError):
        raise DatasetError(f'SBD mask {path} has no GTcls.Segmentation field') from None


class VOCAugSegmentation(SegmentationDataset):
    """PASCAL VOC + SBD segmentation, ``pascal_aug`` (GluonCV's ``VOCAugSegmentation``, plus ``train_aug``).

    Parameters
    ----------
    root : str or None
        Folder holding ``VOCaug/`` (SBD's ``benchmark_RELEASE``) and, for ``train_aug``, ``VOC2012/``;
        default ``$MXNET_HOME/datasets/voc`` (``~/.mxnet/datasets/voc``).
    split : str
        Default ``'train'`` as in GluonCV (train.py picks ``'train_aug'``).

        * ``'train_aug'``: the standard 10,582-image set (:func:`train_aug_ids`), read from
          ``VOCaug/dataset/train_aug.txt`` when present (the preparation script writes it), else computed. Ids
          with a VOC2012 ``SegmentationClass`` PNG use that official annotation (255 -> ignore) and the VOC2012
          JPEG; the others use the SBD ``.mat`` and SBD image. The official annotation is preferred because it
          is the finer one (it marks object borders as ignore) and is what VOC2012 evaluates against.
        * ``'train'``: GluonCV's meaning, SBD train + val (``trainval.txt``, 11,355 images, all SBD ``.mat``).
          It contains 1,103 of the 1,449 VOC2012 val images, so VOC val scores of a model trained on it are
          optimistic (this is how GluonCV's published VOC models were trained); a ``LeakySplitWarning`` says so.
        * ``'trainval'``: the same list as ``'train'``, same warning.
        * ``'val'``: SBD val (``val.txt``, 2,857 images; this is SBD's val, not VOC2012 val: use
          ``pascal_voc`` ``'val'`` for that).
    mode, transform, base_size, crop_size, gluoncv_mask_pad, transforms
        See :class:`segzoo.data.base.SegmentationDataset`. Unlike GluonCV, modes ``'testval'`` and ``'test'``
        work too.
    """

    NUM_CLASS = 21
    CLASSES = VOC_CLASSES
    LABEL_LUT = SBD_LABEL_LUT
    NAME = 'pascal_aug'
    SPLITS = ('train_aug', 'train', 'trainval', 'val')
    LAYOUT = ('  VOCaug/dataset/img/<id>.jpg\n'
              '  VOCaug/dataset/cls/<id>.mat\n'
              '  VOCaug/dataset/{train,val,trainval,train_aug}.txt\n'
              '  VOC2012/... (for train_aug: JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt)')
    PREPARE = PREPARE

    def __init__(self, root=None, split='train', mode=None, transform=None, **kwargs):
        super().__init__(default_root('voc') if root is None else root, split, mode, transform, **kwargs)
        sbd = self._require(_sbd_dir(self.root), 'SBD folder VOCaug/dataset')
        if split == 'train_aug':
            pairs = self._train_aug_pairs(sbd)
        else:
            ids = self._sbd_trainval_ids(sbd) if split in ('train', 'trainval') else \
                self._read_list(os.path.join(sbd, 'val.txt'))
            pairs = [self._sbd_pair(sbd, i) for i in ids]
        self.images = [image for image, _ in pairs]
        self._check_files(self.images, 'images')
        if self.mode != 'test':
            self.masks = [mask for _, mask in pairs]
            self._check_files(self.masks, 'masks')

    @staticmethod
    def _sbd_pair(sbd, image_id):
        return os.path.join(sbd, 'img', image_id + '.jpg'), os.path.join(sbd, 'cls', image_id + '.mat')

    def _train_aug_pairs(self, sbd):
        list_file = os.path.join(sbd, 'train_aug.txt')
        ids = read_id_list(list_file) if os.path.isfile(list_file) else train_aug_ids(self.root)
        voc = os.path.join(self.root, 'VOC2012')
        pairs = []
        for image_id in ids:
            png = os.path.join(voc, 'SegmentationClass', image_id + '.png')
            if os.path.isfile(png):
                pairs.append((os.path.join(voc, 'JPEGImages', image_id + '.jpg'), png))
            else:
                pairs.append(self._sbd_pair(sbd, image_id))
        return pairs

    def _sbd_trainval_ids(self, sbd):
        list_file = os.path.join(sbd, 'trainval.txt')
        if os.path.isfile(list_file):
            ids = read_id_list(list_file)
        else:  # what the preparation script writes: train.txt then val.txt
            ids = self._read_list(os.path.join(sbd, 'train.txt')) + self._read_list(os.path.join(sbd, 'val.txt'))
            ids = list(dict.fromkeys(ids))
        self._warn_leak(ids)
        return ids

    def _warn_leak(self, ids):
        voc_val = _voc_list(self.root, 'val.txt')
        if os.path.isfile(voc_val):
            leaked = len(set(ids) & set(read_id_list(voc_val)))
            count = f'{leaked} of its {len(ids)} images are'
        else:
            count = 'on the full data 1,103 of its 11,355 images are'
        warnings.warn(f"pascal_aug split {self.split!r} is GluonCV's SBD train+val list: {count} in the VOC2012 "
                      f"val set, so VOC val scores of a model trained on it are optimistic. Use "
                      f"split='train_aug' (SBD + VOC train minus VOC val) for a clean VOC val evaluation.",
                      LeakySplitWarning, stacklevel=3)

    def _read_mask(self, index):
        path = self.masks[index]
        if path.endswith('.png'):
            return map_labels(read_label_image(path), VOC_LABEL_LUT, path)
        return map_labels(read_sbd_mask(path), self.LABEL_LUT, path)
