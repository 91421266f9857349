"""segzoo.utils.parallel: batch splitting, threaded forwards, and SyncBN on 2 CPU contexts == BatchNorm on one."""
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn

from segzoo.utils.parallel import (MAX_WAITING_NORMS, check_engine_threads, engine_threads_needed, parallel_apply,
                                   split_batch)

CTX2 = [mx.cpu(0), mx.cpu(1)]


def _net(norm_layer, norm_kwargs):
    net = nn.HybridSequential()
    net.add(nn.Conv2D(6, 3, padding=1, in_channels=3), norm_layer(in_channels=6, **norm_kwargs),
            nn.Activation('relu'), nn.Conv2D(4, 1, in_channels=6))
    return net


def _init_like(net, ctx_list, values):
    net.initialize(ctx=ctx_list)
    for param, value in zip(net.collect_params().values(), values):
        param.set_data(mx.nd.array(value))


def _train_one_step(norm_layer, norm_kwargs, ctx_list, values, image, target, threaded):
    net = _net(norm_layer, norm_kwargs)
    _init_like(net, ctx_list, values)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-4},
                            kvstore='local' if len(ctx_list) > 1 else None)

    def forward_backward(x, y):
        with autograd.record():
            loss = ((net(x) - y) ** 2).sum()
        loss.backward()
        return loss

    losses = parallel_apply(forward_backward, list(zip(split_batch(image, ctx_list), split_batch(target, ctx_list))),
                            threaded=threaded)
    trainer.step(image.shape[0])
    outputs = [net(x).asnumpy() for x in split_batch(image, ctx_list)]      # inference: running statistics
    params = {k.split('_', 1)[1]: v.data(ctx_list[0]).asnumpy() for k, v in net.collect_params().items()}
    return sum(loss.asscalar() for loss in losses), params, np.concatenate(outputs)


def test_split_batch_uneven_and_too_small():
    parts = split_batch(mx.nd.arange(5), CTX2)
    assert [p.shape[0] for p in parts] == [3, 2]      # even_split=False: sizes differ by at most one
    assert parts[1].context == mx.cpu(1)
    with pytest.raises(ValueError, match='1 samples cannot be split over 2 devices'):
        split_batch(mx.nd.zeros((1, 3)), CTX2)


def test_parallel_apply_threads_keep_autograd_mode_and_reraise():
    def probe(x):
        return autograd.is_recording(), autograd.is_training(), x

    with autograd.record():
        results = parallel_apply(probe, [(1,), (2,)], threaded=True)
    assert results == [(True, True, 1), (True, True, 2)]
    assert parallel_apply(probe, [(1,), (2,)], threaded=True) == [(False, False, 1), (False, False, 2)]

    def fail(x):
        raise KeyError(f'device {x}')

    with pytest.raises(KeyError, match='device'):
        parallel_apply(fail, [(0,), (1,)], threaded=True)


def test_syncbn_two_contexts_equals_batchnorm_on_whole_batch():
    """One SGD step: SyncBN over 2 CPU devices (threaded forwards) == BatchNorm on one device, whole batch.

    Tolerance 1e-5 (relative) / 1e-6 (absolute) on the parameters: the only differences are float32 summation
    orders (per-device partial sums of the statistics and of the gradients). The outputs after the step reach a
    few hundred, where those rounding differences reach ~1e-6 of the largest output, so they are compared with an
    absolute tolerance of 1e-5 x their largest magnitude.
    """
    rng = np.random.RandomState(0)
    image = mx.nd.array(rng.randn(4, 3, 8, 8))
    target = mx.nd.array(rng.randn(4, 4, 8, 8))
    reference = _net(nn.BatchNorm, {})
    reference.initialize(mx.init.Xavier(), ctx=mx.cpu())
    values = [p.data().asnumpy() + (0.1 * rng.randn(*p.shape) if 'gamma' in k or 'beta' in k else 0)
              for k, p in reference.collect_params().items()]

    loss_bn, params_bn, out_bn = _train_one_step(nn.BatchNorm, {}, [mx.cpu()], values, image, target, False)
    loss_sync, params_sync, out_sync = _train_one_step(mx.gluon.contrib.nn.SyncBatchNorm, {'num_devices': 2},
                                                       CTX2, values, image, target, True)
    assert loss_sync == pytest.approx(loss_bn, rel=1e-5)
    assert sorted(params_bn) == sorted(params_sync)
    for key in params_bn:
        np.testing.assert_allclose(params_sync[key], params_bn[key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(out_sync, out_bn, rtol=1e-5, atol=1e-5 * np.abs(out_bn).max())
    # and plain BatchNorm per device would differ (statistics of half batches): the test can fail
    loss_local, _, _ = _train_one_step(nn.BatchNorm, {}, CTX2, values, image, target, False)
    assert abs(loss_local - loss_bn) > 1e-3


def test_engine_threads_rule_and_guard(monkeypatch):
    """SyncBN over N CPU contexts needs MAX_WAITING_NORMS * (N - 1) + 1 CPU engine workers (parallel branches wait
    at once); with fewer, the guard exits instead of deadlocking. conftest.py starts the tests' engine with enough."""
    assert engine_threads_needed(CTX2, syncbn=True) == MAX_WAITING_NORMS + 1
    assert engine_threads_needed([mx.cpu(i) for i in range(3)], syncbn=True) == 2 * MAX_WAITING_NORMS + 1
    assert engine_threads_needed(CTX2, syncbn=False) == 1
    assert engine_threads_needed([mx.cpu(0)], syncbn=True) == 1
    assert engine_threads_needed([mx.gpu(0), mx.gpu(1)], syncbn=True) == 1      # GPUs have their own workers
    assert int(os.environ['MXNET_CPU_WORKER_NTHREADS']) >= engine_threads_needed(CTX2, syncbn=True)
    needed = MAX_WAITING_NORMS + 1
    monkeypatch.setenv('MXNET_CPU_WORKER_NTHREADS', str(needed - 1))
    with pytest.raises(SystemExit, match=f'--syncbn on 2 CPU contexts needs MXNET_CPU_WORKER_NTHREADS >= {needed}'):
        check_engine_threads(CTX2, syncbn=True)
    check_engine_threads(CTX2, syncbn=False)
    monkeypatch.setenv('MXNET_CPU_WORKER_NTHREADS', str(needed))
    check_engine_threads(CTX2, syncbn=True)
