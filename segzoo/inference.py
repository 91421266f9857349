"""Evaluation-time prediction: whole image, multi-scale, flip and sliding window.

Two paths share this module:

* :func:`predict_whole` runs the network once on a batch at the images' own size and returns the
  logits. This is what GluonCV's ``scripts/segmentation/test.py`` measures: its multi-scale branch is unreachable
  since GluonCV PR #1278 (``if 'icnet' or 'fastscnn' in args.model`` is always true).
* :func:`predict` is the multi-scale / flip / sliding-window evaluator behind GluonCV's published
  multi-scale numbers (``gluoncv.model_zoo.segbase.MultiEvalModel``). The test-time recipe of resizing the
  input to several scales, adding horizontally flipped passes and fusing the scores comes from
  "Rethinking Atrous Convolution for Semantic Image Segmentation" (Chen et al., arXiv:1706.05587) and
  "Pyramid Scene Parsing Network" (Zhao et al., arXiv:1612.01105).

GluonCV semantics reproduced by :func:`predict` (one image, shape (3, H, W), normalised):

1. For every scale ``s``: ``long = ceil(base_size * s)``; the longer image side becomes ``long`` and the
   other ``int(short * long / longer + 0.5)``. The image is resized with ``BilinearResize2D``
   (MXNet's default, ``align_corners=True``).
2. If ``long <= crop_size`` the resized image is padded (bottom/right, with the value of a black pixel after
   normalisation, ``-mean/std`` per channel) to ``crop_size`` x ``crop_size``, scored once and cropped back.
3. Otherwise a sliding window of ``crop_size`` with stride ``int(crop_size * stride_rate)`` covers the image
   (padded first only if its short side is below ``crop_size``); there are ``ceil((P - crop) / stride) + 1``
   windows along a side of length ``P``; each window is padded to ``crop_size``, scored, and the overlapping
   scores are averaged.
4. The score map is resized back to (H, W) and summed over scales.

Scoring one padded crop (``fusion``):

* ``'gluoncv'`` (default, bit-for-bit GluonCV): ``exp(logits(x) + flip(logits(flip(x))))`` with flip, and
  ``exp(logits(x))`` without. These are exponentials of summed raw logits, not probabilities, and they
  overflow float32 once logits exceed about 88.
* ``'softmax'``: ``softmax(logits(x)) + flip(softmax(logits(flip(x))))``. Every pass adds a probability
  map, so the fused map sums to ``len(scales)`` (twice that with flip) at every pixel, i.e. it is that
  multiple of the mean probability. Each scale and each flip weighs the same and nothing overflows, which
  makes it the better choice for new results; keep ``'gluoncv'`` to reproduce GluonCV's numbers.

When ``crop_size`` is ``None`` no padding or sliding window is used: each scale is scored on the whole
resized image (segzoo networks accept any input size; GluonCV networks only accept their crop size).
"""
import math

import mxnet as mx
import numpy as np

from .data.base import BASE_SIZE, CROP_SIZE
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .utils.parallel import parallel_apply

__all__ = ['predict', 'predict_whole', 'parallel_predict', 'scaled_size', 'window_starts',
           'MultiEvalModel', 'IMAGENET_MEAN', 'IMAGENET_STD', 'FUSIONS', 'GLUONCV_SCALES']

FUSIONS = ('gluoncv', 'softmax')
#: The scales GluonCV's MultiEvalModel uses by default.
GLUONCV_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def _logits(net, x):
    """Main-head logits of ``net`` on ``x`` (B, 3, h, w) -> (B, C, h, w)."""
    out = net(x)
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out


def _as_batch(image):
    """Accept (3, H, W) or (1, 3, H, W); return (1, 3, H, W)."""
    if image.ndim == 3:
        return image.expand_dims(0)
    if image.ndim == 4 and image.shape[0] == 1:
        return image
    raise ValueError(f'predict() scores one image of shape (3, H, W) or (1, 3, H, W), got {image.shape}; '
                     'use parallel_predict() for several images')


def _resize(x, height, width):
    """Bilinear resize of (B, C, h, w) to (B, C, height, width), MXNet semantics (align_corners=True)."""
    if x.shape[2] == height and x.shape[3] == width:
        return x
    return mx.nd.contrib.BilinearResize2D(x, height=height, width=width)


def scaled_size(height, width, base_size, scale):
    """``(new_height, new_width, long_side)`` of a ``height`` x ``width`` image at one evaluation scale: the longer
    side becomes ``long_side = ceil(base_size * scale)``, the other is rounded half up (GluonCV's arithmetic)."""
    long_side = int(math.ceil(base_size * scale))
    if height > width:
        return long_side, int(1.0 * width * long_side / height + 0.5), long_side
    return int(1.0 * height * long_side / width + 0.5), long_side, long_side


def window_starts(length, crop_size, stride):
    """Window (start, stop) pairs along one side of ``length >= crop_size`` (the last may be shorter).

    ``ceil((length - crop_size) / stride) + 1`` windows start at multiples of ``stride``; each ends at
    ``min(start + crop_size, length)``.
    """
    if length < crop_size:
        raise ValueError(f'window_starts: side {length} is shorter than the crop {crop_size}')
    count = int(math.ceil(1.0 * (length - crop_size) / stride)) + 1
    return [(i * stride, min(i * stride + crop_size, length)) for i in range(count)]


def _pad(img, size, pad_values):
    """Pad (B, 3, h, w) at the bottom/right to at least (size, size) with one constant per channel."""
    b, c, h, w = img.shape
    ph, pw = max(h, size), max(w, size)
    if (ph, pw) == (h, w):
        return img
    fill = mx.nd.array(pad_values, ctx=img.context, dtype=img.dtype).reshape((1, c, 1, 1))
    out = mx.nd.broadcast_to(fill, shape=(b, c, ph, pw)).copy()
    out[:, :, :h, :w] = img
    return out


def _pad_values(mean, std):
    return tuple(float(v) for v in -np.asarray(mean, dtype=np.float64) / np.asarray(std, dtype=np.float64))


def _score_crops(net, crops, flip, fusion, max_batch):
    """Fused score maps of a batch of crops (N, 3, h, w) -> (N, C, h, w)."""
    n = crops.shape[0]
    inputs = mx.nd.concat(crops, crops.flip(axis=3), dim=0) if flip else crops
    step = max_batch or inputs.shape[0]
    chunks = [_logits(net, inputs[i:i + step]) for i in range(0, inputs.shape[0], step)]
    logits = chunks[0] if len(chunks) == 1 else mx.nd.concat(*chunks, dim=0)
    if fusion == 'gluoncv':
        if flip:
            return (logits[:n] + logits[n:].flip(axis=3)).exp()
        return logits.exp()
    probs = mx.nd.softmax(logits, axis=1)
    if flip:
        return probs[:n] + probs[n:].flip(axis=3)
    return probs


def _score_padded(net, img, crop_size, pad_values, flip, fusion, max_batch):
    """One scale, ``long <= crop_size``: pad to the crop, score once, crop back."""
    _, _, h, w = img.shape
    scores = _score_crops(net, _pad(img, crop_size, pad_values), flip, fusion, max_batch)
    return scores[:, :, :h, :w]


def _score_sliding(net, img, crop_size, stride, pad_values, flip, fusion, max_batch):
    """One scale, ``long > crop_size``: average the scores of overlapping crop-sized windows."""
    _, _, h, w = img.shape
    padded = _pad(img, crop_size, pad_values) if min(h, w) < crop_size else img
    _, _, ph, pw = padded.shape
    boxes = [(h0, h1, w0, w1) for h0, h1 in window_starts(ph, crop_size, stride)
             for w0, w1 in window_starts(pw, crop_size, stride)]
    crops = mx.nd.concat(*[_pad(padded[:, :, h0:h1, w0:w1], crop_size, pad_values)
                           for h0, h1, w0, w1 in boxes], dim=0)
    window_scores = _score_crops(net, crops, flip, fusion, max_batch)
    total = mx.nd.zeros((1, window_scores.shape[1], ph, pw), ctx=img.context, dtype=window_scores.dtype)
    count = np.zeros((ph, pw), dtype=np.float32)
    for i, (h0, h1, w0, w1) in enumerate(boxes):
        total[:, :, h0:h1, w0:w1] += window_scores[i:i + 1, :, :h1 - h0, :w1 - w0]
        count[h0:h1, w0:w1] += 1
    total = total / mx.nd.array(count, ctx=img.context, dtype=total.dtype).reshape((1, 1, ph, pw))
    return total[:, :, :h, :w]


def predict(net, image, num_classes=None, base_size=None, crop_size=None, scales=(1.0,), flip=False,
            stride_rate=2.0 / 3.0, fusion='gluoncv', mean=IMAGENET_MEAN, std=IMAGENET_STD, max_batch=None):
    """Multi-scale / flip / sliding-window score map of one image (GluonCV ``MultiEvalModel`` semantics).

    Parameters
    ----------
    net : callable
        Maps (B, 3, h, w) to logits (B, C, h, w) or a tuple whose first element is those logits. Its
        parameters must live on ``image.context``.
    image : mx.nd.NDArray
        One normalised image, shape (3, H, W) or (1, 3, H, W).
    num_classes : int, optional
        Expected number of classes C; checked against the network's output when given.
    base_size : int, optional
        Long side at scale 1.0. Default: the image's own long side.
    crop_size : int, optional
        Window size. ``None``: every scale is scored on the whole resized image (no padding, no windows).
    scales : sequence of float
        Resize factors of ``base_size``.
    flip : bool
        Add the horizontally flipped pass.
    stride_rate : float
        Sliding-window stride as a fraction of ``crop_size`` (GluonCV: 2/3).
    fusion : {'gluoncv', 'softmax'}
        How one crop's passes become scores (see the module docstring).
    mean, std : sequence of 3 float
        Normalisation of ``image``; the padding value per channel is ``-mean/std``.
    max_batch : int, optional
        At most this many crops per forward call (all windows and flips of one scale at once when None).

    Returns
    -------
    mx.nd.NDArray
        Scores (C, H, W) at the original size, summed over scales; argmax over axis 0 is the prediction.
    """
    if fusion not in FUSIONS:
        raise ValueError(f'fusion must be one of {FUSIONS}, got {fusion!r}')
    if not scales:
        raise ValueError('predict: scales is empty')
    batch = _as_batch(image)
    if batch.shape[1] != 3:
        raise ValueError(f'predict: expected 3 channels, got image of shape {image.shape}')
    _, _, h, w = batch.shape
    base_size = base_size or max(h, w)
    pad_values = _pad_values(mean, std)
    scores = None
    for scale in scales:
        height, width, long_side = scaled_size(h, w, base_size, scale)
        resized = _resize(batch, height, width)
        if crop_size is None:
            out = _score_crops(net, resized, flip, fusion, max_batch)
        elif long_side <= crop_size:
            out = _score_padded(net, resized, crop_size, pad_values, flip, fusion, max_batch)
        else:
            stride = int(crop_size * stride_rate)
            if stride < 1:
                raise ValueError(f'predict: stride int({crop_size} * {stride_rate}) must be at least 1')
            out = _score_sliding(net, resized, crop_size, stride, pad_values, flip, fusion, max_batch)
        out = _resize(out, h, w)
        scores = out if scores is None else scores + out
    if num_classes is not None and scores.shape[1] != num_classes:
        raise ValueError(f'predict: the network outputs {scores.shape[1]} classes, expected {num_classes}')
    return scores[0]


def predict_whole(net, images):
    """Single-scale logits of a normalised batch (B, 3, H, W) -> (B, C, H, W), or of one image (3, H, W) ->
    (C, H, W), at the images' own size (the fast path). ``net`` returns logits or a tuple starting with them."""
    if images.ndim == 3:
        return _logits(net, images.expand_dims(0))[0]
    return _logits(net, images)


def parallel_predict(net, images, ctx_list, **kwargs):
    """:func:`predict` on several images, one image per context at a time, one thread per context.

    Parameters
    ----------
    net : callable
        Its parameters must be initialised on every context of ``ctx_list``.
    images : sequence of mx.nd.NDArray
        Images (3, H_i, W_i); sizes may differ.
    ctx_list : sequence of mx.Context
        Image ``i`` runs on ``ctx_list[i % len(ctx_list)]``.
    **kwargs
        Passed to :func:`predict`.

    Returns
    -------
    list of mx.nd.NDArray
        Score maps (C, H_i, W_i), each on the context that produced it, in input order.
    """
    ctx_list = list(ctx_list)
    if not ctx_list:
        raise ValueError('parallel_predict: ctx_list is empty')

    def run(image):
        out = predict(net, image, **kwargs)
        out.wait_to_read()          # inside the thread: each device's work finishes in its own thread
        return out

    results = []
    for first in range(0, len(images), len(ctx_list)):
        group = images[first:first + len(ctx_list)]
        results += parallel_apply(run, [(image.as_in_context(ctx),) for image, ctx in zip(group, ctx_list)],
                                  threaded=len(group) > 1)
    return results


class MultiEvalModel:
    """Drop-in for ``gluoncv.model_zoo.segbase.MultiEvalModel`` built on :func:`predict`.

    Parameters
    ----------
    module : mx.gluon.Block
        Segmentation network returning a tuple of logits.
    nclass : int
        Number of classes.
    ctx_list : sequence of mx.Context
        Contexts; the network's parameters are moved onto all of them (as GluonCV does).
    flip : bool
        Add the flipped pass.
    scales : sequence of float
        Evaluation scales.
    base_size, crop_size : int, optional
        Default: ``module.base_size`` / ``module.crop_size`` when present, else GluonCV's 520 / 480.
    fusion : {'gluoncv', 'softmax'}
        See :func:`predict`.
    """

    def __init__(self, module, nclass, ctx_list, flip=True, scales=GLUONCV_SCALES, base_size=None,
                 crop_size=None, fusion='gluoncv'):
        self.module = module
        self.nclass = nclass
        self.ctx_list = list(ctx_list)
        self.flip = flip
        self.scales = tuple(scales)
        self.base_size = base_size or getattr(module, 'base_size', BASE_SIZE)
        self.crop_size = crop_size or getattr(module, 'crop_size', CROP_SIZE)
        self.fusion = fusion
        module.collect_params().reset_ctx(ctx=self.ctx_list)

    def _kwargs(self):
        return dict(num_classes=self.nclass, base_size=self.base_size, crop_size=self.crop_size,
                    scales=self.scales, flip=self.flip, fusion=self.fusion)

    def __call__(self, image):
        """Scores (1, C, H, W) of one image (3, H, W), summed over scales."""
        return predict(self.module, image, **self._kwargs()).expand_dims(0)

    def parallel_forward(self, inputs):
        """One image per context: ``inputs`` is a sequence of (3, H, W); returns a tuple of 1-tuples."""
        outs = parallel_predict(self.module, list(inputs), self.ctx_list[:len(inputs)], **self._kwargs())
        return tuple((out.expand_dims(0),) for out in outs)

    def collect_params(self):
        return self.module.collect_params()
