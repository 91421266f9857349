"""Joint (image, label) transforms, the pipelines built from them, and image normalisation.

A transform is called as ``t(image, label, rng) -> (image, label)``: ``image`` a PIL RGB image (a uint8 (H, W, 3)
array is accepted), ``label`` int32 (H, W) training ids with -1 = ignore (None in mode ``test``), ``rng`` the
sample's randomness: a ``numpy.random.Generator`` (what ``segzoo.data.loader`` passes), a ``random.Random``, or
None for Python's module-level ``random`` (what GluonCV uses). Pipelines are :class:`Compose` lists built by the
factories at the end of this module and handed to a dataset as ``transforms=``, in the shape of torchvision's
``references/segmentation/transforms.py``.

GluonCV's pipelines (``gluoncv/data/segbase.py``) draw the same numbers in the same order as GluonCV's
``_sync_transform``. For speed, :class:`RandomScalePadCrop` resizes only the part of the image that lands in the
crop (PIL ``resize(box=...)``, whose box is single precision) and resizes masks by index tables equal to PIL's
nearest sampling: masks equal GluonCV's, train images differ by at most 2 grey levels on about 1.3 % of the
values (bundled VOC images; ``tests/test_transforms.py`` bounds it), val/testval images are identical.

Composer's pipelines follow ``composer/datasets/ade20k.py`` v0.17.2 (``build_ade20k_transformations``, base and
crop 512). Composer keeps ADE's raw labels through them (0 = other: padded with 0, left out of the class ratio) and
subtracts 1 on the device (``NormalizationFn(ignore_background=True)``), so 0 becomes its ignore index -1; segzoo's
labels are shifted when read, so here ignore is -1 throughout: the same targets. Same distributions as Composer,
not its numbers (it draws from torch's and numpy's global RNGs).
"""
import functools
import random as _random

import mxnet as mx
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

__all__ = ['IGNORE_LABEL', 'IMAGENET_MEAN', 'IMAGENET_STD', 'RECIPES', 'CenterCrop', 'Compose', 'ImageNormalize',
           'Normalize', 'Pad', 'PhotometricDistortion', 'RandomCrop', 'RandomGaussianBlur', 'RandomHorizontalFlip',
           'RandomScalePadCrop', 'RandomSquareResize', 'Resize', 'ResizeShortSide', 'ToNDArray',
           'composer_train_transforms', 'composer_val_transforms', 'get_transforms', 'gluoncv_train_transforms',
           'gluoncv_val_transforms', 'nearest_index', 'testval_transforms']

IGNORE_LABEL = -1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Composer pads images with the ImageNet mean pixel, truncated to integers as in its PadToSize fill.
COMPOSER_PAD_FILL = tuple(int(m * 255) for m in IMAGENET_MEAN)


# ---------------------------------------------------------------------------------------------- helpers
def _rng(rng):
    return _random if rng is None else rng


def _randint(rng, low, high):
    """Integer in [low, high] from a numpy Generator or from ``random`` (GluonCV draws with the latter)."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(low, high, endpoint=True))
    return rng.randint(low, high)


def _as_pil(image):
    if isinstance(image, Image.Image):
        return image if image.mode == 'RGB' else image.convert('RGB')
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f'image must be a PIL image or a uint8 (H, W, 3) array, got {array.dtype} {array.shape}')
    return Image.fromarray(array)


def _check_label(label, image):
    """int32 (H, W) label matching ``image``'s size."""
    label = np.asarray(label)
    if label.shape != (image.height, image.width):
        raise ValueError(f'label shape {label.shape} does not match the image size {image.height}x{image.width} '
                         '(HxW)')
    return label if label.dtype == np.int32 else label.astype(np.int32)


@functools.lru_cache(maxsize=4096)
def nearest_index(in_size, out_size):
    """Source index of each output position of PIL's nearest resize along one axis (read-only intp array).

    Taken from PIL itself (a one-row resize of ``0..in_size-1``), so ``mask[rows][:, cols]`` equals
    ``Image.resize(..., Image.NEAREST)`` pixel for pixel.
    """
    ramp = Image.fromarray(np.arange(in_size, dtype=np.int32)[None, :])
    table = np.asarray(ramp.resize((out_size, 1), Image.NEAREST))[0].astype(np.intp)
    table.setflags(write=False)
    return table


def _resize_label(label, out_w, out_h, x0=0, y0=0, width=None, height=None):
    """The window at (x0, y0) of ``label`` resized (nearest) to ``out_w x out_h``; the whole of it by default."""
    rows = nearest_index(label.shape[0], out_h)[y0:y0 + (out_h - y0 if height is None else height)]
    cols = nearest_index(label.shape[1], out_w)[x0:x0 + (out_w - x0 if width is None else width)]
    return label.take(rows, axis=0)[:, cols]  # rows, then columns: several times faster than label[r, c]


def _resize(image, label, out_w, out_h):
    """Image bilinear and label nearest to ``out_w x out_h``."""
    image = _as_pil(image)
    if label is not None:
        label = _resize_label(_check_label(label, image), out_w, out_h)
    return image.resize((out_w, out_h), Image.BILINEAR), label


def _pad(image, label, width, height, left, top, fill, label_fill):
    """``image`` and ``label`` placed at (left, top) on a ``width x height`` canvas of ``fill`` / ``label_fill``."""
    canvas = Image.new('RGB', (width, height), fill)
    canvas.paste(image, (left, top))
    if label is not None:
        out = np.full((height, width), label_fill, dtype=np.int32)
        out[top:top + label.shape[0], left:left + label.shape[1]] = label
        label = out
    return canvas, label


# ---------------------------------------------------------------------------------------------- composition
class Compose:
    """Apply ``transforms`` in order, each with the same ``rng``; ``self.transforms`` is a list you can edit."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, label, rng=None):
        for transform in self.transforms:
            image, label = transform(image, label, rng)
        return image, label

    def __repr__(self):
        return 'Compose([\n' + ''.join(f'    {t!r},\n' for t in self.transforms) + '])'


class _Transform:
    """Base of the transforms: a repr that shows the constructor's arguments (pipelines print readably)."""

    def __repr__(self):
        args = ', '.join(f'{k}={v!r}' for k, v in vars(self).items())
        return f'{type(self).__name__}({args})'


# ---------------------------------------------------------------------------------------------- geometry
class RandomHorizontalFlip(_Transform):
    """Mirror image and label left-right with probability ``p`` (one ``random()`` draw)."""

    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, image, label, rng=None):
        if _rng(rng).random() < self.p:
            image = _as_pil(image).transpose(Image.FLIP_LEFT_RIGHT)
            label = None if label is None else label[:, ::-1]
        return image, label


class RandomScalePadCrop(_Transform):
    """GluonCV's train geometry: long side to ``randint(base*scale[0], base*scale[1])``, pad right/bottom to
    ``crop_size`` (image 0, label ``mask_pad``), random ``crop_size`` square.

    One transform rather than three so that only the crop window is resized (the speed of the module docstring).
    Draws, as GluonCV: ``randint`` long side, ``randint`` x, ``randint`` y.
    """

    def __init__(self, base_size, crop_size, scale=(0.5, 2.0), mask_pad=IGNORE_LABEL):
        self.base_size, self.crop_size, self.scale, self.mask_pad = base_size, crop_size, scale, mask_pad

    def __call__(self, image, label, rng=None):
        rng = _rng(rng)
        image = _as_pil(image)
        label = _check_label(label, image)
        crop = self.crop_size
        long_size = _randint(rng, int(self.base_size * self.scale[0]), int(self.base_size * self.scale[1]))
        if image.height > image.width:
            out_w, out_h = int(1.0 * image.width * long_size / image.height + 0.5), long_size
        else:
            out_w, out_h = long_size, int(1.0 * image.height * long_size / image.width + 0.5)
        x1 = _randint(rng, 0, max(out_w, crop) - crop)
        y1 = _randint(rng, 0, max(out_h, crop) - crop)
        width, height = min(crop, out_w - x1), min(crop, out_h - y1)  # the rest of the window is padding
        if (x1, y1, width, height) == (0, 0, out_w, out_h):
            region = image.resize((out_w, out_h), Image.BILINEAR)
        else:
            sx, sy = image.width / out_w, image.height / out_h
            box = (x1 * sx, y1 * sy, (x1 + width) * sx, (y1 + height) * sy)
            region = image.resize((width, height), Image.BILINEAR, box=box)
        label = _resize_label(label, out_w, out_h, x1, y1, width, height)
        if (width, height) == (crop, crop):
            return region, label
        return _pad(region, label, crop, crop, 0, 0, 0, self.mask_pad)


class ResizeShortSide(_Transform):
    """Short side to ``size``, the other truncated to keep the aspect (GluonCV's ``_val_sync_transform``)."""

    def __init__(self, size):
        self.size = size

    def __call__(self, image, label, rng=None):
        image = _as_pil(image)
        w, h = image.size
        out_w, out_h = (int(1.0 * w * self.size / h), self.size) if w > h else (self.size, int(1.0 * h * self.size / w))
        return _resize(image, label, out_w, out_h)


class CenterCrop(_Transform):
    """Central ``size`` square, offsets rounded as GluonCV's ``_val_sync_transform``."""

    def __init__(self, size):
        self.size = size

    def __call__(self, image, label, rng=None):
        image = _as_pil(image)
        x1 = int(round((image.width - self.size) / 2.))
        y1 = int(round((image.height - self.size) / 2.))
        image = image.crop((x1, y1, x1 + self.size, y1 + self.size))
        return image, None if label is None else label[y1:y1 + self.size, x1:x1 + self.size]


class Resize(_Transform):
    """Image (bilinear) and label (nearest) to ``size`` (int: square; or (width, height)), aspect not kept."""

    def __init__(self, size):
        self.size = size

    def __call__(self, image, label, rng=None):
        width, height = (self.size, self.size) if isinstance(self.size, int) else self.size
        return _resize(image, label, width, height)


class RandomSquareResize(_Transform):
    """Composer's ``RandomResizePair``: both sides to ``int(size * U(scale))`` (aspect not kept; one ``uniform``)."""

    def __init__(self, size, scale=(0.5, 2.0)):
        self.size, self.scale = size, scale

    def __call__(self, image, label, rng=None):
        side = int(self.size * _rng(rng).uniform(*self.scale))
        return _resize(image, label, side, side)


class RandomCrop(_Transform):
    """Random ``size`` square (mmseg's ``RandomCrop``, Composer's ``RandomCropPair``); no-op when the image fits.

    While one class covers ``cat_max_ratio`` or more of the non-ignored pixels of the window (or there is only one
    class), the window is drawn again, at most ``retries`` times; the last draw is kept. Draws: ``randint`` top,
    ``randint`` left, per window.
    """

    def __init__(self, size, cat_max_ratio=1.0, retries=10):
        self.size, self.cat_max_ratio, self.retries = size, cat_max_ratio, retries

    def _window(self, rng, height, width):
        return _randint(rng, 0, max(height - self.size, 0)), _randint(rng, 0, max(width - self.size, 0))

    def _balanced(self, window):
        counts = np.bincount(window.ravel() - IGNORE_LABEL)[1:]  # label counts, ignore dropped
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(self, image, label, rng=None):
        rng = _rng(rng)
        image = _as_pil(image)
        label = _check_label(label, image)
        height, width = label.shape
        if height <= self.size and width <= self.size:
            return image, label
        top, left = self._window(rng, height, width)
        if self.cat_max_ratio < 1.0:
            for _ in range(self.retries):
                if self._balanced(label[top:top + self.size, left:left + self.size]):
                    break
                top, left = self._window(rng, height, width)
        bottom, right = min(top + self.size, height), min(left + self.size, width)
        return image.crop((left, top, right, bottom)), label[top:bottom, left:right]


class Pad(_Transform):
    """Pad to at least ``size x size`` with ``fill`` (image) and ``label_fill``; centred (Composer's
    ``PadToSize``: the odd pixel goes right/bottom) or at the right/bottom."""

    def __init__(self, size, fill=0, label_fill=IGNORE_LABEL, center=False):
        self.size, self.fill, self.label_fill, self.center = size, fill, label_fill, center

    def __call__(self, image, label, rng=None):
        image = _as_pil(image)
        pad_w, pad_h = max(self.size - image.width, 0), max(self.size - image.height, 0)
        if not (pad_w or pad_h):
            return image, label
        left, top = (pad_w // 2, pad_h // 2) if self.center else (0, 0)
        return _pad(image, label, image.width + pad_w, image.height + pad_h, left, top, self.fill, self.label_fill)


# ---------------------------------------------------------------------------------------------- photometric
class RandomGaussianBlur(_Transform):
    """With probability ``p``, PIL Gaussian blur of radius ``U[0, 1)`` (GluonCV's, after PSPNet, arXiv:1612.01105)."""

    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, image, label, rng=None):
        rng = _rng(rng)
        if rng.random() < self.p:
            image = _gaussian_blur(_as_pil(image), rng.random())
        return image, label


# PIL's blur of radius < 1 is three box passes of half-width 1, so a value spreads at most 3 pixels.
_BLUR_REACH = 8


def _gaussian_blur(image, radius):
    """PIL's Gaussian blur, computed only around the non-zero part of ``image`` (padding stays 0): exact, and
    several times faster on padded crops."""
    box = image.getbbox()
    if box is None or radius >= 1 or box == (0, 0) + image.size:
        return image.filter(ImageFilter.GaussianBlur(radius=radius))
    window = (max(box[0] - _BLUR_REACH, 0), max(box[1] - _BLUR_REACH, 0), min(box[2] + _BLUR_REACH, image.width),
              min(box[3] + _BLUR_REACH, image.height))
    out = Image.new(image.mode, image.size, 0)
    out.paste(image.crop(window).filter(ImageFilter.GaussianBlur(radius=radius)), window[:2])
    return out


def _shift_hue(image, factor):
    """Rotate the hue by ``factor`` of the circle in PIL's 8-bit HSV (torchvision's ``adjust_hue`` on PIL)."""
    h, s, v = image.convert('HSV').split()
    h = Image.fromarray((np.asarray(h, dtype=np.int32) + int(factor * 255)).astype(np.uint8), 'L')  # wraps mod 256
    return Image.merge('HSV', (h, s, v)).convert('RGB')


_ADJUST = {
    'brightness': lambda image, f: ImageEnhance.Brightness(image).enhance(f),
    'contrast': lambda image, f: ImageEnhance.Contrast(image).enhance(f),
    'saturation': lambda image, f: ImageEnhance.Color(image).enhance(f),
    'hue': _shift_hue,
}


class PhotometricDistortion(_Transform):
    """Composer's ``PhotometricDistoration``: mmseg's ``PhotoMetricDistortion`` order and probabilities, applied
    with torchvision's PIL adjustments.

    Each of brightness, contrast, saturation and hue is applied with probability 1/2; contrast comes second or
    last (a fair draw). Factors: brightness ``U(1 -+ brightness)`` (multiplicative; mmseg adds ``U(-+32)``),
    contrast and saturation ``U(1 -+ 0.5)``, hue ``U(-+hue)`` of the colour circle (Composer's 18/255; mmseg's
    18 of 180 OpenCV units).
    """

    def __init__(self, brightness=32. / 255, contrast=0.5, saturation=0.5, hue=18. / 255):
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def draw(self, rng=None):
        """The adjustments of one call, in order: a list of ``(name, factor)``."""
        rng = _rng(rng)
        ops = []
        if _randint(rng, 0, 1):
            ops.append(('brightness', rng.uniform(1 - self.brightness, 1 + self.brightness)))
        contrast_first = _randint(rng, 0, 1) == 1
        if contrast_first and _randint(rng, 0, 1):
            ops.append(('contrast', rng.uniform(1 - self.contrast, 1 + self.contrast)))
        if _randint(rng, 0, 1):
            ops.append(('saturation', rng.uniform(1 - self.saturation, 1 + self.saturation)))
        if _randint(rng, 0, 1):
            ops.append(('hue', rng.uniform(-self.hue, self.hue)))
        if not contrast_first and _randint(rng, 0, 1):
            ops.append(('contrast', rng.uniform(1 - self.contrast, 1 + self.contrast)))
        return ops

    def __call__(self, image, label, rng=None):
        image = _as_pil(image)
        for name, factor in self.draw(rng):
            image = _ADJUST[name](image, factor)
        return image, label


# ---------------------------------------------------------------------------------------------- outputs
class ImageNormalize:
    """uint8 (H, W, 3) image (numpy, PIL or ``mx.nd``) -> float32 (3, H, W) ``(x / 255 - mean) / std``.

    The numbers of gluon's ``Compose([ToTensor(), Normalize(mean, std)])`` (float32, same operation order),
    computed in numpy so that loader workers create no ``mx.nd`` arrays.
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3)
        self.std = np.asarray(std, dtype=np.float32).reshape(3)

    def __call__(self, image):
        image = np.asarray(image.asnumpy() if hasattr(image, 'asnumpy') else image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f'ImageNormalize expects an (H, W, 3) image, got shape {image.shape}')
        out = np.empty((3,) + image.shape[:2], dtype=np.float32)
        for c in range(3):
            np.divide(image[:, :, c], np.float32(255), out=out[c], dtype=np.float32)
            out[c] -= self.mean[c]
            out[c] /= self.std[c]
        return out

    def __repr__(self):
        return f'ImageNormalize(mean={tuple(self.mean.tolist())}, std={tuple(self.std.tolist())})'


class Normalize(_Transform):
    """Last step of segzoo's pipelines: image float32 (3, H, W) normalised, label int32 (H, W), both numpy."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.image_normalize = ImageNormalize(mean, std)

    def __call__(self, image, label, rng=None):
        return self.image_normalize(image), None if label is None else np.ascontiguousarray(label, dtype=np.int32)

    def __repr__(self):
        return repr(self.image_normalize).replace('ImageNormalize', 'Normalize')


class ToNDArray(_Transform):
    """Last step giving GluonCV's item types: image ``mx.nd`` float32 (H, W, 3) of 0..255 values, then
    ``transform`` (GluonCV's image transform, e.g. gluon ``ToTensor`` + ``Normalize``); label ``mx.nd`` int32."""

    def __init__(self, transform=None):
        self.transform = transform

    def __call__(self, image, label, rng=None):
        image = mx.nd.array(np.asarray(image), ctx=mx.cpu(0), dtype=np.float32)
        if self.transform is not None:
            image = self.transform(image)
        if label is not None:
            label = mx.nd.array(np.ascontiguousarray(label), ctx=mx.cpu(0), dtype=np.int32)
        return image, label


# ---------------------------------------------------------------------------------------------- pipelines
def gluoncv_train_transforms(base_size, crop_size, mask_pad=IGNORE_LABEL, output=None):
    """GluonCV's train pipeline: flip, long-side rescale in [0.5, 2] x ``base_size`` with pad and random crop,
    Gaussian blur; then ``output`` (default :class:`Normalize`)."""
    return Compose([RandomHorizontalFlip(), RandomScalePadCrop(base_size, crop_size, mask_pad=mask_pad),
                    RandomGaussianBlur(), Normalize() if output is None else output])


def gluoncv_val_transforms(crop_size, output=None):
    """GluonCV's val pipeline: short side to ``crop_size``, centre crop; then ``output``."""
    return Compose([ResizeShortSide(crop_size), CenterCrop(crop_size), Normalize() if output is None else output])


def composer_train_transforms(base_size=512, crop_size=512, mask_pad=IGNORE_LABEL, output=None):
    """Composer's ADE20K train pipeline: square resize to ``base_size`` x U(0.5, 2), crop ``crop_size`` (a class
    at most 75 %, 10 retries), flip, photometric distortion, centred pad (mean pixel, label ``mask_pad``)."""
    return Compose([RandomSquareResize(base_size), RandomCrop(crop_size, cat_max_ratio=0.75, retries=10),
                    RandomHorizontalFlip(), PhotometricDistortion(),
                    Pad(crop_size, fill=COMPOSER_PAD_FILL, label_fill=mask_pad, center=True),
                    Normalize() if output is None else output])


def composer_val_transforms(crop_size=512, output=None):
    """Composer's ADE20K evaluation: image (bilinear) and label (nearest) resized to ``crop_size`` squared."""
    return Compose([Resize(crop_size), Normalize() if output is None else output])


def testval_transforms(output=None):
    """Modes testval and test: the full image, only ``output``."""
    return Compose([Normalize() if output is None else output])


# recipe -> (train factory, val factory)
RECIPES = {
    'gluoncv': (gluoncv_train_transforms, gluoncv_val_transforms),
    'composer': (composer_train_transforms, composer_val_transforms),
}


def get_transforms(recipe, mode, base_size, crop_size, mask_pad=IGNORE_LABEL, output=None):
    """The pipeline of ``recipe`` (a :data:`RECIPES` key) for dataset mode ``mode``.

    Parameters
    ----------
    recipe : str
        ``'gluoncv'`` or ``'composer'``.
    mode : str
        ``'train'``, ``'val'``, ``'testval'`` or ``'test'`` (the last two: the full image, any recipe).
    base_size, crop_size : int
    mask_pad : int
        Label value of train-mode padding.
    output : callable or None
        Last step; None = :class:`Normalize` (numpy float32 (3, H, W) image, int32 label).

    Returns
    -------
    Compose
    """
    if recipe not in RECIPES:
        raise ValueError(f'unknown augmentation {recipe!r}; valid: {", ".join(RECIPES)}')
    train, val = RECIPES[recipe]
    if mode == 'train':
        return train(base_size, crop_size, mask_pad=mask_pad, output=output)
    if mode == 'val':
        return val(crop_size, output=output)
    if mode in ('testval', 'test'):
        return testval_transforms(output)
    raise ValueError(f'unknown mode {mode!r}; valid modes: train, val, testval, test')
