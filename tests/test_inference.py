"""segzoo.inference against GluonCV's MultiEvalModel (the oracle), plus the whole-image path and softmax fusion.

Sizes are small (crop 32, base 40, a 30 x 45 photograph) but still reach every branch of GluonCV's multi-scale
evaluation: scales whose long side fits the crop (padded whole image) and scales that need sliding windows.
"""
import os

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from segzoo.inference import (MultiEvalModel, parallel_predict, predict, predict_whole, scaled_size,
                              window_starts)

CROP, BASE = 32, 40
H, W = 30, 45
ALL_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)   # GluonCV's default scales
NCLASS = 21


class _GluonCVContractNet(mx.gluon.HybridBlock):
    """A small network with the interface MultiEvalModel expects of GluonCV's segmentation models (segbase.py):
    ``base_size`` and ``crop_size`` attributes, ``evaluate(x)``, and a tuple output resized to the fixed crop size
    (``SegBaseModel._up_kwargs``). It exercises the evaluator's arithmetic at a fraction of ResNet-50's cost; the
    real GluonCV FCN and DeepLabV3 are checked below."""

    def __init__(self, nclass, base_size=BASE, crop_size=CROP):
        super().__init__()
        self.base_size, self.crop_size = base_size, crop_size
        with self.name_scope():
            self.body = mx.gluon.nn.HybridSequential()
            self.body.add(mx.gluon.nn.Conv2D(8, 3, strides=2, padding=1), mx.gluon.nn.BatchNorm(),
                          mx.gluon.nn.Activation('relu'), mx.gluon.nn.Conv2D(nclass, 3, padding=2, dilation=2))

    def hybrid_forward(self, F, x):
        return (F.contrib.BilinearResize2D(self.body(x), height=self.crop_size, width=self.crop_size),)

    def evaluate(self, x):
        return self.forward(x)[0]


def _randomize(net, last_layer, seed):
    """Random weights and BN statistics away from (0, 1); ``last_layer`` scaled so logits spread a few units
    (exp() fusion is exercised away from 1 without overflowing)."""
    mx.random.seed(seed)
    rng = np.random.RandomState(seed)
    for param in net.collect_params().values():
        if param._data is None and not param._deferred_init:
            param.initialize(default_init=mx.init.MSRAPrelu())
    net(mx.nd.zeros((1, 3, CROP, CROP)))   # resolves deferred shapes
    for name, param in net.collect_params().items():
        if name.endswith(('running_mean', 'beta', 'bias')):
            param.set_data(mx.nd.array(rng.uniform(-0.2, 0.2, param.shape)))
        elif name.endswith(('running_var', 'gamma')):
            param.set_data(mx.nd.array(rng.uniform(0.5, 1.5, param.shape)))
    logits = net(mx.nd.array(rng.normal(size=(1, 3, CROP, CROP))))[0]
    factor = 3.0 / float(logits.asnumpy().std())
    for param in (last_layer.weight, last_layer.bias):
        param.set_data(param.data() * factor)
    return net


def _gluoncv_multi_eval(gluoncv, net, ctx_list, flip, scales):
    return gluoncv.model_zoo.segbase.MultiEvalModel(net, NCLASS, ctx_list, flip=flip, scales=list(scales))


@pytest.fixture(scope='module')
def contract_net():
    net = _GluonCVContractNet(NCLASS)
    net.initialize(mx.init.Xavier(magnitude=6))
    return _randomize(net, net.body[-1], 0)


@pytest.fixture(scope='module')
def real_image(sample_data):
    """A bundled VOC photograph resized to (H, W) and normalised, (3, H, W)."""
    from segzoo.data.transforms import ImageNormalize
    folder = os.path.join(sample_data, 'voc_mini', 'VOC2012', 'JPEGImages')
    path = os.path.join(folder, sorted(os.listdir(folder))[0])
    image = Image.open(path).convert('RGB').resize((W, H), Image.BILINEAR)
    return mx.nd.array(ImageNormalize()(np.asarray(image)))


def _assert_close(ours, theirs, rel=1e-5):
    """Positive score maps equal element by element up to a relative error (scores span many decades)."""
    ours, theirs = ours.asnumpy(), theirs.asnumpy()
    assert ours.shape == theirs.shape
    assert np.isfinite(theirs).all() and theirs.min() > 0 and theirs.max() > theirs.min()
    np.testing.assert_allclose(ours, theirs, rtol=rel, atol=0)


def test_scaled_size_and_windows_follow_gluoncv_arithmetic():
    # GluonCV segbase.py MultiEvalModel.__call__: long side ceil(base_size * scale); base 520 gives 260 ... 910
    assert [scaled_size(375, 500, 520, s)[2] for s in ALL_SCALES] == [260, 390, 520, 650, 780, 910]
    # the short side rounds half up: 375 * 260 / 500 = 195.0, 375 * 390 / 500 = 292.5 -> 293
    assert scaled_size(375, 500, 520, 0.5)[:2] == (195, 260)
    assert scaled_size(375, 500, 520, 0.75)[:2] == (293, 390)
    assert scaled_size(500, 375, 520, 0.75)[:2] == (390, 293)     # tall image: height is the long side
    # crop 480, stride int(480 * 2 / 3) = 320: ceil((910 - 480) / 320) + 1 = 3 windows, the last one clipped
    assert window_starts(910, 480, 320) == [(0, 480), (320, 800), (640, 910)]
    assert window_starts(480, 480, 320) == [(0, 480)]
    with pytest.raises(ValueError, match='shorter than the crop'):
        window_starts(100, 480, 320)


def test_test_image_exercises_both_branches():
    longs = [scaled_size(H, W, BASE, s)[2] for s in ALL_SCALES]
    assert any(long <= CROP for long in longs) and any(long > CROP for long in longs)
    # at scale 1.0 the resized image is 27 x 40: longer than the crop but its short side is below it, so it is
    # padded before the windows slide
    assert scaled_size(H, W, BASE, 1.0)[:2] == (27, 40)


@pytest.mark.parametrize('flip', [True, False])
def test_equals_gluoncv_multievalmodel(gluoncv, contract_net, real_image, flip):
    theirs = _gluoncv_multi_eval(gluoncv, contract_net, [mx.cpu()], flip, ALL_SCALES)(real_image)
    ours = predict(contract_net, real_image, NCLASS, base_size=BASE, crop_size=CROP, scales=ALL_SCALES, flip=flip)
    assert ours.shape == (NCLASS, H, W)
    _assert_close(ours, theirs[0])
    # one crop per forward call (GluonCV's batching) gives the same numbers as all windows at once
    one_by_one = predict(contract_net, real_image, NCLASS, base_size=BASE, crop_size=CROP, scales=ALL_SCALES,
                         flip=flip, max_batch=1)
    _assert_close(one_by_one, theirs[0])


def test_tall_image_equals_gluoncv(gluoncv, contract_net, real_image):
    tall = real_image.transpose((0, 2, 1))       # (3, W, H): the height is the long side
    theirs = _gluoncv_multi_eval(gluoncv, contract_net, [mx.cpu()], True, ALL_SCALES)(tall)
    ours = predict(contract_net, tall, NCLASS, base_size=BASE, crop_size=CROP, scales=ALL_SCALES, flip=True)
    _assert_close(ours, theirs[0])


def test_multievalmodel_parallel_forward_on_two_contexts(gluoncv, contract_net, real_image):
    ctx_list = [mx.cpu(0), mx.cpu(1)]
    second = real_image.flip(axis=2)
    scales = [0.75, 1.25]
    try:
        theirs = _gluoncv_multi_eval(gluoncv, contract_net, ctx_list, True, scales)
        expected = theirs.parallel_forward([real_image, second])
        ours = MultiEvalModel(contract_net, NCLASS, ctx_list, flip=True, scales=scales, base_size=BASE,
                              crop_size=CROP)
        got = ours.parallel_forward([real_image, second])
        assert len(got) == 2
        for (g,), (e,) in zip(got, expected):
            assert g.context == e.context
            _assert_close(g, e)
    finally:
        contract_net.collect_params().reset_ctx(mx.cpu())


@pytest.mark.slow      # two ResNet-50 networks and a 130 MB weight file
def test_segzoo_fcn_on_gluoncv_weights_equals_gluoncv_fcn(gluoncv, real_image, tmp_path):
    from segzoo.model_zoo import get_segmentation_model
    theirs_net = gluoncv.model_zoo.get_fcn(dataset='pascal_voc', backbone='resnet50', pretrained=False,
                                           pretrained_base=False, base_size=BASE, crop_size=CROP, aux=False)
    _randomize(theirs_net, theirs_net.head.block[-1], 0)
    theirs = _gluoncv_multi_eval(gluoncv, theirs_net, [mx.cpu()], True, ALL_SCALES)(real_image)
    path = str(tmp_path / 'fcn_resnet50_voc.params')
    theirs_net.save_parameters(path)
    ours_net = get_segmentation_model('fcn', dataset='pascal_voc', backbone='resnet50', aux=False, pretrained=path)
    ours_net.hybridize()
    ours = predict(ours_net, real_image, NCLASS, base_size=BASE, crop_size=CROP, scales=ALL_SCALES, flip=True)
    _assert_close(ours, theirs[0], rel=1e-4)
    # GluonCV's own network through predict() (what test.py does with a GluonCV model) gives its numbers too
    _assert_close(predict(theirs_net, real_image, NCLASS, base_size=BASE, crop_size=CROP, scales=ALL_SCALES,
                          flip=True), theirs[0])


@pytest.mark.slow      # a ResNet-50 DeepLabV3
def test_deeplab_pooling_branch_equals_gluoncv(gluoncv, real_image):
    # GluonCV's ASPP pooling branch upsamples to a size fixed at construction (crop / 8): crops must keep it
    net = gluoncv.model_zoo.get_deeplab(dataset='pascal_voc', backbone='resnet50', pretrained=False,
                                        pretrained_base=False, base_size=BASE, crop_size=CROP, aux=False)
    _randomize(net, net.head.block[-1], 1)
    scales = (0.75, 1.5)
    theirs = _gluoncv_multi_eval(gluoncv, net, [mx.cpu()], True, scales)(real_image)
    ours = predict(net, real_image, NCLASS, base_size=BASE, crop_size=CROP, scales=scales, flip=True)
    _assert_close(ours, theirs[0])


class _AnySizeNet(mx.gluon.HybridBlock):
    """A small size-agnostic network with a tuple output, as segzoo's Segmentor: conv -> resize to the input."""

    def __init__(self, nclass):
        super().__init__()
        with self.name_scope():
            self.body = mx.gluon.nn.HybridSequential()
            self.body.add(mx.gluon.nn.Conv2D(8, 3, strides=2, padding=1, activation='relu'),
                          mx.gluon.nn.Conv2D(nclass, 3, padding=2, dilation=2))

    def hybrid_forward(self, F, x):
        return (F.contrib.BilinearResize2D(self.body(x), like=x, mode='like'),)


@pytest.fixture(scope='module')
def any_size_net():
    mx.random.seed(3)
    net = _AnySizeNet(5)
    net.initialize(mx.init.Xavier(magnitude=6))
    return net


def _assert_softmax_fusion_sums_to_passes(net, image, nclass, crop, flip, scales=(0.5, 1.0, 1.5)):
    scores = predict(net, image, nclass, base_size=BASE, crop_size=crop, scales=scales, flip=flip, fusion='softmax')
    np.testing.assert_allclose(scores.sum(axis=0).asnumpy(), len(scales) * (2 if flip else 1), rtol=1e-5)


@pytest.mark.parametrize('flip', [False, True])
def test_softmax_fusion_sums_to_number_of_passes(any_size_net, real_image, flip):
    _assert_softmax_fusion_sums_to_passes(any_size_net, real_image, 5, None, flip)


def test_softmax_fusion_with_sliding_windows_sums_to_number_of_passes(contract_net, real_image):
    _assert_softmax_fusion_sums_to_passes(contract_net, real_image, NCLASS, CROP, True)


def test_whole_image_path_batches(any_size_net, real_image):
    images = mx.nd.stack(real_image, real_image.flip(axis=2), real_image * 0.5)
    batched = predict_whole(any_size_net, images)
    assert batched.shape == (3, 5, H, W)
    for i in range(3):
        single = predict_whole(any_size_net, images[i])
        np.testing.assert_allclose(batched[i].asnumpy(), single.asnumpy(), rtol=1e-5, atol=1e-5)
    # predict() at scale 1.0 of the image's own size, without crop, is exp(logits) in GluonCV fusion
    ours = predict(any_size_net, real_image, 5)
    np.testing.assert_allclose(ours.asnumpy(), predict_whole(any_size_net, real_image).exp().asnumpy(), rtol=1e-5)


def test_whole_image_scales_without_crop_resize_back(any_size_net, real_image):
    scores = predict(any_size_net, real_image, 5, base_size=23, scales=(1.0,))
    logits = any_size_net(mx.nd.contrib.BilinearResize2D(real_image.expand_dims(0), height=15, width=23))[0]
    expected = mx.nd.contrib.BilinearResize2D(logits.exp(), height=H, width=W)[0]
    _assert_close(scores, expected)


def test_parallel_predict_keeps_order_and_contexts(any_size_net, real_image):
    ctx_list = [mx.cpu(0), mx.cpu(1)]
    any_size_net.collect_params().reset_ctx(ctx_list)
    try:
        images = [real_image, real_image[:, :20, :25], real_image * 2]
        outs = parallel_predict(any_size_net, images, ctx_list, num_classes=5, scales=(0.5, 1.0), flip=True)
        for i, (image, out) in enumerate(zip(images, outs)):
            assert out.context == ctx_list[i % 2]
            expected = predict(any_size_net, image.as_in_context(ctx_list[i % 2]), 5, scales=(0.5, 1.0), flip=True)
            _assert_close(out, expected)
    finally:
        any_size_net.collect_params().reset_ctx(mx.cpu())


def test_bad_input_is_rejected(any_size_net, real_image):
    with pytest.raises(ValueError, match='fusion'):
        predict(any_size_net, real_image, 5, fusion='mean')
    with pytest.raises(ValueError, match='one image'):
        predict(any_size_net, mx.nd.stack(real_image, real_image), 5)
    with pytest.raises(ValueError, match='scales is empty'):
        predict(any_size_net, real_image, 5, scales=())
    with pytest.raises(ValueError, match='outputs 5 classes, expected 21'):
        predict(any_size_net, real_image, 21)
