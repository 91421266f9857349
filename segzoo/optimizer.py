"""SGD with decoupled weight decay, as MosaicML Composer's ``DecoupledSGDW``.

Paper: "Decoupled Weight Decay Regularization" (Loshchilov & Hutter, arXiv:1711.05101).

:func:`make_optimizer` builds it for ``train.py --optimizer sgdw`` (it is not registered with MXNet by name: pass the
instance to ``gluon.Trainer``). One step for a weight ``w`` with gradient ``g`` (already multiplied by
``rescale_grad`` and clipped):

    buf = momentum * buf + g                      # PyTorch's buffer form (no lr inside)
    w   = w * (1 - (lr_t / initial_lr) * wd) - lr_t * lr_mult * buf

where ``lr_t`` is the scheduled rate and ``wd = weight_decay * wd_mult``. The decay follows the *schedule* (the ratio
``lr_t / initial_lr``), not the rate itself, so 2e-5 means "shrink by 2e-5 per step at the peak rate". Composer
multiplies by ``lr / initial_lr`` of the parameter group, where an ``lr_mult`` cancels out; here it cancels too.
"""
import mxnet as mx
from mxnet import nd

__all__ = ['OPTIMIZERS', 'SGDW', 'DecoupledSGDW', 'make_optimizer']


class SGDW(mx.optimizer.Optimizer):
    """Momentum SGD whose weight decay is decoupled from the gradient step (Composer's DecoupledSGDW).

    Parameters
    ----------
    momentum : float
        Momentum factor (PyTorch buffer form, dampening 0, no Nesterov).
    initial_lr : float or None
        Rate the decay is normalised by; default ``learning_rate``.
    **kwargs
        ``learning_rate``, ``wd``, ``lr_scheduler``, ``rescale_grad``, ``clip_gradient``, ``multi_precision`` as for
        any ``mx.optimizer.Optimizer``.
    """

    def __init__(self, momentum=0.9, initial_lr=None, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum
        self.initial_lr = self.lr if initial_lr is None else initial_lr

    def create_state(self, index, weight):
        if self.momentum == 0:
            return None
        return nd.zeros(weight.shape, weight.context, dtype=weight.dtype, stype=weight.stype)

    def _schedule_ratio(self):
        scheduled = self.lr_scheduler(self.num_update) if self.lr_scheduler is not None else self.lr
        return scheduled / self.initial_lr if self.initial_lr else 1.0

    def update(self, index, weight, grad, state):
        self._update_count(index)
        lr = self._get_lr(index)
        wd = self._get_wd(index)
        grad = grad * self.rescale_grad
        if self.clip_gradient is not None:
            grad = nd.clip(grad, -self.clip_gradient, self.clip_gradient)
        if state is not None:
            state[:] = self.momentum * state + grad
            step = state
        else:
            step = grad
        if wd:
            weight[:] = weight * (1.0 - self._schedule_ratio() * wd)
        weight[:] = weight - lr * step


DecoupledSGDW = SGDW   # Composer's name

# train.py's --optimizer choices; the momentum ones take ``momentum``.
OPTIMIZERS = {'sgd': mx.optimizer.SGD, 'adam': mx.optimizer.Adam, 'sgdw': SGDW}
_WITH_MOMENTUM = ('sgd', 'sgdw')


def make_optimizer(name, learning_rate, momentum=0.9, **kwargs):
    """The optimizer ``name`` of :data:`OPTIMIZERS`, for ``gluon.Trainer(params, make_optimizer(...))``.

    ``momentum`` applies to sgd and sgdw only; ``kwargs`` (``wd``, ``lr_scheduler``, ``begin_num_update``,
    ``multi_precision`` ...) go to ``mx.optimizer.Optimizer``.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f'unknown optimizer {name!r}; valid: {", ".join(OPTIMIZERS)}')
    if name in _WITH_MOMENTUM:
        kwargs['momentum'] = momentum
    return OPTIMIZERS[name](learning_rate=learning_rate, **kwargs)
