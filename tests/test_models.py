"""Backbone, heads and Segmentor on the tiny backbone: shapes, any input size, save/load, SyncBN."""

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon.contrib.nn import SyncBatchNorm

from segzoo.models import METHODS, get_backbone, get_segmentor, gluoncv_key
from segzoo.utils.parallel import parallel_apply

SIZES = [(33, 33), (40, 52)]


def _initialized_segmentor(method, num_classes=5, aux=True, seed=0, **kwargs):
    mx.random.seed(seed)
    net = get_segmentor(method, 'resnet_tiny', num_classes, aux=aux, **kwargs)
    net.initialize(mx.init.Xavier())
    return net


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('aux', [False, True])
def test_outputs_are_logits_at_input_size(method, aux):
    net = _initialized_segmentor(method, num_classes=5, aux=aux)
    for height, width in SIZES:
        outputs = net(mx.nd.random.uniform(shape=(2, 3, height, width)))
        assert isinstance(outputs, tuple)
        assert [o.shape for o in outputs] == [(2, 5, height, width)] * (2 if aux else 1)


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.slow
def test_one_hybridized_network_serves_two_sizes(method):
    net = _initialized_segmentor(method)
    inputs = [mx.nd.random.uniform(shape=(1, 3, h, w)) for h, w in SIZES]
    imperative = [net(x) for x in inputs]
    net.hybridize(static_alloc=True)
    for _ in range(2):  # second round reuses the cached graphs
        for x, expected in zip(inputs, imperative):
            for got, want in zip(net(x), expected):
                np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-5, atol=1e-5)


def test_constructor_neither_initialises_nor_sets_lr_mult():
    net = get_segmentor('deeplab', 'resnet_tiny', 5, aux=True)
    params = net.collect_params().values()
    assert all(param._data is None for param in params)
    assert all(param.lr_mult == 1 for param in params)


def test_backbone_strides_dilations_and_channels():
    backbone = get_backbone('resnet50')  # structure only; not initialised
    assert backbone.out_channels == (256, 512, 1024, 2048)
    dilations = [[block.conv2._kwargs['dilate'][0] for block in getattr(backbone, f'layer{i}')]
                 for i in (3, 4)]
    assert dilations == [[1, 2, 2, 2, 2, 2], [2, 4, 4]]
    assert [block.conv2._kwargs['pad'][0] for block in backbone.layer4] == [2, 4, 4]
    assert [getattr(backbone, f'layer{i}')[0].conv2._kwargs['stride'][0] for i in (1, 2, 3, 4)] == [1, 2, 1, 1]

    tiny = get_backbone('resnet_tiny')
    tiny.initialize()
    features = tiny(mx.nd.zeros((1, 3, 33, 33)))
    assert [f.shape for f in features] == [(1, c, s, s) for c, s in zip(tiny.out_channels, (9, 5, 5, 5))]


def test_heads_take_channels_from_the_backbone():
    net = get_segmentor('psp', 'resnet_tiny', 3, aux=True)
    c1, _, c3, c4 = net.backbone.out_channels
    assert net.head.psp.conv1[0].weight.shape == (c4 // 4, c4, 1, 1)
    assert net.head.block[0].weight.shape == (c4 // 4, 2 * c4, 3, 3)
    assert net.aux_head.block[0].weight.shape == (c3 // 4, c3, 3, 3)
    plus = get_segmentor('deeplabplus', 'resnet_tiny', 3)
    assert plus.head.c1_bottleneck[0].weight.shape == (48, c1, 1, 1)


def test_composer_heads_put_the_pool_branch_first_and_project_with_3x3():
    # Composer's mmseg heads: [pool, 1x1, d12, d24, d36] -> 3x3 conv (5 x 512 -> 512), no dropout after it
    for method, separable in (('deeplabplus', True), ('deeplabv3_composer', False)):
        net = get_segmentor(method, 'resnet_tiny_v1b', 3)
        c4 = net.backbone.out_channels[3]
        branches = net.head.aspp.branches
        assert type(branches[0]).__name__ == 'ASPPPooling'
        assert branches[1][0].weight.shape == (512, c4, 1, 1)
        first_atrous = branches[2][0]
        if separable:
            assert first_atrous.weight.shape == (c4, 1, 3, 3) and first_atrous._kwargs['num_group'] == c4
        else:
            assert first_atrous.weight.shape == (512, c4, 3, 3)
        assert [branches[i][0]._kwargs['dilate'][0] for i in (2, 3, 4)] == [12, 24, 36]
        assert net.head.aspp.project[0].weight.shape == (512, 5 * 512, 3, 3)
        assert not any(isinstance(layer, mx.gluon.nn.Dropout) for layer in net.head.aspp.project)
        assert net.head.dropout._axes == (2, 3)  # torch Dropout2d: one mask per channel
        assert net.align_corners is False and net.aux_head is None


def test_torchvision_stem():
    backbone = get_backbone('resnet50_v1b')
    assert backbone.conv1.weight.shape == (64, 3, 7, 7)
    assert backbone.bn1.gamma.shape == (64,)
    assert backbone.layer1[0].conv1.weight.shape == (64, 64, 1, 1)
    assert backbone.layer1[0].downsample[0].weight.shape == (256, 64, 1, 1)
    tiny = get_backbone('resnet_tiny_v1b')
    tiny.initialize()
    features = tiny(mx.nd.zeros((1, 3, 33, 33)))
    assert [f.shape for f in features] == [(1, c, s, s) for c, s in zip(tiny.out_channels, (9, 5, 5, 5))]


def test_key_names_follow_gluoncv():
    assert gluoncv_key('backbone.conv1.0.weight') == 'conv1.0.weight'
    assert gluoncv_key('aux_head.block.4.bias') == 'auxlayer.block.4.bias'
    assert gluoncv_key('head.aspp.branches.4.gap.1.weight') == 'head.aspp.concurent.4.gap.1.weight'


def test_save_load_round_trip(tmp_path):
    net = _initialized_segmentor('deeplab', seed=1)
    path = str(tmp_path / 'net.params')
    net.save_parameters(path)
    keys = set(mx.nd.load(path))
    assert 'conv1.0.weight' in keys and 'auxlayer.block.4.bias' in keys
    assert 'head.aspp.concurent.4.gap.1.weight' in keys
    assert not any(key.startswith(('backbone.', 'aux_head.')) for key in keys)

    other = get_segmentor('deeplab', 'resnet_tiny', 5, aux=True)
    other.load_parameters(path)
    x = mx.nd.random.uniform(shape=(1, 3, 40, 52))
    for got, want in zip(other(x), net(x)):
        np.testing.assert_array_equal(got.asnumpy(), want.asnumpy())


def test_aux_keys_in_the_file_are_ignored_only_without_aux_head(tmp_path):
    path = str(tmp_path / 'aux.params')
    _initialized_segmentor('fcn', aux=True).save_parameters(path)
    no_aux = get_segmentor('fcn', 'resnet_tiny', 5, aux=False)
    no_aux.load_parameters(path)
    assert len(no_aux(mx.nd.zeros((1, 3, 32, 32)))) == 1

    path = str(tmp_path / 'no_aux.params')
    no_aux.save_parameters(path)
    with pytest.raises(ValueError, match=r'missing from the file: auxlayer\.block\.0\.weight'):
        get_segmentor('fcn', 'resnet_tiny', 5, aux=True).load_parameters(path)


def test_mismatched_files_name_keys_and_shapes(tmp_path):
    path = str(tmp_path / 'fcn.params')
    _initialized_segmentor('fcn', num_classes=5).save_parameters(path)

    with pytest.raises(ValueError) as error:
        get_segmentor('fcn', 'resnet_tiny', 7, aux=True).load_parameters(path)
    message = str(error.value)
    assert path in message and 'shape mismatch' in message
    assert 'head.block.4.weight: file (5, 32, 1, 1) vs network (7, 32, 1, 1)' in message

    with pytest.raises(ValueError) as error:
        get_segmentor('deeplab', 'resnet_tiny', 5, aux=True).load_parameters(path)
    message = str(error.value)
    assert 'missing from the file: head.aspp.concurent.0.0.weight' in message
    assert 'head.block.0.weight: file (32, 128, 3, 3) vs network (256, 256, 3, 3)' in message

    deeplab_path = str(tmp_path / 'deeplab.params')
    _initialized_segmentor('deeplab', num_classes=5).save_parameters(deeplab_path)
    with pytest.raises(ValueError, match=r'not in the network: head\.aspp\.concurent\.0\.0\.weight'):
        get_segmentor('fcn', 'resnet_tiny', 5, aux=True).load_parameters(deeplab_path)

    with pytest.raises(FileNotFoundError, match='nowhere.params'):
        get_segmentor('fcn', 'resnet_tiny', 5).load_parameters(str(tmp_path / 'nowhere.params'))


def _threaded_forward(forward, shards):
    """SyncBN blocks until every device has run its forward, so each forward runs in its own thread."""
    with mx.autograd.train_mode():
        outputs = parallel_apply(lambda x: [out.asnumpy() for out in forward(x)], [(x,) for x in shards],
                                 threaded=True)
    return [np.concatenate(parts) for parts in zip(*outputs)]


def test_syncbn_on_two_cpu_contexts_equals_batchnorm_on_the_whole_batch(tmp_path):
    from segzoo.model_zoo import get_segmentation_model
    ctx_list = [mx.cpu(0), mx.cpu(1)]
    synced = get_segmentation_model('deeplab', backbone='resnet_tiny', aux=True, ctx=ctx_list,
                                     norm_layer=SyncBatchNorm, norm_kwargs={'num_devices': 2})
    assert all(isinstance(block, SyncBatchNorm) for block in (synced.backbone.bn1, synced.head.block[1],
                                                               synced.head.aspp.branches[4].gap[2],
                                                               synced.aux_head.block[1]))
    path = str(tmp_path / 'sync.params')
    synced.save_parameters(path)
    plain = get_segmentation_model('deeplab', backbone='resnet_tiny', aux=True, pretrained=path)

    x = mx.nd.random.uniform(shape=(4, 3, 32, 32))
    shards = [x[:2].as_in_context(ctx_list[0]), x[2:].as_in_context(ctx_list[1])]
    logits, aux_logits = _threaded_forward(synced, shards)
    assert logits.shape == aux_logits.shape == (4, 21, 32, 32)
    # the backbone has no dropout, so training-mode features are deterministic: statistics over the
    # two halves (synchronised) must equal statistics over the whole batch
    got = _threaded_forward(lambda shard: synced.backbone(shard)[3:], shards)[0]
    with mx.autograd.train_mode():
        expected = plain.backbone(x)[3].asnumpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.ptp(expected))
