"""Joint image/mask transforms of the segmentation datasets, and image normalisation.

The modes follow GluonCV 0.10's ``SegmentationDataset`` (``segbase.py``):

* ``'train'``: random horizontal flip, random rescale of the *long* side to ``[0.5, 2.0] x base_size``, padding
  on the right/bottom up to ``crop_size``, random ``crop_size`` square crop, Gaussian blur with probability 0.5
  (blur as in PSPNet: H. Zhao et al., "Pyramid Scene Parsing Network", arXiv:1612.01105);
* ``'val'``: resize the short side to ``crop_size``, centre crop;
* ``'testval'``: the full image, unchanged.

Random numbers are drawn with the same calls, in the same order, as GluonCV's ``_sync_transform``, so a
``random.Random`` in the same state gives GluonCV's geometry and blur. The pixels are computed differently, for
speed: the crop window is chosen first and only the part of the image that lands in it is resized (PIL
``resize(..., box=...)``), the mask is resized by index tables that reproduce PIL's nearest-neighbour sampling
exactly, only the missing border of the crop is padded, and nothing is converted to ``mx.nd`` here. The mask is
therefore identical to GluonCV's; image pixels may differ by resize rounding where the crop is a strict part of
the rescaled image (PIL stores the box in single precision): measured on the bundled VOC images, at most 2 grey
levels on about 1.3 % of the values (``tests/test_transforms.py`` checks this bound). ``'val'`` and ``'testval'``
images are identical to GluonCV's.

:class:`ImageNormalize` is GluonCV's ``ToTensor()`` + ``Normalize(mean, std)`` computed in numpy.
"""
import contextlib
import functools
import random as _random
import threading

import numpy as np
from PIL import Image, ImageFilter

__all__ = ['MODES', 'IMAGENET_MEAN', 'IMAGENET_STD', 'TrainDraw', 'draw_train_params', 'apply_train_draw',
           'train_transform', 'val_transform', 'testval_transform', 'sync_transform', 'nearest_index', 'item_rng',
           'ImageNormalize']

MODES = ('train', 'val', 'testval')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# How far (pixels) a blur of radius < 1 may spread into the padding; the exact reach is 3 (see _pad_and_blur).
_BLUR_REACH = 8


# ---------------------------------------------------------------------------------------------- randomness
_local = threading.local()


@contextlib.contextmanager
def item_rng(rng):
    """Make ``rng`` the default source of randomness of the transforms in this thread, for one item.

    ``segzoo.data.loader`` wraps each sample in this context with a ``random.Random`` seeded for that sample, so
    the draws do not depend on which thread or process loads it. Outside such a context, transforms called
    with ``rng=None`` use the module-level ``random``, as GluonCV does.

    Parameters
    ----------
    rng : random.Random
    """
    previous = getattr(_local, 'rng', None)
    _local.rng = rng
    try:
        yield rng
    finally:
        _local.rng = previous


def _resolve_rng(rng):
    if rng is not None:
        return rng
    current = getattr(_local, 'rng', None)
    return _random if current is None else current


# ---------------------------------------------------------------------------------------------- helpers
def _as_pil(image):
    """PIL RGB image from a PIL image or a uint8 (H, W, 3) array."""
    if isinstance(image, Image.Image):
        return image if image.mode == 'RGB' else image.convert('RGB')
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f'image must be a PIL image or a uint8 (H, W, 3) array, got {array.dtype} {array.shape}')
    return Image.fromarray(array)


def _as_mask(mask, size):
    """int32 (H, W) mask, checked against the image size ``(w, h)``."""
    mask = np.asarray(mask)
    if mask.dtype != np.int32:
        mask = mask.astype(np.int32)
    if mask.shape != (size[1], size[0]):
        raise ValueError(f'mask shape {mask.shape} does not match the image size {size[1]}x{size[0]} (HxW)')
    return mask


@functools.lru_cache(maxsize=4096)
def nearest_index(in_size, out_size):
    """Source index of each output position of a PIL nearest-neighbour resize along one axis.

    PIL samples each axis independently, so ``mask[rows][:, cols]`` with these tables equals
    ``Image.resize(..., Image.NEAREST)`` pixel for pixel. The table comes from PIL itself (a one-row resize of
    ``0..in_size-1``), which keeps PIL's fixed-point rounding.

    Parameters
    ----------
    in_size, out_size : int
        Length of the axis before and after resizing.

    Returns
    -------
    numpy.ndarray
        Read-only intp array of shape (out_size,), values in ``[0, in_size)``.
    """
    ramp = Image.fromarray(np.arange(in_size, dtype=np.int32)[None, :])
    table = np.asarray(ramp.resize((out_size, 1), Image.NEAREST))[0].astype(np.intp)
    table.setflags(write=False)
    return table


def _resize_mask(mask, out_w, out_h, x0=0, y0=0, width=None, height=None):
    """The window ``[y0:y0+height, x0:x0+width]`` of ``mask`` resized (nearest) to ``out_w x out_h``."""
    width = out_w - x0 if width is None else width
    height = out_h - y0 if height is None else height
    rows = nearest_index(mask.shape[0], out_h)[y0:y0 + height]
    cols = nearest_index(mask.shape[1], out_w)[x0:x0 + width]
    return mask.take(rows, axis=0)[:, cols]  # rows first, then columns: several times faster than mask[r, c]


# ---------------------------------------------------------------------------------------------- train
class TrainDraw:
    """The random choices of one train-mode transform (in GluonCV's order of drawing).

    Attributes
    ----------
    flip : bool
        Mirror left-right first.
    out_w, out_h : int
        Size after the random rescale (before padding).
    x1, y1 : int
        Top-left corner of the crop in the rescaled, padded image.
    blur_radius : float or None
        PIL ``GaussianBlur`` radius, or None for no blur.
    """

    __slots__ = ('flip', 'out_w', 'out_h', 'x1', 'y1', 'blur_radius')

    def __init__(self, flip, out_w, out_h, x1, y1, blur_radius):
        self.flip, self.out_w, self.out_h = flip, out_w, out_h
        self.x1, self.y1, self.blur_radius = x1, y1, blur_radius

    def __repr__(self):
        return (f'TrainDraw(flip={self.flip}, out_w={self.out_w}, out_h={self.out_h}, x1={self.x1}, y1={self.y1}, '
                f'blur_radius={self.blur_radius})')


def draw_train_params(width, height, base_size, crop_size, rng=None):
    """Draw the random choices of a train-mode transform exactly as GluonCV's ``_sync_transform`` does.

    The calls are, in order: ``random()`` (flip if < 0.5), ``randint(int(base*0.5), int(base*2.0))`` (long side),
    ``randint(0, W - crop)``, ``randint(0, H - crop)`` (W, H after padding), ``random()`` (blur if < 0.5) and, when
    blurring, ``random()`` (radius).

    Parameters
    ----------
    width, height : int
        Size of the input image.
    base_size, crop_size : int
        As in the dataset.
    rng : random.Random or None
        Source of randomness; None means the one set by :func:`item_rng`, else the module-level ``random`` (as
        GluonCV).

    Returns
    -------
    TrainDraw
    """
    rng = _resolve_rng(rng)
    flip = rng.random() < 0.5
    long_size = rng.randint(int(base_size * 0.5), int(base_size * 2.0))
    if height > width:
        out_h, out_w = long_size, int(1.0 * width * long_size / height + 0.5)
    else:
        out_w, out_h = long_size, int(1.0 * height * long_size / width + 0.5)
    x1 = rng.randint(0, max(out_w, crop_size) - crop_size)
    y1 = rng.randint(0, max(out_h, crop_size) - crop_size)
    blur_radius = rng.random() if rng.random() < 0.5 else None
    return TrainDraw(flip, out_w, out_h, x1, y1, blur_radius)


def _resize_window(image, out_w, out_h, x1, y1, width, height):
    """Bilinear resize of ``image`` to ``out_w x out_h``, computing only the window at (x1, y1) of that size."""
    if (x1, y1, width, height) == (0, 0, out_w, out_h):
        return image.resize((out_w, out_h), Image.BILINEAR)
    sx, sy = image.width / out_w, image.height / out_h
    box = (x1 * sx, y1 * sy, (x1 + width) * sx, (y1 + height) * sy)
    return image.resize((width, height), Image.BILINEAR, box=box)


def apply_train_draw(image, mask, draw, crop_size, mask_pad=-1):
    """Apply the choices of :func:`draw_train_params` to an image and its mask.

    Parameters
    ----------
    image : PIL.Image.Image or numpy.ndarray
        RGB image, PIL or uint8 (H, W, 3).
    mask : numpy.ndarray
        int32 (H, W) training ids.
    draw : TrainDraw
    crop_size : int
    mask_pad : int
        Mask value of the padding (the image is padded with 0).

    Returns
    -------
    image : numpy.ndarray
        uint8 (crop_size, crop_size, 3).
    mask : numpy.ndarray
        int32 (crop_size, crop_size).
    """
    image = _as_pil(image)
    mask = _as_mask(mask, image.size)
    if draw.flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
        mask = mask[:, ::-1]
    # The part of the crop window that lies inside the rescaled image; the rest is padding.
    width = min(crop_size, draw.out_w - draw.x1)
    height = min(crop_size, draw.out_h - draw.y1)
    region = _resize_window(image, draw.out_w, draw.out_h, draw.x1, draw.y1, width, height)
    mask_region = _resize_mask(mask, draw.out_w, draw.out_h, draw.x1, draw.y1, width, height)
    if (width, height) == (crop_size, crop_size):
        if draw.blur_radius is not None:
            region = _gaussian_blur(region, draw.blur_radius)
        return np.asarray(region), np.ascontiguousarray(mask_region, dtype=np.int32)
    out_mask = np.full((crop_size, crop_size), mask_pad, dtype=np.int32)
    out_mask[:height, :width] = mask_region
    return _pad_and_blur(region, crop_size, draw.blur_radius), out_mask


def _gaussian_blur(image, radius):
    return image.filter(ImageFilter.GaussianBlur(radius=radius))


def _pad_and_blur(region, crop_size, blur_radius):
    """``region`` padded with zeros to ``crop_size`` (right/bottom), then blurred if ``blur_radius`` is set.

    Equal to blurring the whole padded square, but only the region and the part of the padding the blur can
    reach are blurred: PIL's GaussianBlur with radius < 1 is three box passes of half-width 1 per axis, so values
    reach at most 3 pixels into the zeros (``_BLUR_REACH`` is generous).
    """
    out = np.zeros((crop_size, crop_size, 3), dtype=np.uint8)
    if blur_radius is not None:
        reach = _BLUR_REACH if blur_radius < 1 else crop_size
        window = Image.new('RGB', (min(crop_size, region.width + reach), min(crop_size, region.height + reach)), 0)
        window.paste(region, (0, 0))
        region = _gaussian_blur(window, blur_radius)
    out[:region.height, :region.width] = np.asarray(region)
    return out



def train_transform(image, mask, base_size, crop_size, mask_pad=-1, rng=None):
    """Train-mode joint transform (GluonCV's ``_sync_transform`` semantics, see the module docstring).

    Parameters
    ----------
    image : PIL.Image.Image or numpy.ndarray
        RGB image, PIL or uint8 (H, W, 3).
    mask : numpy.ndarray
        int32 (H, W) training ids, -1 = ignore.
    base_size, crop_size : int
    mask_pad : int
        Mask value of padded pixels: -1 (ignore, segzoo's default) or what GluonCV pads with (raw 0 mapped).
    rng : random.Random or None
        None means the one set by :func:`item_rng`, else the module-level ``random``.

    Returns
    -------
    image : numpy.ndarray
        uint8 (crop_size, crop_size, 3).
    mask : numpy.ndarray
        int32 (crop_size, crop_size).
    """
    image = _as_pil(image)
    draw = draw_train_params(image.width, image.height, base_size, crop_size, rng)
    return apply_train_draw(image, mask, draw, crop_size, mask_pad)


# ---------------------------------------------------------------------------------------------- val / testval
def val_transform(image, mask, crop_size):
    """Val-mode joint transform: short side to ``crop_size`` (other side truncated), centre crop.

    Identical to GluonCV's ``_val_sync_transform``.

    Parameters
    ----------
    image : PIL.Image.Image or numpy.ndarray
        RGB image, PIL or uint8 (H, W, 3).
    mask : numpy.ndarray
        int32 (H, W).
    crop_size : int

    Returns
    -------
    image : numpy.ndarray
        uint8 (crop_size, crop_size, 3).
    mask : numpy.ndarray
        int32 (crop_size, crop_size).
    """
    image = _as_pil(image)
    mask = _as_mask(mask, image.size)
    w, h = image.size
    if w > h:
        out_w, out_h = int(1.0 * w * crop_size / h), crop_size
    else:
        out_w, out_h = crop_size, int(1.0 * h * crop_size / w)
    x1 = int(round((out_w - crop_size) / 2.))
    y1 = int(round((out_h - crop_size) / 2.))
    resized = image.resize((out_w, out_h), Image.BILINEAR)
    image = np.asarray(resized)[y1:y1 + crop_size, x1:x1 + crop_size]
    mask = _resize_mask(mask, out_w, out_h, x1, y1, crop_size, crop_size)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask, dtype=np.int32)


def testval_transform(image, mask):
    """Testval mode: the full image and mask as arrays (uint8 (H, W, 3), int32 (H, W)), unchanged."""
    image = _as_pil(image)
    return np.asarray(image), _as_mask(mask, image.size)


def sync_transform(mode, image, mask, base_size, crop_size, mask_pad=-1, rng=None):
    """Joint transform of one dataset item for ``mode`` in ``'train'``, ``'val'``, ``'testval'``.

    Parameters
    ----------
    mode : str
    image : PIL.Image.Image or numpy.ndarray
        RGB image, PIL or uint8 (H, W, 3).
    mask : numpy.ndarray
        int32 (H, W) training ids, -1 = ignore.
    base_size, crop_size : int
    mask_pad : int
        Train mode: mask value of padded pixels.
    rng : random.Random or None
        Train mode: source of randomness; None = the one set by :func:`item_rng`, else the module-level
        ``random`` (as GluonCV).

    Returns
    -------
    image : numpy.ndarray
        uint8 (H', W', 3): (crop_size, crop_size, 3) in train and val, the input size in testval.
    mask : numpy.ndarray
        int32 (H', W').
    """
    if mode == 'train':
        return train_transform(image, mask, base_size, crop_size, mask_pad, rng)
    if mode == 'val':
        return val_transform(image, mask, crop_size)
    if mode == 'testval':
        return testval_transform(image, mask)
    raise ValueError(f'unknown transform mode {mode!r}; valid modes: {", ".join(MODES)}')


# ---------------------------------------------------------------------------------------------- normalisation
class ImageNormalize:
    """uint8 (H, W, 3) image -> float32 (3, H, W) ``(x / 255 - mean) / std``.

    The same numbers as gluon's ``transforms.Compose([ToTensor(), Normalize(mean, std)])`` (float32, same order
    of operations), computed in numpy, so DataLoader workers create no ``mx.nd`` arrays.

    Parameters
    ----------
    mean, std : sequence of 3 floats
        Per-channel statistics, ImageNet's by default.

    Attributes
    ----------
    numpy_input : bool
        True: the datasets pass the numpy image (and keep the mask numpy) instead of an ``mx.nd`` array.
    """

    numpy_input = True

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3)
        self.std = np.asarray(std, dtype=np.float32).reshape(3)

    def __call__(self, image):
        """Normalise one image.

        Parameters
        ----------
        image : numpy.ndarray, mx.nd.NDArray or PIL.Image.Image
            uint8 (H, W, 3).

        Returns
        -------
        numpy.ndarray
            float32 (3, H, W).
        """
        if hasattr(image, 'asnumpy'):
            image = image.asnumpy()
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f'ImageNormalize expects an (H, W, 3) image, got shape {image.shape}')
        out = np.empty((3,) + image.shape[:2], dtype=np.float32)
        for c in range(3):
            channel = out[c]
            np.divide(image[:, :, c], np.float32(255), out=channel, dtype=np.float32)
            channel -= self.mean[c]
            channel /= self.std[c]
        return out

    def __repr__(self):
        return f'ImageNormalize(mean={tuple(self.mean.tolist())}, std={tuple(self.std.tolist())})'
