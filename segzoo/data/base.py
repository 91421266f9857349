"""Base class of the segmentation datasets: file lists, decoding, label mapping, the item pipeline.

A dataset class only says where its files are and how raw mask values map to training ids. This module decodes
images as GluonCV does (``PIL.Image.open(path).convert('RGB')``), maps masks through a 256-entry look-up table that
also rejects unknown values, and hands ``(image, label, rng)`` to the dataset's ``transforms`` pipeline. Every
failure raises an exception whose only argument is a message naming the file, so it pickles unchanged from
DataLoader worker processes.
"""
import os

import mxnet as mx
import numpy as np
from PIL import Image, ImageFile

from ..model_store import mxnet_home
from .transforms import IGNORE_LABEL, ToNDArray, get_transforms

__all__ = ['BASE_SIZE', 'CROP_SIZE', 'IGNORE_LABEL', 'MODES', 'DatasetError', 'SegmentationDataset', 'default_root',
           'make_label_lut', 'map_labels', 'read_id_list', 'read_image', 'read_label_image']

# GluonCV's default sizes (its train.py/test.py): images rescaled around BASE_SIZE, CROP_SIZE crops.
BASE_SIZE, CROP_SIZE = 520, 480
MODES = ('train', 'val', 'testval', 'test')

# Marks raw values that are neither a class nor ignore in a look-up table.
_INVALID = np.iinfo(np.int32).min


class DatasetError(ValueError):
    """A dataset file cannot be decoded, has bad label values, or does not match its pair (one message string,
    naming the file, so it pickles unchanged from worker processes)."""


def default_root(name):
    """GluonCV's default dataset folder ``$MXNET_HOME/datasets/<name>`` (``~/.mxnet`` without ``MXNET_HOME``)."""
    return os.path.join(mxnet_home(), 'datasets', name)


def make_label_lut(mapping):
    """Read-only int32 (256,) table ``raw 8-bit value -> training id`` from ``{raw: id}``; other values are
    invalid (:func:`map_labels` reports them)."""
    lut = np.full(256, _INVALID, dtype=np.int32)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    lut.setflags(write=False)
    return lut


def _describe_valid(lut):
    """'0-20, 255' style description of the valid raw values of a look-up table."""
    valid = np.flatnonzero(lut != _INVALID)
    runs, start = [], valid[0]
    for prev, cur in zip(valid[:-1], valid[1:]):
        if cur != prev + 1:
            runs.append((start, prev))
            start = cur
    runs.append((start, valid[-1]))
    return ', '.join(str(a) if a == b else f'{a}-{b}' for a, b in runs)


def map_labels(raw, lut, path):
    """int32 (H, W) training ids (-1 ignore) of the integral (H, W) mask ``raw`` through ``lut``; a
    :class:`DatasetError` naming ``path`` lists the values the table does not know."""
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise DatasetError(f'mask {path} must be a single-channel (H, W) label image, got shape {raw.shape}')
    if raw.dtype != np.uint8:
        values = np.unique(raw)
        bad = values[(values < 0) | (values > 255) | (values != np.round(values))]
        if bad.size:
            raise DatasetError(f'mask {path} has label values {bad.tolist()[:20]} outside the valid raw '
                               f'values {_describe_valid(lut)}')
        raw = raw.astype(np.uint8)
    mapped = lut[raw]
    invalid = mapped == _INVALID
    if invalid.any():
        bad = np.unique(raw[invalid])
        raise DatasetError(f'mask {path} has label values {bad.tolist()[:20]} outside the valid raw values '
                           f'{_describe_valid(lut)}')
    return mapped


def read_id_list(path):
    """Ids of a split list file: one per line, surrounding blanks and empty lines dropped."""
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _check_complete(image, path):
    """Raise OSError if PIL padded a truncated file instead of failing.

    PIL fails on truncated files unless the process-wide ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is True, and
    importing ``gluoncv.data`` sets it to True (its mhp.py). Then a truncated JPEG is finished with a fake
    end marker, which PIL records in the image's ``_ended`` attribute, and a truncated PNG silently stops; a
    second pass with ``verify()`` (chunk structure and CRCs, no decoding) catches the latter.
    """
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        return
    if getattr(image, '_ended', False):
        raise OSError('image file is truncated (the data ends before the JPEG end marker)')
    if image.format == 'PNG':
        with Image.open(path) as again:
            again.verify()


def _decode(path, kind, convert):
    try:
        with Image.open(path) as image:
            decoded = convert(image)
            _check_complete(image, path)
            return decoded
    except FileNotFoundError:
        raise FileNotFoundError(f'{kind} file not found: {path}') from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f'cannot read {kind} {path}: {type(err).__name__}: {err}') from None


def read_image(path):
    """RGB PIL image decoded as GluonCV does (``Image.open(path).convert('RGB')``); a missing, undecodable or
    truncated file raises an error naming it."""
    return _decode(path, 'image', lambda image: image.convert('RGB'))


def read_label_image(path):
    """Raw (H, W) index array of a label PNG (palette or grey); errors as :func:`read_image`."""
    return _decode(path, 'mask', np.array)


def _default_mode(split):
    """Mode for ``mode=None``: the split's name when it is a mode (GluonCV), 'train' for the other train* splits
    (train_aug, trainval), else 'val'."""
    if split in MODES:
        return split
    return 'train' if split.startswith('train') else 'val'


class SegmentationDataset(mx.gluon.data.Dataset):
    """Base of the segmentation datasets (GluonCV's ``SegmentationDataset`` semantics).

    Subclasses fill ``self.images`` and ``self.masks`` (empty in mode ``'test'``), implement :meth:`_read_mask`
    and set ``NAME``, ``SPLITS``, ``CLASSES``, ``NUM_CLASS``, ``pred_offset``, ``LABEL_LUT`` (raw mask value ->
    training id), ``LAYOUT`` and ``PREPARE`` (shown when files are missing).

    Parameters
    ----------
    root : str
        Dataset folder (see the subclass).
    split : str
        Which file list (see the subclass).
    mode : str or None
        ``'train'``, ``'val'``, ``'testval'`` (full image) or ``'test'`` (full image and file name, no mask).
        None: ``split`` when that is a mode (GluonCV), else ``'train'`` for ``train*`` splits and ``'val'``.
    transform : callable or None
        GluonCV's image transform, used with ``transforms=None``: items are GluonCV's, image ``mx.nd`` float32
        (H, W, 3) of 0..255 values passed through ``transform``, mask ``mx.nd`` int32 (H, W), after GluonCV's
        augmentation for ``mode``.
    base_size, crop_size : int
        Sizes of the built-in pipelines.
    gluoncv_mask_pad : bool
        Built-in train pipelines pad the mask with what raw value 0 maps to, as GluonCV does (background for VOC,
        SBD and COCO), instead of ignore (-1).
    transforms : str, callable or None
        The item pipeline ``f(image, label, rng) -> (image, label)`` (see ``segzoo.data.transforms``), or a
        recipe name, ``'gluoncv'`` or ``'composer'``, for that recipe's pipeline of ``mode`` ending in
        ``Normalize`` (numpy float32 (3, H, W) image, int32 (H, W) mask: the fast path of train.py).

    Attributes
    ----------
    mask_pad : int
        The label value of the built-in train pipelines' padding.
    transforms : callable
        The pipeline in use; replace or edit it (``dataset.transforms.transforms`` is a list) to change items.
    """

    NAME = ''
    SPLITS = ()
    CLASSES = ()
    NUM_CLASS = 0
    pred_offset = 0
    LABEL_LUT = None
    LAYOUT = ''
    PREPARE = ''

    def __init__(self, root, split, mode=None, transform=None, base_size=BASE_SIZE, crop_size=CROP_SIZE,
                 gluoncv_mask_pad=False, transforms=None):
        super().__init__()
        self.root = os.path.expanduser(root)
        if split not in self.SPLITS:
            raise ValueError(f'unknown {self.NAME} split {split!r}; valid splits: {", ".join(self.SPLITS)}')
        self.split = split
        self.mode = _default_mode(split) if mode is None else mode
        if self.mode not in MODES:
            raise ValueError(f'unknown mode {self.mode!r} for {type(self).__name__}; valid modes: {", ".join(MODES)}')
        self.transform = transform
        self.base_size = base_size
        self.crop_size = crop_size
        self.mask_pad = int(self.LABEL_LUT[0]) if gluoncv_mask_pad else IGNORE_LABEL
        self.transforms = self._pipeline(transforms, transform, gluoncv_mask_pad)
        self.images = []
        self.masks = []

    def _pipeline(self, transforms, transform, gluoncv_mask_pad):
        if transforms is None:
            return get_transforms('gluoncv', self.mode, self.base_size, self.crop_size, self.mask_pad,
                                  output=ToNDArray(transform))
        if transform is not None:
            raise ValueError(f'{type(self).__name__}: pass transform (an image transform, GluonCV items) or '
                             'transforms (the whole pipeline), not both')
        if isinstance(transforms, str):
            return get_transforms(transforms, self.mode, self.base_size, self.crop_size, self.mask_pad)
        if gluoncv_mask_pad:
            raise ValueError(f'{type(self).__name__}: gluoncv_mask_pad applies to the built-in pipelines; a '
                             'transforms pipeline sets its own padding (e.g. gluoncv_train_transforms(mask_pad=0))')
        return transforms

    # ----------------------------------------------------------------- for subclasses
    def _missing(self, path, what):
        """FileNotFoundError naming the missing path, the expected layout and the preparation command."""
        root_note = '' if os.path.isdir(self.root) else ' (the root folder itself does not exist)'
        return FileNotFoundError(
            f'{type(self).__name__}: {what} not found: {path}\n'
            f'Expected layout under root={self.root}{root_note}:\n{self.LAYOUT}\n'
            f'Prepare it with: {self.PREPARE}')

    def _require(self, path, what):
        if not os.path.exists(path):
            raise self._missing(path, what)
        return path

    def _read_list(self, list_file):
        """Ids of a split list file (one per line, blank lines dropped)."""
        return read_id_list(self._require(list_file, 'split list'))

    def _check_files(self, paths, what):
        """Raise one error naming the missing files (the first few and the count), if any."""
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            shown = '\n  '.join(missing[:5])
            raise self._missing(f'{len(missing)} of {len(paths)} {what}, e.g.\n  {shown}', f'{what}')

    def _read_mask(self, index):
        """Mask of item ``index`` as int32 (H, W) training ids (-1 ignore)."""
        raise NotImplementedError

    def _mask_name(self, index):
        """What error messages call the mask of item ``index``."""
        return self.masks[index]

    # ----------------------------------------------------------------- dataset protocol
    def __len__(self):
        return len(self.images)

    def load(self, index, rng=None):
        """Item ``index`` drawn with ``rng``: a numpy Generator, a ``random.Random`` or None (Python's ``random``).

        ``segzoo.data.loader`` calls this with ``sample_rng(seed, epoch, index)``, so the same call here gives what
        the loader yields for that sample.
        """
        image_path = self.images[index]
        image = read_image(image_path)
        if self.mode == 'test':
            return self.transforms(image, None, rng)[0], os.path.basename(image_path)
        mask = self._read_mask(index)
        if mask.shape != (image.height, image.width):
            raise DatasetError(f'image {image_path} is {image.width}x{image.height} (WxH) but its mask '
                               f'{self._mask_name(index)} is {mask.shape[1]}x{mask.shape[0]}')
        return self.transforms(image, mask, rng)

    def __getitem__(self, index):
        return self.load(index)

    # ----------------------------------------------------------------- GluonCV attributes
    @property
    def num_class(self):
        """Number of classes (GluonCV's name)."""
        return self.NUM_CLASS

    @property
    def classes(self):
        """Class names, index = training id."""
        return type(self).CLASSES
