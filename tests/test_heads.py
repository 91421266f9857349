"""Each head on its own (like mmsegmentation's tests/test_models/test_heads): output shapes on small inputs
(in_channels 32, 33 x 33), ASPP dilations by their effect, parameter counts from the layer formulas, and that
``norm_layer`` / ``norm_kwargs`` reach every normalisation layer."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

from segzoo.models import ASPP, ASPPHead, DeepLabV3Head, DeepLabV3PlusHead, FCNHead, PSPHead
from segzoo.models.pspnet import BINS

IN, C1_IN, NUM_CLASSES, WIDTH, SIZE = 32, 8, 5, 16, 33
RATES = (2, 4, 6)


# Parameter counts of the layers (BatchNorm holds gamma, beta, running mean and running variance).
def conv(cin, cout, k, groups=1, bias=False):
    return cout * (cin // groups) * k * k + (cout if bias else 0)


def bn(c, per_channel=4):
    return per_channel * c


def conv_bn(cin, cout, k, norm=bn):
    return conv(cin, cout, k) + norm(cout)


def separable_bn(cin, cout, k, norm=bn):
    return conv(cin, cin, k, groups=cin) + norm(cin) + conv_bn(cin, cout, 1, norm)


def aspp_count(cin, width, rates, separable=False, project_kernel=1, norm=bn):
    branch = separable_bn if separable else conv_bn
    return (conv_bn(cin, width, 1, norm)                                        # 1x1 branch
            + sum(branch(cin, width, 3, norm) for _ in rates)                   # atrous 3x3 branches
            + conv_bn(cin, width, 1, norm)                                      # image pooling branch
            + conv_bn((len(rates) + 2) * width, width, project_kernel, norm))   # projection


def classifier_count(cin, width, num_classes, norm=bn):
    return conv_bn(cin, width, 3, norm) + conv(width, num_classes, 1, bias=True)


EXPECTED = {
    'fcn': lambda norm: classifier_count(IN, IN // 4, NUM_CLASSES, norm),
    'psp': lambda norm: (len(BINS) * conv_bn(IN, IN // 4, 1, norm)
                         + classifier_count(2 * IN, IN // 4, NUM_CLASSES, norm)),
    'deeplab': lambda norm: (aspp_count(IN, WIDTH, RATES, norm=norm)
                             + classifier_count(WIDTH, WIDTH, NUM_CLASSES, norm)),
    'aspp_composer': lambda norm: (aspp_count(IN, WIDTH, RATES, project_kernel=3, norm=norm)
                                   + conv(WIDTH, NUM_CLASSES, 1, bias=True)),
    'deeplabplus': lambda norm: (aspp_count(IN, WIDTH, RATES, separable=True, project_kernel=3, norm=norm)
                                 + conv_bn(C1_IN, 4, 1, norm)                               # c1 projection
                                 + separable_bn(WIDTH + 4, WIDTH, 3, norm) + separable_bn(WIDTH, WIDTH, 3, norm)
                                 + conv(WIDTH, NUM_CLASSES, 1, bias=True)),
}


def _build(name, **norm):
    if name == 'fcn':
        return FCNHead(IN, NUM_CLASSES, **norm)
    if name == 'psp':
        return PSPHead(IN, NUM_CLASSES, **norm)
    if name == 'deeplab':
        return DeepLabV3Head(IN, NUM_CLASSES, atrous_rates=RATES, channels=WIDTH, **norm)
    if name == 'aspp_composer':
        return ASPPHead(IN, NUM_CLASSES, atrous_rates=RATES, channels=WIDTH, **norm)
    return DeepLabV3PlusHead(C1_IN, IN, NUM_CLASSES, atrous_rates=RATES, channels=WIDTH, c1_channels=4, **norm)


def _inputs(name, batch=2, size=SIZE, seed=0):
    rng = np.random.RandomState(seed)
    c4 = mx.nd.array(rng.randn(batch, IN, size, size))
    if name == 'deeplabplus':            # c1 at stride 4, c4 at stride 8
        return mx.nd.array(rng.randn(batch, C1_IN, 2 * size - 1, 2 * size - 1)), c4
    return (c4,)


def _initialized(block):
    block.initialize(mx.init.Xavier())
    return block


def _count(block):
    return sum(int(np.prod(p.shape)) for p in block.collect_params().values())


def _norm_layers(block):
    found = []
    for child in block._children.values():
        if isinstance(child, (nn.BatchNorm, nn.InstanceNorm)):
            found.append(child)
        found.extend(_norm_layers(child))
    return found


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_shape_and_any_input_size(name):
    head = _initialized(_build(name))
    out = head(*_inputs(name))
    expected_size = 2 * SIZE - 1 if name == 'deeplabplus' else SIZE    # DeepLabV3+ predicts at c1's size
    assert out.shape == (2, NUM_CLASSES, expected_size, expected_size)
    head.hybridize()
    for size in (SIZE, 20):              # one hybridized head serves every size (no size frozen at construction)
        inputs = _inputs(name, batch=1, size=size, seed=1)
        assert head(*inputs).shape[2:] == inputs[0].shape[2:]


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_parameter_count_follows_the_layers(name):
    head = _initialized(_build(name))
    head(*_inputs(name, batch=1))
    assert _count(head) == EXPECTED[name](bn)


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_norm_layer_and_kwargs_reach_every_norm(name):
    # InstanceNorm (gamma and beta per channel) in place of BatchNorm: the counts change accordingly
    head = _initialized(_build(name, norm_layer=nn.InstanceNorm, norm_kwargs={'epsilon': 1e-3}))
    head(*_inputs(name, batch=1))
    norms = _norm_layers(head)
    assert norms and all(isinstance(n, nn.InstanceNorm) and n._kwargs['eps'] == 1e-3 for n in norms)
    assert _count(head) == EXPECTED[name](lambda c: bn(c, per_channel=2))


def _branch_reach(branch, offset, size=SIZE):
    """Does a change of the input at ``offset`` pixels right of the centre change the output at the centre?"""
    rng = np.random.RandomState(2)
    x = rng.randn(1, IN, size, size).astype(np.float32)
    moved = x.copy()
    centre = size // 2
    moved[0, :, centre, centre + offset] += 3.0
    out = [branch(mx.nd.array(v))[0, :, centre, centre].asnumpy() for v in (x, moved)]
    return np.abs(out[1] - out[0]).max() > 0


@pytest.mark.parametrize('separable', [False, True])
@pytest.mark.parametrize('pool_first', [False, True])
def test_aspp_branches_dilations_and_order(separable, pool_first):
    aspp = _initialized(ASPP(IN, RATES, WIDTH, separable=separable, pool_first=pool_first))
    branches = list(aspp.branches._children.values())
    assert len(branches) == len(RATES) + 2
    pool = branches.pop(0 if pool_first else -1)
    one_by_one, atrous = branches[0], branches[1:]
    # each 3x3 branch sees exactly the pixels `rate` apart: a change there reaches the centre, one pixel closer
    # or farther does not
    for rate, branch in zip(RATES, atrous):
        assert _branch_reach(branch, rate)
        assert not _branch_reach(branch, rate - 1) and not _branch_reach(branch, rate + 1)
    assert _branch_reach(one_by_one, 0) and not _branch_reach(one_by_one, 1)
    # the pooling branch is image-level: constant over the map and reached by any pixel
    out = pool(mx.nd.array(np.random.RandomState(3).randn(1, IN, SIZE, SIZE))).asnumpy()
    assert out.shape == (1, WIDTH, SIZE, SIZE)
    np.testing.assert_allclose(out, np.broadcast_to(out[:, :, :1, :1], out.shape), rtol=1e-6, atol=1e-7)
    assert _branch_reach(pool, SIZE // 2)


def test_aspp_pooling_branch_is_conv_norm_relu_of_the_mean():
    aspp = _initialized(ASPP(IN, RATES, WIDTH))
    pool = list(aspp.branches._children.values())[-1]
    x = mx.nd.array(np.random.RandomState(4).randn(2, IN, SIZE, SIZE))
    conv_layer, norm = pool.gap[1], pool.gap[2]
    norm.running_mean.set_data(mx.nd.array(np.random.RandomState(5).randn(WIDTH)))
    norm.running_var.set_data(mx.nd.array(np.random.RandomState(6).uniform(0.5, 2.0, WIDTH)))
    mean = x.asnumpy().mean(axis=(2, 3))                                     # (B, IN)
    pre = mean @ conv_layer.weight.data().asnumpy()[:, :, 0, 0].T          # (B, WIDTH)
    gamma, beta = norm.gamma.data().asnumpy(), norm.beta.data().asnumpy()
    normed = (pre - norm.running_mean.data().asnumpy()) / np.sqrt(norm.running_var.data().asnumpy() + 1e-5)
    expected = np.maximum(gamma * normed + beta, 0)
    np.testing.assert_allclose(pool(x).asnumpy()[:, :, 7, 11], expected, rtol=1e-4, atol=1e-5)


def test_gluoncv_and_composer_aspp_differ_where_documented():
    gluoncv_style = ASPP(IN, RATES, WIDTH)
    composer_style = ASPP(IN, RATES, WIDTH, dropout=0, pool_first=True, project_kernel=3)
    assert isinstance(gluoncv_style.project[-1], nn.Dropout) and gluoncv_style.project[-1]._rate == 0.5
    assert not any(isinstance(layer, nn.Dropout) for layer in composer_style.project._children.values())
    assert gluoncv_style.project[0]._kwargs['kernel'] == (1, 1)
    assert composer_style.project[0]._kwargs['kernel'] == (3, 3)
    assert composer_style.project[0]._kwargs['pad'] == (1, 1)                # size kept
