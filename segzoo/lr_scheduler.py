"""Per-iteration learning-rate schedules with GluonCV's iteration maths (poly, cosine, linear warm-up).

Poly decay is the schedule of DeepLab ("DeepLab: Semantic Image Segmentation with Deep Convolutional Nets,
Atrous Convolution, and Fully Connected CRFs", arXiv:1606.00915); cosine decay is SGDR's ("SGDR: Stochastic Gradient
Descent with Warm Restarts", arXiv:1608.03983) without restarts.

The numbers equal ``gluoncv.utils.LRScheduler`` / ``LRSequential`` (``gluoncv/utils/lr_scheduler.py``; tested
against them):

* MXNet's optimizer increments ``num_update`` *before* it asks for the rate, so the first step reads ``n = 1``.
* A phase of ``niters`` iterations starting at ``offset`` uses ``T = clamp(n - offset, 0, niters - 1)`` and
  ``r = T / (niters - 1)``: poly ``end + (start - end) * (1 - r) ** power``, linear ``end + (start - end) * (1 - r)``,
  cosine ``end + (start - end) * (1 + cos(pi * r)) / 2``.
* A sequence clamps ``n`` to ``total - 1`` and hands it to the first phase that ends after ``n``; a zero-length
  phase (no warm-up) is skipped.

One deliberate difference: a one-iteration phase (``niters == 1``) keeps its start rate, where GluonCV divides by
zero.

``alpha_f`` (Composer's name) is the fraction of the peak rate the decay ends at (0 in GluonCV). With
``timing='composer'`` the same shapes follow Composer's stateless schedulers instead (``composer/optim/scheduler.py``):
the step after ``t`` finished steps uses ``tau = t / T``, so the first step runs at the peak rate and the last one
just above ``alpha_f`` (:class:`ComposerScheduler`).
"""
from math import cos, pi

from mxnet import lr_scheduler as _mx_lr_scheduler

__all__ = ['IterationScheduler', 'SequentialScheduler', 'ComposerScheduler', 'get_lr_scheduler', 'TIMINGS']

MODES = ('constant', 'linear', 'poly', 'cosine')
TIMINGS = ('gluoncv', 'composer')


def _decay_shape(mode, ratio, power):
    """Fraction of the decay still left at ``ratio`` of a phase (0: its start, 1: its end)."""
    if mode == 'constant':
        return 1.0
    if mode == 'linear':
        return 1.0 - ratio
    if mode == 'poly':
        return (1.0 - ratio) ** power
    return (1.0 + cos(pi * ratio)) / 2.0


class IterationScheduler(_mx_lr_scheduler.LRScheduler):
    """One phase of ``niters`` updates from ``start_lr`` to ``end_lr`` (``mode`` of :data:`MODES`), starting at
    update count ``offset`` (set by :class:`SequentialScheduler`); ``power`` is the poly exponent."""

    def __init__(self, mode, start_lr, end_lr=0.0, niters=1, offset=0, power=0.9):
        super().__init__(base_lr=start_lr)
        if mode not in MODES:
            raise ValueError(f'unknown lr schedule mode {mode!r}; valid: {", ".join(MODES)}')
        if niters < 0:
            raise ValueError(f'niters must be >= 0, got {niters}')
        self.mode = mode
        self.start_lr = start_lr
        self.end_lr = start_lr if mode == 'constant' else end_lr
        self.niters = niters
        self.offset = offset
        self.power = power

    def factor(self, num_update):
        """Fraction of ``start_lr - end_lr`` still left at update ``num_update``."""
        last = self.niters - 1
        t = min(max(num_update - self.offset, 0), max(last, 0))
        return _decay_shape(self.mode, t / last if last > 0 else 0.0, self.power)

    def __call__(self, num_update):
        return self.end_lr + (self.start_lr - self.end_lr) * self.factor(num_update)


class SequentialScheduler(_mx_lr_scheduler.LRScheduler):
    """``phases`` (IterationScheduler) one after another, e.g. linear warm-up then poly decay; their ``offset`` is
    overwritten. ``base_lr`` is the peak rate (what ``mx.optimizer.Optimizer`` compares with its ``learning_rate``;
    default: the start of the last phase)."""

    def __init__(self, phases, base_lr=None):
        if not phases:
            raise ValueError('SequentialScheduler needs at least one phase')
        super().__init__(base_lr=phases[-1].base_lr if base_lr is None else base_lr)
        self.phases = list(phases)
        self.ends = []
        total = 0
        for phase in self.phases:
            phase.offset = total
            total += phase.niters
            self.ends.append(total)
        self.total = total

    def __call__(self, num_update):
        num_update = min(num_update, self.total - 1)
        for phase, end in zip(self.phases, self.ends):
            if end > num_update:
                return phase(num_update)
        return self.phases[-1](num_update)


class ComposerScheduler(_mx_lr_scheduler.LRScheduler):
    """Composer's per-batch schedule: ``lr * alpha(t)`` where ``t`` counts the steps finished before this one.

    ``alpha(t) = t / t_w`` during a warm-up of ``t_w`` steps, then ``alpha_f + (1 - alpha_f) * f(tau)`` with
    ``tau = clamp((t - t_w) / (total - t_w), 0, 1)`` and ``f = (1 - tau) ** power`` (poly), ``(1 + cos(pi tau)) / 2``
    (cosine), ``1 - tau`` (linear) or ``1`` (constant): Composer's ``PolynomialScheduler``,
    ``CosineAnnealing(WithWarmup)Scheduler`` and ``LinearScheduler`` with ``t_max='1dur'``.
    """

    def __init__(self, mode, lr, total, warmup=0, power=0.9, alpha_f=0.0):
        super().__init__(base_lr=lr)
        if mode not in MODES:
            raise ValueError(f'unknown lr schedule mode {mode!r}; valid: {", ".join(MODES)}')
        self.mode, self.lr, self.total, self.warmup, self.power, self.alpha_f = mode, lr, total, warmup, power, alpha_f

    def __call__(self, num_update):
        t = max(num_update - 1, 0)          # MXNet counts the current step: num_update is 1 at the first one
        if t < self.warmup:
            return self.lr * t / self.warmup
        tau = min(max((t - self.warmup) / max(self.total - self.warmup, 1), 0.0), 1.0)
        return self.lr * (self.alpha_f + (1.0 - self.alpha_f) * _decay_shape(self.mode, tau, self.power))


def get_lr_scheduler(mode, lr, epochs, iters_per_epoch, warmup_epochs=0, power=0.9, alpha_f=0.0, timing='gluoncv'):
    """GluonCV train.py's schedule: linear warm-up 0 -> ``lr`` over ``warmup_epochs``, then ``mode`` decay ``lr`` ->
    ``alpha_f * lr`` until ``epochs`` (warm-up included), with GluonCV's or Composer's ``timing``.

    ``lr`` is the peak rate before any ``lr_mult``; ``power`` the poly exponent (0.9 in every GluonCV recipe);
    ``alpha_f`` 0.01 in Composer's typical ADE20K recipe. Returns a callable ``num_update -> lr`` for
    ``mx.optimizer.Optimizer(lr_scheduler=...)``.
    """
    if warmup_epochs > epochs:
        raise ValueError(f'--warmup-epochs {warmup_epochs} exceeds --epochs {epochs}')
    if timing not in TIMINGS:
        raise ValueError(f'unknown lr timing {timing!r}; valid: {", ".join(TIMINGS)}')
    if timing == 'composer':
        return ComposerScheduler(mode, lr, epochs * iters_per_epoch, warmup_epochs * iters_per_epoch, power, alpha_f)
    warmup = IterationScheduler('linear', 0.0, lr, niters=warmup_epochs * iters_per_epoch)
    decay = IterationScheduler(mode, lr, alpha_f * lr, niters=(epochs - warmup_epochs) * iters_per_epoch, power=power)
    return SequentialScheduler([warmup, decay], base_lr=lr)
