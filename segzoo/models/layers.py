"""Two layers whose training pass MXNet 1.9.1 runs slowly on CPU, computed here with fewer operations and the
same result: the same function, only the floating-point summation order of some sums changes.

* :func:`resize_like` is ``BilinearResize2D(mode='like')``. MXNet's CPU backward of that op scatters every
  gradient value inside an OpenMP ``critical`` section (``src/operator/contrib/bilinear_resize.cc``): 150 ms for
  the (2, 21, 256, 256) logits of a DeepLabV3 crop, 4.8 s for 150 classes at 512 x 512. While autograd records
  on a CPU, the resize is computed as two matrix products with the op's own interpolation weights
  (:func:`interpolation_matrix`), whose gradient is two more: the same function (the outputs agree with the op's
  to float rounding, ~1e-7 relative), 2-4x faster with its backward. Plain autograd ops, no custom Function:
  a custom Function's backward runs as a callback that pushes its work late, which deadlocked threaded SyncBN
  training once every engine worker of a device held a SyncBN op. (That backward also zero-fills
  the gradient of ``like`` over ``batch(x) x channels(like)`` maps, past its end when ``like`` has a smaller
  batch than ``x``; segzoo only resizes like tensors of the same batch.)
* :class:`AtrousConv2D` is a "same"-padded dilated convolution. A tap whose offset from the centre reaches past
  the feature map reads only zero padding at every output position, e.g. the off-centre taps of the ASPP rate-36
  branch on the 32 x 32 map of a 256 crop: there the convolution *is* a 1x1 convolution with the centre
  weights. oneDNN's inference kernels skip such taps; its training kernels for these paddings do not (they run an
  im2col GEMM over all nine taps), so while autograd records, the taps that read only padding are left out of the
  kernel (7x faster for that branch in training).

Hybridized (symbolic) graphs and inference use MXNet's ops unchanged: deploy, INT8 and ONNX graphs are as before.
"""
import numpy
from mxnet import autograd, ndarray
from mxnet.gluon import nn

__all__ = ['AtrousConv2D', 'interpolation_matrix', 'kept_taps', 'resize_like']


def interpolation_matrix(size_in, size_out, align_corners, ctx):
    """``(size_out, size_in)`` weights of ``BilinearResize2D`` along one axis, read off the op itself: row ``o``
    holds the weights with which output ``o`` mixes the inputs (resizing one-hot columns; exact, since each
    output is a weight times 1)."""
    one_hot = ndarray.eye(size_in, ctx=ctx).reshape((1, size_in, size_in, 1))   # channel i: one-hot at i
    out = ndarray.contrib.BilinearResize2D(one_hot, height=size_out, width=1, align_corners=align_corners)
    return out.reshape((size_in, size_out)).T


def _resize_by_matrices(x, height, width, align_corners):
    """``BilinearResize2D`` of float32 `x` (B, C, h, w) to (height, width) as two matrix products with the op's
    interpolation weights, smallest intermediate first: along h on (B*C*w, h), then along w on (B*C*H, w). The
    products are FullyConnected (oneDNN inner product, ``X . W^T``; 138 GFLOP/s here against 97 for ``dot``)."""
    batch, channels, h, w = x.shape
    maps = batch * channels
    a_h = interpolation_matrix(h, height, align_corners, x.context)                  # (H, h)
    a_w = interpolation_matrix(w, width, align_corners, x.context)                   # (W, w)
    cols = x.reshape((maps, h, w)).transpose((0, 2, 1)).reshape((maps * w, h))
    along_h = ndarray.FullyConnected(cols, a_h, num_hidden=height, no_bias=True)     # (maps * w, H)
    rows = along_h.reshape((maps, w, height)).transpose((0, 2, 1)).reshape((maps * height, w))
    out = ndarray.FullyConnected(rows, a_w, num_hidden=width, no_bias=True)          # (maps * H, W)
    return out.reshape((batch, channels, height, width))


def resize_like(F, x, like, align_corners):
    """Bilinear resize of `x` (B, C, h, w) to the spatial size of `like` (MXNet's ``BilinearResize2D``)."""
    if F is ndarray and autograd.is_recording() and x.context.device_type == 'cpu' and x.dtype == numpy.float32:
        return _resize_by_matrices(x, like.shape[2], like.shape[3], align_corners)
    return F.contrib.BilinearResize2D(x, like=like, mode='like', align_corners=align_corners)


def kept_taps(size, kernel, dilation):
    """Taps on each side of the centre of a "same"-padded, stride-1 convolution that read inside a feature map
    of `size` at some output position: tap ``j`` (offset ``j * dilation``) does iff ``j * dilation < size``."""
    return min((kernel - 1) // 2, (size - 1) // dilation)


class AtrousConv2D(nn.Conv2D):
    """``nn.Conv2D`` with an odd kernel, stride 1 and "same" padding (``dilation * (kernel - 1) // 2``) that, while
    autograd records imperatively, leaves out the taps that read only padding (see the module docstring).

    Same parameters, names and ``.params`` keys as ``nn.Conv2D``.
    """

    def __init__(self, channels, kernel_size, dilation=1, **kwargs):
        if kernel_size % 2 == 0 or kwargs.get('strides', 1) not in (1, (1, 1)) or 'padding' in kwargs:
            raise ValueError('AtrousConv2D: an odd kernel, stride 1 and the padding it derives itself')
        super().__init__(channels, kernel_size, padding=dilation * (kernel_size - 1) // 2, dilation=dilation,
                         **kwargs)

    def hybrid_forward(self, F, x, weight, bias=None):
        if F is ndarray and autograd.is_recording():
            (kh, kw), (dh, dw) = self._kwargs['kernel'], self._kwargs['dilate']
            keep_h, keep_w = kept_taps(x.shape[2], kh, dh), kept_taps(x.shape[3], kw, dw)
            if (2 * keep_h + 1, 2 * keep_w + 1) != (kh, kw):
                ch, cw = (kh - 1) // 2, (kw - 1) // 2
                weight = F.slice(weight, begin=(None, None, ch - keep_h, cw - keep_w),
                                 end=(None, None, ch + keep_h + 1, cw + keep_w + 1))
                kwargs = dict(self._kwargs, kernel=(2 * keep_h + 1, 2 * keep_w + 1),
                              pad=(keep_h * dh, keep_w * dw), dilate=(dh if keep_h else 1, dw if keep_w else 1))
                inputs = (x, weight) if bias is None else (x, weight, bias)
                out = F.Convolution(*inputs, name='fwd', **kwargs)
                return out if self.act is None else self.act(out)
        return super().hybrid_forward(F, x, weight, bias)
