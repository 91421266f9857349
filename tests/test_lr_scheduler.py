"""segzoo.lr_scheduler against GluonCV's LRScheduler/LRSequential (the oracle), and the optimizer's use of it."""
import math

import mxnet as mx
import pytest

from segzoo.lr_scheduler import IterationScheduler, SequentialScheduler, get_lr_scheduler


def _gluoncv_schedule(gluoncv, mode, lr, epochs, iters, warmup, power):
    """What GluonCV's scripts/segmentation/train.py builds: linear warm-up, then the schedule."""
    return gluoncv.utils.LRSequential([
        gluoncv.utils.LRScheduler('linear', base_lr=0, target_lr=lr, nepochs=warmup, iters_per_epoch=iters),
        gluoncv.utils.LRScheduler(mode, base_lr=lr, nepochs=epochs - warmup, iters_per_epoch=iters, power=power),
    ])


@pytest.mark.parametrize('mode,epochs,iters,warmup,power', [
    ('poly', 5, 7, 0, 0.9),
    ('poly', 4, 3, 1, 0.9),
    ('cosine', 3, 5, 0, 0.9),
    ('cosine', 6, 4, 2, 0.9),
    ('poly', 2, 10, 0, 2.0),
])
def test_matches_gluoncv(gluoncv, mode, epochs, iters, warmup, power):
    ours = get_lr_scheduler(mode, 0.01, epochs, iters, warmup_epochs=warmup, power=power)
    theirs = _gluoncv_schedule(gluoncv, mode, 0.01, epochs, iters, warmup, power)
    # n = 0 .. total + 3 covers the warm-up, the decay, both boundaries and the clamping past the end.
    for n in range(epochs * iters + 4):
        assert ours(n) == pytest.approx(theirs(n), rel=1e-12, abs=1e-15), n


def test_first_and_last_steps_by_hand():
    lr, epochs, iters = 0.001, 2, 5
    schedule = get_lr_scheduler('poly', lr, epochs, iters)
    total = epochs * iters
    assert schedule(1) == pytest.approx(lr * (1 - 1 / (total - 1)) ** 0.9)   # the optimizer's first step is n=1
    assert schedule(total - 1) == 0.0 and schedule(total) == 0.0             # the last two steps get lr 0


def test_single_iteration_phase_keeps_start_rate():
    # GluonCV divides by zero here (niters - 1 == 0); segzoo keeps the start rate.
    assert IterationScheduler('poly', 0.1, 0.0, niters=1)(1) == 0.1
    assert get_lr_scheduler('poly', 0.1, 1, 1)(1) == 0.1


def test_bad_arguments():
    with pytest.raises(ValueError, match='unknown lr schedule mode'):
        IterationScheduler('exp', 0.1)
    with pytest.raises(ValueError, match='warmup'):
        get_lr_scheduler('poly', 0.1, 2, 3, warmup_epochs=3)
    with pytest.raises(ValueError):
        SequentialScheduler([])


def test_trainer_reads_schedule_at_incremented_update_count(gluoncv):
    """Through gluon.Trainer: step k (1-based) uses lr(k), as with GluonCV's schedule."""
    param = mx.gluon.Parameter('w', shape=(1,), init=mx.init.One())
    param.initialize(ctx=mx.cpu())
    ours = get_lr_scheduler('poly', 0.5, 2, 3)
    theirs = _gluoncv_schedule(gluoncv, 'poly', 0.5, 2, 3, 0, 0.9)
    trainer = mx.gluon.Trainer([param], 'sgd', {'learning_rate': 0.5, 'lr_scheduler': ours}, kvstore=None)
    for k in range(1, 7):
        before = param.data().asscalar()
        with mx.autograd.record():
            loss = param.data() * 1.0
        loss.backward()
        trainer.step(1)
        # plain SGD, gradient 1: the weight moves by exactly the step's lr
        assert before - param.data().asscalar() == pytest.approx(theirs(k), rel=1e-5, abs=1e-7)
        assert math.isclose(trainer.learning_rate, ours(k))


@pytest.mark.parametrize('mode', ['poly', 'cosine'])
def test_alpha_f_ends_the_gluoncv_decay_at_that_fraction(mode):
    """GluonCV's iteration maths with a floor: lr * (alpha_f + (1 - alpha_f) * f(r)), r = clamp(n, 0, N-1) / (N-1)."""
    lr, alpha_f, epochs, iters = 0.01, 0.01, 3, 4
    total = epochs * iters
    schedule = get_lr_scheduler(mode, lr, epochs, iters, alpha_f=alpha_f)
    for n in range(total + 3):
        r = min(n, total - 1) / (total - 1)
        shape = (1 - r) ** 0.9 if mode == 'poly' else (1 + math.cos(math.pi * r)) / 2
        assert schedule(n) == pytest.approx(lr * (alpha_f + (1 - alpha_f) * shape), rel=1e-12), n
    assert schedule(total) == pytest.approx(alpha_f * lr)


@pytest.mark.parametrize('mode,warmup_epochs', [('poly', 0), ('cosine', 0), ('poly', 1), ('cosine', 2)])
def test_composer_timing_matches_composer_formulas(mode, warmup_epochs):
    """Composer's stateless schedulers (t_max='1dur'): the step after t finished steps uses
    alpha = t / t_w in the warm-up, else alpha_f + (1 - alpha_f) * f(tau), tau = (t - t_w) / (T - t_w) in [0, 1]."""
    lr, alpha_f, epochs, iters, power = 0.02, 0.01, 4, 5, 0.9
    total, t_w = epochs * iters, warmup_epochs * iters
    schedule = get_lr_scheduler(mode, lr, epochs, iters, warmup_epochs=warmup_epochs, power=power, alpha_f=alpha_f,
                                timing='composer')
    for n in range(1, total + 3):                      # MXNet's update count: n = t + 1
        t = n - 1
        if t < t_w:
            expected = lr * t / t_w
        else:
            tau = min((t - t_w) / (total - t_w), 1.0)
            shape = (1 - tau) ** power if mode == 'poly' else (1 + math.cos(math.pi * tau)) / 2
            expected = lr * (alpha_f + (1 - alpha_f) * shape)
        assert schedule(n) == pytest.approx(expected, rel=1e-12, abs=1e-15), n
    if warmup_epochs == 0:
        assert schedule(1) == lr                                        # Composer's first step: the peak rate
        assert schedule(total) > alpha_f * lr == pytest.approx(schedule(total + 1))   # floor reached after the end


def test_unknown_timing_is_refused():
    with pytest.raises(ValueError, match="unknown lr timing 'torch'"):
        get_lr_scheduler('poly', 0.1, 2, 3, timing='torch')
