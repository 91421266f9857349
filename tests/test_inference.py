"""segzoo.inference against GluonCV's MultiEvalModel (the oracle), plus the whole-image path and softmax fusion."""
import os

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from segzoo.inference import (MultiEvalModel, parallel_predict, predict, predict_whole, scaled_size,
                              window_starts)

gluoncv_zoo = pytest.importorskip('gluoncv.model_zoo')
from gluoncv.model_zoo.segbase import MultiEvalModel as GluonCVMultiEvalModel  # noqa: E402

CROP, BASE = 64, 72
ALL_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)   # GluonCV's default scales
NCLASS = 21


def _randomize(net, seed):
    """Initialise a GluonCV network with random weights and BN statistics away from (0, 1)."""
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
    # Bring the logits to a spread of a few units: exp() fusion is exercised away from 1 without overflowing.
    logits = net(mx.nd.array(rng.normal(size=(1, 3, CROP, CROP))))[0]
    factor = 3.0 / float(logits.asnumpy().std())
    for param in (net.head.block[-1].weight, net.head.block[-1].bias):
        param.set_data(param.data() * factor)


@pytest.fixture(scope='module')
def gluoncv_fcn():
    net = gluoncv_zoo.get_fcn(dataset='pascal_voc', backbone='resnet50', pretrained=False, pretrained_base=False,
                              base_size=BASE, crop_size=CROP, aux=False)
    _randomize(net, 0)
    return net


@pytest.fixture(scope='module')
def real_image(sample_data):
    """A bundled VOC photograph resized to (60, 90) and normalised, (3, 60, 90)."""
    from segzoo.data.transforms import ImageNormalize
    folder = os.path.join(sample_data, 'voc_mini', 'VOC2012', 'JPEGImages')
    path = os.path.join(folder, sorted(os.listdir(folder))[0])
    image = Image.open(path).convert('RGB').resize((90, 60), Image.BILINEAR)
    return mx.nd.array(ImageNormalize()(np.asarray(image)))


def _assert_close(ours, theirs, rel=1e-5):
    """Positive score maps equal element by element up to a relative error (scores span many decades)."""
    ours, theirs = ours.asnumpy(), theirs.asnumpy()
    assert ours.shape == theirs.shape
    assert np.isfinite(theirs).all() and theirs.min() > 0 and theirs.max() > theirs.min()
    np.testing.assert_allclose(ours, theirs, rtol=rel, atol=0)


def test_scaled_size_and_windows_follow_gluoncv_arithmetic():
    # spec 1.2: base 520 gives long sides 260, 390, 520, 650, 780, 910
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
    longs = [scaled_size(60, 90, BASE, s)[2] for s in ALL_SCALES]
    assert any(l <= CROP for l in longs) and any(l > CROP for l in longs)
    # at scale 1.25 the resized image is 60 x 90: its short side is below the crop, so it is padded first
    assert scaled_size(60, 90, BASE, 1.25)[:2] == (60, 90)


@pytest.fixture(scope='module')
def gluoncv_scores(gluoncv_fcn, real_image):
    """GluonCV MultiEvalModel scores (1, C, 60, 90) of the test image with all scales, per flip setting."""
    return {flip: GluonCVMultiEvalModel(gluoncv_fcn, NCLASS, [mx.cpu()], flip=flip,
                                        scales=list(ALL_SCALES))(real_image) for flip in (True, False)}


@pytest.mark.parametrize('flip', [True, False])
def test_equals_gluoncv_multievalmodel(gluoncv_fcn, real_image, gluoncv_scores, flip):
    theirs = gluoncv_scores[flip]
    ours = predict(gluoncv_fcn, real_image, NCLASS, base_size=BASE, crop_size=CROP, scales=ALL_SCALES, flip=flip)
    assert ours.shape == (NCLASS, 60, 90)
    _assert_close(ours, theirs[0])
    if not flip:
        # one crop per forward call (GluonCV's batching) gives the same numbers as all windows at once
        one_by_one = predict(gluoncv_fcn, real_image, NCLASS, base_size=BASE, crop_size=CROP, scales=ALL_SCALES,
                             flip=flip, max_batch=1)
        _assert_close(one_by_one, theirs[0])


def test_tall_image_equals_gluoncv(gluoncv_fcn, real_image):
    tall = real_image.transpose((0, 2, 1))       # (3, 90, 60): the height is the long side
    scales = (0.75, 1.5)
    theirs = GluonCVMultiEvalModel(gluoncv_fcn, NCLASS, [mx.cpu()], flip=True, scales=list(scales))(tall)
    ours = predict(gluoncv_fcn, tall, NCLASS, base_size=BASE, crop_size=CROP, scales=scales, flip=True)
    _assert_close(ours, theirs[0])


def test_deeplab_pooling_branch_equals_gluoncv(real_image):
    net = gluoncv_zoo.get_deeplab(dataset='pascal_voc', backbone='resnet50', pretrained=False,
                                  pretrained_base=False, base_size=BASE, crop_size=CROP, aux=False)
    _randomize(net, 1)
    scales = (0.75, 1.5)
    theirs = GluonCVMultiEvalModel(net, NCLASS, [mx.cpu()], flip=True, scales=list(scales))(real_image)
    ours = predict(net, real_image, NCLASS, base_size=BASE, crop_size=CROP, scales=scales, flip=True)
    _assert_close(ours, theirs[0])


def test_multievalmodel_parallel_forward_on_two_contexts(gluoncv_fcn, real_image):
    ctx_list = [mx.cpu(0), mx.cpu(1)]
    second = real_image.flip(axis=2)
    scales = [0.75, 1.25]
    theirs = GluonCVMultiEvalModel(gluoncv_fcn, NCLASS, ctx_list, flip=True, scales=scales)
    expected = theirs.parallel_forward([real_image, second])
    ours = MultiEvalModel(gluoncv_fcn, NCLASS, ctx_list, flip=True, scales=scales, base_size=BASE, crop_size=CROP)
    got = ours.parallel_forward([real_image, second])
    assert len(got) == 2
    for (g,), (e,) in zip(got, expected):
        assert g.context == e.context
        _assert_close(g, e)
    gluoncv_fcn.collect_params().reset_ctx(mx.cpu())


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


def test_softmax_fusion_sums_to_number_of_passes(any_size_net, gluoncv_fcn, real_image):
    scales = (0.5, 1.0, 1.5)
    for net, nclass, crop, flips in ((gluoncv_fcn, NCLASS, CROP, (True,)), (any_size_net, 5, None, (False, True))):
        for flip in flips:
            scores = predict(net, real_image, nclass, base_size=BASE, crop_size=crop, scales=scales, flip=flip,
                             fusion='softmax')
            total = scores.sum(axis=0).asnumpy()
            np.testing.assert_allclose(total, len(scales) * (2 if flip else 1), rtol=1e-5)


def test_whole_image_path_batches(any_size_net, real_image):
    images = mx.nd.stack(real_image, real_image.flip(axis=2), real_image * 0.5)
    batched = predict_whole(any_size_net, images)
    assert batched.shape == (3, 5, 60, 90)
    for i in range(3):
        single = predict_whole(any_size_net, images[i])
        np.testing.assert_allclose(batched[i].asnumpy(), single.asnumpy(), rtol=1e-5, atol=1e-5)
    # predict() at scale 1.0 of the image's own size, without crop, is exp(logits) in GluonCV fusion
    ours = predict(any_size_net, real_image, 5)
    np.testing.assert_allclose(ours.asnumpy(), predict_whole(any_size_net, real_image).exp().asnumpy(), rtol=1e-5)


def test_whole_image_scales_without_crop_resize_back(any_size_net, real_image):
    scores = predict(any_size_net, real_image, 5, base_size=45, scales=(1.0,))
    logits = any_size_net(mx.nd.contrib.BilinearResize2D(real_image.expand_dims(0), height=30, width=45))[0]
    expected = mx.nd.contrib.BilinearResize2D(logits.exp(), height=60, width=90)[0]
    _assert_close(scores, expected)


def test_parallel_predict_keeps_order_and_contexts(any_size_net, real_image):
    ctx_list = [mx.cpu(0), mx.cpu(1)]
    any_size_net.collect_params().reset_ctx(ctx_list)
    try:
        images = [real_image, real_image[:, :40, :50], real_image * 2]
        outs = parallel_predict(any_size_net, images, ctx_list, num_classes=5, scales=(0.5, 1.0), flip=True)
        for i, (image, out) in enumerate(zip(images, outs)):
            assert out.context == ctx_list[i % 2]
            expected = predict(any_size_net, image.as_in_context(ctx_list[i % 2]), 5, scales=(0.5, 1.0), flip=True)
            _assert_close(out, expected)
    finally:
        any_size_net.collect_params().reset_ctx(mx.cpu())


def test_segzoo_model_on_gluoncv_weights_equals_gluoncv(gluoncv_fcn, real_image, gluoncv_scores, tmp_path):
    from segzoo.model_zoo import get_segmentation_model
    path = str(tmp_path / 'fcn_resnet50_voc.params')
    gluoncv_fcn.save_parameters(path)
    ours_net = get_segmentation_model('fcn', dataset='pascal_voc', backbone='resnet50', aux=False, pretrained=path)
    ours_net.hybridize()
    theirs = gluoncv_scores[True]
    ours = predict(ours_net, real_image, NCLASS, base_size=BASE, crop_size=CROP, scales=ALL_SCALES, flip=True)
    _assert_close(ours, theirs[0], rel=1e-4)


def test_bad_input_is_rejected(any_size_net, real_image):
    with pytest.raises(ValueError, match='fusion'):
        predict(any_size_net, real_image, 5, fusion='mean')
    with pytest.raises(ValueError, match='one image'):
        predict(any_size_net, mx.nd.stack(real_image, real_image), 5)
    with pytest.raises(ValueError, match='scales is empty'):
        predict(any_size_net, real_image, 5, scales=())
    with pytest.raises(ValueError, match='outputs 5 classes, expected 21'):
        predict(any_size_net, real_image, 21)
