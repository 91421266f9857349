"""Model speed: GluonCV's segmentation network versus segzoo's, side by side, on the same weights.

For each method (default ``deeplab`` and ``fcn``) on one backbone (default ``resnet50``, Pascal VOC's 21 classes):

* GluonCV's network is built with ``gluoncv.model_zoo.get_<method>(dataset='pascal_voc', backbone=...,
  pretrained=False, pretrained_base=False, aux=True, crop_size=S, base_size=S)``, initialised (backbone: MSRA,
  heads: GluonCV's own Uniform initialisation) and saved to a temporary ``.params`` file;
* segzoo's is built from that file with ``segzoo.get_model('<method>_<backbone>_voc', pretrained=PATH,
  pretrained_base=False)`` (``get_segmentation_model`` with the same arguments for the combinations that have no
  zoo name, e.g. ``deeplab_resnet50_voc``).

Before timing, the outputs are compared (inference mode, imperative, batch 1): at the crop size S for main and
auxiliary logits, and at an off-crop size (default 333x500) between segzoo's forward and GluonCV's imperative
``predict()`` (the only GluonCV path that accepts another size; its ``_up_kwargs`` are restored afterwards).
Rows of the table:

1. ``eval forward SxS``: batch 1, both networks ``hybridize(static_alloc=True, static_shape=True)`` (GluonCV's
   test.py ``--benchmark`` setting; GluonCV's network only runs at its crop size);
2. ``eval forward HxW``: segzoo's hybridized network at the off-crop size, which GluonCV's hybridized forward
   cannot do (n/a);
3. ``train step``: batch B at SxS, imperative like GluonCV's train.py (``autograd.record()``, forward, the
   loss -- ``gluoncv.loss.MixSoftmaxCrossEntropyLoss`` for GluonCV, ``segzoo.loss.MixSoftmaxCrossEntropyLoss``
   for segzoo, both with ``aux_weight=0.5`` -- ``backward``, ``gluon.Trainer('sgd').step(B)``).

Every measurement alternates between the two networks iteration by iteration so both see the same machine
load; ``mx.nd.waitall()`` is called before the clock starts and before it stops; the first ``--warmup``
iterations are not timed and each cell is the median of the timed ones. The ratio is GluonCV ms / segzoo ms
(above 1: segzoo is faster). Runs on CPU with MXNet's default OpenMP threads; prints the load average.

Usage::

    python benchmarks/model_speed.py [--methods deeplab fcn] [--backbone resnet50] [--crop-size 256]
                                     [--off-size 333 500] [--batch-size 2] [--eval-iters 6]
                                     [--train-iters 4] [--warmup 1]
"""
import argparse
import os
import sys
import tempfile
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

NUM_CLASSES = 21  # pascal_voc
AUX_WEIGHT = 0.5  # GluonCV train.py's --aux-weight default
SGD = {'learning_rate': 1e-3, 'momentum': 0.9, 'wd': 1e-4}  # GluonCV train.py's defaults


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--methods', nargs='+', default=['deeplab', 'fcn'], choices=['deeplab', 'fcn', 'psp'])
    p.add_argument('--backbone', default='resnet50', choices=['resnet50', 'resnet101', 'resnet152'])
    p.add_argument('--crop-size', type=int, default=256, help='S: GluonCV crop (and base) size, eval and train')
    p.add_argument('--off-size', type=int, nargs=2, default=[333, 500], metavar=('H', 'W'),
                   help='non-crop input size of the segzoo-only eval row')
    p.add_argument('--batch-size', type=int, default=2, help='B of the training step')
    p.add_argument('--eval-iters', type=int, default=6, help='timed eval forwards per network and size')
    p.add_argument('--train-iters', type=int, default=4, help='timed training steps per network')
    p.add_argument('--warmup', type=int, default=1, help='untimed iterations before each measurement')
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------- networks
def build_gluoncv(method, backbone, size, ctx):
    """GluonCV's network with every parameter initialised (heads by GluonCV itself, backbone MSRA)."""
    from gluoncv import model_zoo
    getter = {'deeplab': model_zoo.get_deeplab, 'fcn': model_zoo.get_fcn, 'psp': model_zoo.get_psp}[method]
    net = getter(dataset='pascal_voc', backbone=backbone, pretrained=False, pretrained_base=False, aux=True,
                 crop_size=size, base_size=size, ctx=ctx)
    for param in net.collect_params().values():
        if param._data is None and param._deferred_init == ():  # GluonCV leaves the random backbone alone
            param.initialize(ctx=ctx, default_init=mx.init.MSRAPrelu())
    net(mx.nd.zeros((1, 3, size, size), ctx=ctx))  # finishes deferred initialisation (convs without in_channels)
    return net


def build_segzoo(method, backbone, size, params_file, ctx):
    """segzoo's network loaded from `params_file` (GluonCV's keys)."""
    from segzoo.model_zoo import get_model, get_segmentation_model, list_models
    name = f'{method}_{backbone}_voc'
    if name in list_models():
        return get_model(name, pretrained=params_file, pretrained_base=False, ctx=ctx), name
    net = get_segmentation_model(method, dataset='pascal_voc', backbone=backbone, aux=True,
                                 pretrained=params_file, pretrained_base=False, ctx=ctx,
                                 base_size=size, crop_size=size)
    return net, f'get_segmentation_model({method!r}, backbone={backbone!r}, aux=True)'


def _up_kwargs_dicts(block, found=None):
    """Every ``_up_kwargs`` dict in `block` and its children (GluonCV's ``predict`` overwrites them)."""
    found = [] if found is None else found
    if isinstance(getattr(block, '_up_kwargs', None), dict):
        found.append(block._up_kwargs)
    for child in block._children.values():
        _up_kwargs_dicts(child, found)
    return found


def gluoncv_predict(net, x):
    """GluonCV's imperative any-size ``predict(x)`` (main logits), leaving the network's sizes as they were."""
    dicts = _up_kwargs_dicts(net)
    saved = [dict(d) for d in dicts]
    try:
        return net.predict(x)
    finally:
        for d, s in zip(dicts, saved):
            d.clear()
            d.update(s)


def _diff(a, b):
    """(max |a - b|, max |a|, fraction of pixels with the same argmax class)."""
    a, b = a.asnumpy(), b.asnumpy()
    same = float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))
    return float(np.abs(a - b).max()), float(np.abs(a).max()), same


def check_agreement(gcv, sz, size, off_size, ctx):
    """Output differences (inference mode, imperative) at the crop size and at the off-crop size."""
    x = mx.nd.random.normal(shape=(1, 3, size, size), ctx=ctx)
    out_g, out_s = gcv(x), sz(x)
    assert out_g[0].shape == out_s[0].shape == (1, NUM_CLASSES, size, size), (out_g[0].shape, out_s[0].shape)
    result = {f'main {size}x{size}': _diff(out_g[0], out_s[0]), f'aux {size}x{size}': _diff(out_g[1], out_s[1])}
    h, w = off_size
    x = mx.nd.random.normal(shape=(1, 3, h, w), ctx=ctx)
    out_s = sz(x)
    assert out_s[0].shape == (1, NUM_CLASSES, h, w), out_s[0].shape
    try:
        result[f'main {h}x{w} vs GluonCV predict()'] = _diff(gluoncv_predict(gcv, x), out_s[0])
    except Exception as err:  # GluonCV's predict is not tested by GluonCV for every method and size
        result[f'main {h}x{w} vs GluonCV predict()'] = f'GluonCV predict() failed: {type(err).__name__}: {err}'
    return result


# --------------------------------------------------------------------------------------------------- timing
def _timed(fn):
    mx.nd.waitall()
    start = time.perf_counter()
    fn()
    mx.nd.waitall()
    return 1000.0 * (time.perf_counter() - start)


def alternate(fns, warmup, iters):
    """Per-function lists of the timed milliseconds, the functions alternating iteration by iteration."""
    times = [[] for _ in fns]
    for i in range(warmup + iters):
        for fn, record in zip(fns, times):
            ms = _timed(fn)
            if i >= warmup:
                record.append(ms)
    return times


def train_step_fn(net, loss_fn, trainer, image, label):
    def step():
        with autograd.record():
            loss = loss_fn(*net(image), label)
        loss.backward()
        trainer.step(image.shape[0])
    return step


def bench_model(method, args, ctx):
    """Agreement numbers and table rows ``(model, measurement, gluoncv_ms_list or None, segzoo_ms_list)``."""
    size, (h, w), batch = args.crop_size, args.off_size, args.batch_size
    mx.random.seed(args.seed)
    gcv = build_gluoncv(method, args.backbone, size, ctx)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f'gluoncv_{method}_{args.backbone}_voc.params')
        gcv.save_parameters(path)
        sz, how = build_segzoo(method, args.backbone, size, path, ctx)
    model = f'{method}_{args.backbone}_voc'
    agreement = check_agreement(gcv, sz, size, args.off_size, ctx)

    rows = []
    # eval forward, hybridized with static memory, batch 1
    for net in (gcv, sz):
        net.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.random.normal(shape=(1, 3, size, size), ctx=ctx)
    hybrid_diff = _diff(gcv(x)[0], sz(x)[0])
    agreement[f'main {size}x{size} hybridized'] = hybrid_diff
    g_ms, s_ms = alternate([lambda: gcv(x), lambda: sz(x)], args.warmup, args.eval_iters)
    rows.append((model, f'eval forward {size}x{size}, batch 1', g_ms, s_ms))
    x_off = mx.nd.random.normal(shape=(1, 3, h, w), ctx=ctx)
    out = sz(x_off)
    assert out[0].shape == (1, NUM_CLASSES, h, w), out[0].shape
    (s_ms,) = alternate([lambda: sz(x_off)], args.warmup, args.eval_iters)
    rows.append((model, f'eval forward {h}x{w}, batch 1', None, s_ms))

    # training step, imperative (as GluonCV's train.py and segzoo's train.py run it)
    for net in (gcv, sz):
        net.hybridize(active=False)
    import gluoncv.loss
    from segzoo.loss import MixSoftmaxCrossEntropyLoss
    image = mx.nd.random.normal(shape=(batch, 3, size, size), ctx=ctx)
    label = mx.nd.random.randint(-1, NUM_CLASSES, shape=(batch, size, size), ctx=ctx).astype('int32')
    steps = [train_step_fn(gcv, gluoncv.loss.MixSoftmaxCrossEntropyLoss(aux=True, aux_weight=AUX_WEIGHT),
                           gluon.Trainer(gcv.collect_params(), 'sgd', dict(SGD)), image, label),
             train_step_fn(sz, MixSoftmaxCrossEntropyLoss(aux=True, aux_weight=AUX_WEIGHT),
                           gluon.Trainer(sz.collect_params(), 'sgd', dict(SGD)), image, label)]
    g_ms, s_ms = alternate(steps, args.warmup, args.train_iters)
    rows.append((model, f'train step {size}x{size}, batch {batch}', g_ms, s_ms))
    return how, agreement, rows


# ---------------------------------------------------------------------------------------------------- output
def format_table(rows):
    lines = [f'| {"model":<20} | {"measurement":<30} | {"GluonCV ms":>10} | {"segzoo ms":>10} | '
             f'{"ratio (GluonCV/segzoo)":>22} |',
             f'|{"-" * 22}|{"-" * 32}|{"-" * 12}|{"-" * 12}|{"-" * 24}|']
    for model, what, g_ms, s_ms in rows:
        s = np.median(s_ms)
        g = 'n/a' if g_ms is None else f'{np.median(g_ms):.1f}'
        ratio = 'n/a' if g_ms is None else f'{np.median(g_ms) / s:.2f}x'
        lines.append(f'| {model:<20} | {what:<30} | {g:>10} | {s:10.1f} | {ratio:>22} |')
    return '\n'.join(lines)


def format_spread(rows):
    lines = []
    for model, what, g_ms, s_ms in rows:
        for who, ms in (('GluonCV', g_ms), ('segzoo', s_ms)):
            if ms is not None:
                lines.append(f'  {model} {what} {who:<7}: min {min(ms):8.1f}  max {max(ms):8.1f}  '
                             f'(n={len(ms)})')
    return '\n'.join(lines)


def format_agreement(method, how, agreement):
    lines = [f'{method}: segzoo built with {how}']
    for what, value in agreement.items():
        if isinstance(value, str):
            lines.append(f'  {what:<42} {value}')
        else:
            diff, scale, same = value
            lines.append(f'  {what:<42} max |diff| {diff:.3g} (max |logit| {scale:.3g}, relative '
                         f'{diff / max(scale, 1e-30):.2g}), same argmax {100 * same:.2f}% of pixels')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    load = os.getloadavg() if hasattr(os, 'getloadavg') else (float('nan'),) * 3
    ctx = mx.cpu()
    start = time.perf_counter()
    rows, reports = [], []
    for method in args.methods:
        how, agreement, model_rows = bench_model(method, args, ctx)
        rows += model_rows
        reports.append(format_agreement(method, how, agreement))
    print('output agreement (GluonCV vs segzoo, same weights, inference mode, batch 1):')
    print('\n'.join(reports))
    print()
    print(format_table(rows))
    print('\nper-iteration spread (ms):')
    print(format_spread(rows))
    print(f'\nsettings: backbone {args.backbone}, crop {args.crop_size}, off-crop {args.off_size[0]}x'
          f'{args.off_size[1]} (segzoo only), train batch {args.batch_size}, median of {args.eval_iters} eval / '
          f'{args.train_iters} train iterations after {args.warmup} warm-up each; eval hybridized '
          f'(static_alloc, static_shape), training imperative; loss aux_weight {AUX_WEIGHT}, SGD {SGD}')
    print(f'device: CPU ({mx.cpu()}), MXNet {mx.__version__}, OMP_NUM_THREADS='
          f'{os.environ.get("OMP_NUM_THREADS", "unset (MXNet default)")}, {os.cpu_count()} CPUs')
    print(f'machine: load average before the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after '
          f'{os.getloadavg()[0]:.2f}; wall time {time.perf_counter() - start:.0f} s')
    print('command: python ' + ' '.join([os.path.relpath(__file__, os.getcwd())] +
                                        (sys.argv[1:] if argv is None else list(argv))))
    return rows


if __name__ == '__main__':
    main()
