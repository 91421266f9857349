"""Per-iteration learning-rate schedules with GluonCV's iteration maths (poly, cosine, linear warm-up).

Poly decay is the schedule of DeepLab ("DeepLab: Semantic Image Segmentation with Deep Convolutional Nets,
Atrous Convolution, and Fully Connected CRFs", arXiv:1606.00915); cosine decay is SGDR's ("SGDR: Stochastic Gradient
Descent with Warm Restarts", arXiv:1608.03983) without restarts.

The numbers equal ``gluoncv.utils.LRScheduler`` / ``LRSequential`` (tested against them):

* MXNet's optimizer increments ``num_update`` *before* it asks for the rate, so the first step reads ``n = 1``.
* A phase of ``niters`` iterations starting at ``offset`` uses ``T = clamp(n - offset, 0, niters - 1)`` and
  ``r = T / (niters - 1)``: poly ``end + (start - end) * (1 - r) ** power``, linear ``end + (start - end) * (1 - r)``,
  cosine ``end + (start - end) * (1 + cos(pi * r)) / 2``.
* A sequence clamps ``n`` to ``total - 1`` and hands it to the first phase that ends after ``n``; a zero-length
  phase (no warm-up) is skipped.

One deliberate difference: a one-iteration phase (``niters == 1``) keeps its start rate, where GluonCV divides by
zero.
"""
from math import cos, pi

from mxnet import lr_scheduler as _mx_lr_scheduler

__all__ = ['IterationScheduler', 'SequentialScheduler', 'get_lr_scheduler']

MODES = ('constant', 'linear', 'poly', 'cosine')


class IterationScheduler(_mx_lr_scheduler.LRScheduler):
    """One phase of a schedule, indexed by the optimizer's update count.

    Parameters
    ----------
    mode : {'constant', 'linear', 'poly', 'cosine'}
    start_lr : float
        Rate at the first iteration of the phase.
    end_lr : float
        Rate reached at the phase's last iteration (ignored for 'constant').
    niters : int
        Length of the phase in iterations.
    offset : int
        Update count at which the phase starts (set by :class:`SequentialScheduler`).
    power : float
        Exponent of the poly decay.
    """

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
        ratio = t / last if last > 0 else 0.0
        if self.mode == 'constant':
            return 1.0
        if self.mode == 'linear':
            return 1.0 - ratio
        if self.mode == 'poly':
            return (1.0 - ratio) ** self.power
        return (1.0 + cos(pi * ratio)) / 2.0

    def __call__(self, num_update):
        return self.end_lr + (self.start_lr - self.end_lr) * self.factor(num_update)


class SequentialScheduler(_mx_lr_scheduler.LRScheduler):
    """Phases run one after another (e.g. linear warm-up, then poly decay).

    Parameters
    ----------
    phases : list of IterationScheduler
        Their ``offset`` is overwritten with the cumulative length of the phases before them.
    base_lr : float, optional
        The peak learning rate (what ``mx.optimizer.Optimizer`` compares with its ``learning_rate``); default: the
        start of the last phase.
    """

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


def get_lr_scheduler(mode, lr, epochs, iters_per_epoch, warmup_epochs=0, power=0.9):
    """GluonCV train.py's schedule: linear warm-up 0 -> ``lr``, then ``mode`` decay ``lr`` -> 0.

    Parameters
    ----------
    mode : {'poly', 'cosine', 'linear', 'constant'}
    lr : float
        Peak (base) learning rate, before any per-parameter ``lr_mult``.
    epochs : int
        Total epochs, warm-up included.
    iters_per_epoch : int
        Optimizer steps per epoch.
    warmup_epochs : int
    power : float
        Poly exponent (0.9 in every GluonCV recipe).

    Returns
    -------
    SequentialScheduler
        Callable ``num_update -> lr``, for ``mx.optimizer.Optimizer(lr_scheduler=...)``.
    """
    if warmup_epochs > epochs:
        raise ValueError(f'--warmup-epochs {warmup_epochs} exceeds --epochs {epochs}')
    warmup = IterationScheduler('linear', 0.0, lr, niters=warmup_epochs * iters_per_epoch)
    decay = IterationScheduler(mode, lr, 0.0, niters=(epochs - warmup_epochs) * iters_per_epoch, power=power)
    return SequentialScheduler([warmup, decay], base_lr=lr)
