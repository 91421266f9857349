"""segzoo.models.layers: the training-time forms compute the same function as MXNet's ops (outputs and gradients
against the plain ops on the same inputs), and are used exactly while autograd records imperatively."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, nd
from mxnet.gluon import nn

from segzoo.models import layers
from segzoo.models.layers import AtrousConv2D, interpolation_matrix, kept_taps, resize_like


def _value_and_grads(fn, *inputs, seed=0):
    """fn(*inputs) under autograd, and d(sum(out * R))/d(input) for a fixed random R."""
    for x in inputs:
        x.attach_grad()
    with autograd.record():
        out = fn(*inputs)
        weights = nd.array(np.random.RandomState(seed).randn(*out.shape), dtype=out.dtype)
        loss = (out * weights).sum()
    loss.backward()
    return out.asnumpy(), [x.grad.asnumpy() for x in inputs]


def _close(a, b, rel=1e-5):
    np.testing.assert_allclose(a, b, rtol=0, atol=rel * max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize('in_hw, out_hw', [((4, 5), (17, 23)), ((1, 1), (6, 7)), ((9, 8), (9, 8)), ((12, 10), (5, 7))])
@pytest.mark.parametrize('align_corners', [True, False])
def test_resize_like_equals_the_op_in_value_and_gradient(in_hw, out_hw, align_corners):
    x = nd.array(np.random.RandomState(1).randn(2, 3, *in_hw))
    like = nd.zeros((2, 1) + out_hw)     # the batch of x (MXNet's own backward overruns a smaller one)

    def op(x):
        return nd.contrib.BilinearResize2D(x, like=like, mode='like', align_corners=align_corners)

    out, (grad,) = _value_and_grads(lambda x: resize_like(nd, x, like, align_corners), x.copy())
    ref_out, (ref_grad,) = _value_and_grads(op, x.copy())
    _close(out, ref_out, rel=1e-6)
    _close(grad, ref_grad)


@pytest.mark.parametrize('align_corners', [True, False])
def test_interpolation_matrix_is_the_op_along_one_axis(align_corners):
    size_in, size_out = 7, 19
    a = interpolation_matrix(size_in, size_out, align_corners, mx.cpu()).asnumpy()
    assert a.shape == (size_out, size_in)
    np.testing.assert_allclose(a.sum(axis=1), 1, rtol=1e-6)       # every output is a convex mix
    column = np.random.RandomState(2).randn(size_in).astype(np.float32)
    op = nd.contrib.BilinearResize2D(nd.array(column.reshape(1, 1, size_in, 1)), height=size_out, width=1,
                                     align_corners=align_corners).asnumpy().ravel()
    np.testing.assert_allclose(a @ column, op, rtol=1e-6, atol=1e-6)


def test_resize_like_uses_the_matrices_only_while_recording_float32_on_cpu(monkeypatch):
    calls = []
    real = layers._resize_by_matrices
    monkeypatch.setattr(layers, '_resize_by_matrices', lambda x, *args: calls.append(x.dtype) or real(x, *args))
    x, like = nd.ones((1, 2, 3, 3)), nd.zeros((1, 1, 8, 8))
    resize_like(nd, x, like, True)                                          # not recording: the op
    _value_and_grads(lambda x: resize_like(nd, x, like, True), x)           # recording: the matrices
    like64 = like.astype('float64')
    _value_and_grads(lambda x: resize_like(nd, x, like64, True), x.astype('float64'))   # float64: the op
    assert calls == [np.float32]
    sym = resize_like(mx.sym, mx.sym.var('x'), mx.sym.var('like'), True)   # hybridized graphs keep the op
    assert [node['op'] for node in json.loads(sym.tojson())['nodes'] if node['op'] != 'null'] == \
        ['_contrib_BilinearResize2D']


def test_kept_taps():
    assert kept_taps(32, 3, 12) == 1 and kept_taps(32, 3, 24) == 1
    assert kept_taps(32, 3, 32) == 0 and kept_taps(32, 3, 36) == 0     # every off-centre tap reads padding
    assert kept_taps(60, 3, 36) == 1 and kept_taps(1, 3, 1) == 0
    assert kept_taps(10, 7, 2) == 3 and kept_taps(10, 7, 4) == 2 and kept_taps(10, 7, 5) == 1


@pytest.mark.parametrize('size, dilation, groups', [((6, 6), 6, 1), ((5, 9), 6, 1), ((7, 7), 2, 1), ((6, 6), 8, 4)])
def test_atrous_conv_equals_conv2d_in_value_and_gradients(size, dilation, groups):
    """(6, 6) at rate 6: a 1x1 conv while training; (5, 9): 1x3 (rows collapse); (7, 7) at rate 2: nothing to
    leave out; depthwise-style groups too."""
    cin, cout = 8, 4 if groups == 1 else 8
    mx.random.seed(4)
    ours = AtrousConv2D(cout, 3, dilation=dilation, groups=groups, in_channels=cin, use_bias=True)
    plain = nn.Conv2D(cout, 3, padding=dilation, dilation=dilation, groups=groups, in_channels=cin, use_bias=True)
    ours.initialize(mx.init.Normal(0.5))
    plain.initialize()
    for name in ('weight', 'bias'):
        getattr(plain, name).set_data(getattr(ours, name).data())
    x = nd.array(np.random.RandomState(5).randn(2, cin, *size))
    for train in (True, False):
        results = []
        for net in (ours, plain):
            xx = x.copy()
            if train:
                out, (gx,) = _value_and_grads(net, xx)
                results.append((out, gx, net.weight.grad().asnumpy(), net.bias.grad().asnumpy()))
            else:
                results.append((net(xx).asnumpy(),))
        for a, b in zip(*results):
            _close(a, b)


def test_atrous_conv_keeps_conv2d_names_and_refuses_what_it_cannot_pad():
    with mx.name.NameManager():
        a, b = AtrousConv2D(4, 3, dilation=12), nn.Conv2D(4, 3, padding=12, dilation=12)
    assert a.weight.name.replace(a.prefix, '') == b.weight.name.replace(b.prefix, '') == 'weight'
    assert a.prefix.startswith('conv') and b.prefix.startswith('conv')
    for bad in (dict(kernel_size=2), dict(kernel_size=3, strides=2), dict(kernel_size=3, padding=1)):
        with pytest.raises(ValueError, match='AtrousConv2D'):
            AtrousConv2D(4, dilation=2, **bad)
