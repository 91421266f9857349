"""Losses against GluonCV's MixSoftmaxCrossEntropyLoss (autograd) and a numpy Composer dice."""
import numpy as np
import mxnet as mx
import pytest
from mxnet import autograd

from segzoo.loss import MixSoftmaxCrossEntropyLoss, SoftmaxCrossEntropy2D, SoftmaxDiceLoss

B, C, H, W = 3, 5, 7, 6


def _random_batch(seed, ignore_fraction=0.3, absent=()):
    rng = np.random.RandomState(seed)
    main = (rng.randn(B, C, H, W) * 3).astype(np.float32)
    aux = rng.randn(B, C, H, W).astype(np.float32)
    label = rng.randint(0, C, (B, H, W))
    for c in absent:
        label[label == c] = (c + 1) % C
    label[rng.rand(B, H, W) < ignore_fraction] = -1
    return main, aux, label.astype(np.float32)  # GluonCV's VOC masks are float32


def _run(loss, logits, label, hybridize=False):
    """Returns (per-sample loss, [grad of each logits array]) with head gradient 1 per sample."""
    if hybridize:
        loss.hybridize()
    arrays = [mx.nd.array(x) for x in logits]
    for x in arrays:
        x.attach_grad()
    with autograd.record():
        value = loss(*arrays, mx.nd.array(label))
    value.backward()
    return value.asnumpy(), [x.grad.asnumpy() for x in arrays]


def _log_softmax(x):
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _numpy_ce_per_sample(logits, label):
    """Per-sample summed CE over labelled pixels, and the chunk's labelled count (float64)."""
    valid = label >= 0
    safe = np.where(valid, label, 0).astype(np.int64)
    nll = -np.take_along_axis(_log_softmax(logits.astype(np.float64)), safe[:, None], axis=1)[:, 0]
    return (nll * valid).sum(axis=(1, 2)), valid.sum()


def _composer_dice(logits, label):
    """Composer DiceLoss(softmax=True, batch=True, ignore_absent_classes=True), one-hot with -1 dropped."""
    num_classes = logits.shape[1]
    x = logits.astype(np.float64)
    prob = np.exp(x - x.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    target = np.stack([(label == c) for c in range(num_classes)], axis=1).astype(np.float64)
    target_mask = target.sum(axis=1, keepdims=True) != 0
    axes = (0, 2, 3)
    intersection = (target * prob).sum(axis=axes)
    ground = target.sum(axis=axes)
    pred = (target_mask * prob).sum(axis=axes)
    dice = 1.0 - (2.0 * intersection + 1e-5) / (ground + pred + 1e-5)
    return dice[ground > 0].mean()


@pytest.mark.parametrize('aux_weight', [0.0, 0.2, 0.5, 1.0, 3.0])
@pytest.mark.parametrize('hybridize', [False, True])
def test_compat_gradients_equal_gluoncv(gluoncv, aux_weight, hybridize):
    main, aux, label = _random_batch(0)
    ref_value, ref_grads = _run(gluoncv.loss.MixSoftmaxCrossEntropyLoss(aux=True, aux_weight=aux_weight),
                                 [main, aux], label)
    value, grads = _run(MixSoftmaxCrossEntropyLoss(aux=True, aux_weight=aux_weight, gluoncv_compat=True),
                        [main, aux], label, hybridize)
    for grad, ref in zip(grads, ref_grads):
        np.testing.assert_array_equal(grad, ref)
    # GluonCV computes log(softmax); we use log_softmax for the value: equal to float32 rounding.
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)


def test_compat_without_aux_equals_gluoncv(gluoncv):
    main, _, label = _random_batch(1)
    ref_value, ref_grads = _run(gluoncv.loss.MixSoftmaxCrossEntropyLoss(aux=False), [main], label)
    value, grads = _run(MixSoftmaxCrossEntropyLoss(aux=False, gluoncv_compat=True), [main], label)
    np.testing.assert_array_equal(grads[0], ref_grads[0])
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)


def test_compat_value_divides_by_all_pixels():
    main, aux, label = _random_batch(2)
    value, _ = _run(MixSoftmaxCrossEntropyLoss(aux=True, aux_weight=0.5, gluoncv_compat=True),
                    [main, aux], label)
    main_sum, _ = _numpy_ce_per_sample(main, label)
    aux_sum, _ = _numpy_ce_per_sample(aux, label)
    np.testing.assert_allclose(value, (main_sum + 0.5 * aux_sum) / (H * W), rtol=1e-5)


@pytest.mark.parametrize('aux_weight', [0.0, 0.4, 1.0, 2.5])
def test_aux_weight_scales_aux_gradient(aux_weight):
    main, aux, label = _random_batch(3)
    _, compat = _run(MixSoftmaxCrossEntropyLoss(aux=True, aux_weight=aux_weight, gluoncv_compat=True),
                     [main, aux], label)
    _, grads = _run(MixSoftmaxCrossEntropyLoss(aux=True, aux_weight=aux_weight), [main, aux], label)
    np.testing.assert_allclose(grads[0], compat[0], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(grads[1], aux_weight * compat[1], rtol=1e-5, atol=1e-9)
    assert np.abs(compat[1]).sum() > 0


def test_value_is_normalised_by_chunk_valid_count():
    main, aux, label = _random_batch(4, ignore_fraction=0.5)
    label[0] = -1  # one sample fully ignored: its share is 0, the others are still divided by the chunk count
    value, _ = _run(MixSoftmaxCrossEntropyLoss(aux=True, aux_weight=0.4), [main, aux], label)
    main_sum, num_valid = _numpy_ce_per_sample(main, label)
    aux_sum, _ = _numpy_ce_per_sample(aux, label)
    np.testing.assert_allclose(value, (main_sum + 0.4 * aux_sum) / num_valid, rtol=1e-5)
    assert value[0] == 0


def test_ignored_pixels_get_zero_gradient():
    main, aux, label = _random_batch(5, ignore_fraction=0.4)
    ignored = (label == -1)[:, None].repeat(C, axis=1)
    for compat in (False, True):
        loss = MixSoftmaxCrossEntropyLoss(aux=True, aux_weight=0.5, gluoncv_compat=compat,
                                          dice_weight=0.0 if compat else 0.7)
        _, grads = _run(loss, [main, aux], label)
        for grad in grads:
            assert np.all(grad[ignored] == 0)
            assert np.abs(grad[~ignored]).sum() > 0


def test_ignored_pixels_do_not_change_the_loss():
    main, aux, label = _random_batch(6)
    loss = MixSoftmaxCrossEntropyLoss(aux=True, dice_weight=0.5)
    value, _ = _run(loss, [main, aux], label)
    rng = np.random.RandomState(0)
    ignored = label == -1
    main = main + ignored[:, None] * rng.randn(B, C, H, W).astype(np.float32) * 10
    value2, _ = _run(loss, [main, aux], label)
    np.testing.assert_allclose(value2, value, rtol=1e-6)


def test_dice_matches_composer_formula():
    main, _, label = _random_batch(7, ignore_fraction=0.2, absent=(2,))
    label[0, 0, 0] = -1
    assert not (label == 2).any() and (label == -1).any()
    value, _ = _run(SoftmaxDiceLoss(), [main], label)
    expected = _composer_dice(main, label)
    np.testing.assert_allclose(value, np.full(B, expected / B), rtol=1e-5)


def test_dice_gradient_matches_finite_differences():
    main, _, label = _random_batch(8, ignore_fraction=0.2, absent=(1,))
    _, grads = _run(SoftmaxDiceLoss(), [main], label)
    rng = np.random.RandomState(1)
    step = 1e-3
    for _ in range(5):
        index = tuple(rng.randint(0, n) for n in main.shape)
        plus, minus = main.astype(np.float64), main.astype(np.float64)
        plus[index] += step
        minus[index] -= step
        numeric = (_composer_dice(plus, label) - _composer_dice(minus, label)) / (2 * step)
        np.testing.assert_allclose(grads[0][index], numeric, rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize('hybridize', [False, True])
def test_combined_loss_weights(hybridize):
    main, aux, label = _random_batch(9, absent=(4,))
    loss = MixSoftmaxCrossEntropyLoss(aux=True, aux_weight=0.3, cross_entropy_weight=0.6, dice_weight=2.0)
    value, _ = _run(loss, [main, aux], label, hybridize)
    main_sum, num_valid = _numpy_ce_per_sample(main, label)
    aux_sum, _ = _numpy_ce_per_sample(aux, label)
    expected = (0.6 * main_sum + 0.3 * aux_sum) / num_valid + 2.0 * _composer_dice(main, label) / B
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_aux_gets_no_dice():
    main, aux, label = _random_batch(10)
    _, with_dice = _run(MixSoftmaxCrossEntropyLoss(aux=True, dice_weight=1.0), [main, aux], label)
    _, without = _run(MixSoftmaxCrossEntropyLoss(aux=True), [main, aux], label)
    np.testing.assert_array_equal(with_dice[1], without[1])
    assert not np.allclose(with_dice[0], without[0])


@pytest.mark.parametrize('compat', [False, True])
def test_fully_ignored_chunk_is_zero_and_finite(compat):
    main, aux, label = _random_batch(11)
    label[:] = -1
    loss = MixSoftmaxCrossEntropyLoss(aux=True, gluoncv_compat=compat, dice_weight=1.0)
    value, grads = _run(loss, [main, aux], label)
    np.testing.assert_array_equal(value, np.zeros(B, np.float32))
    for grad in grads:
        assert np.all(grad == 0)


def test_cross_entropy_block_sums_to_mean_over_valid_pixels():
    main, _, label = _random_batch(12)
    value, _ = _run(SoftmaxCrossEntropy2D(), [main], label)
    main_sum, num_valid = _numpy_ce_per_sample(main, label)
    np.testing.assert_allclose(value.sum(), main_sum.sum() / num_valid, rtol=1e-5)


def test_bad_usage_raises():
    main, aux, label = _random_batch(13)
    with pytest.raises(ValueError, match='expects 2 model output'):
        _run(MixSoftmaxCrossEntropyLoss(aux=True), [main], label)
    with pytest.raises(ValueError, match='expects 1 model output'):
        _run(MixSoftmaxCrossEntropyLoss(aux=False), [main, aux], label)
    with pytest.raises(ValueError, match='cross_entropy_weight'):
        MixSoftmaxCrossEntropyLoss(gluoncv_compat=True, cross_entropy_weight=0.5)
