"""One table, segzoo against GluonCV in the same run on the same machine: latency per precision, accuracy of each
precision on a trained model, multi-scale evaluation, training step, data pipeline, training memory and GFLOP/s.

Rows (each with GluonCV's figure, segzoo's, and GluonCV / segzoo where both exist; above 1 means segzoo is faster):

* **latency**, DeepLabV3-ResNet101 480x480 batch 1, random weights (GluonCV's initialisation, saved and loaded by
  segzoo, so both networks hold the same numbers; outputs checked equal first). GluonCV: its network hybridized with
  ``static_alloc/static_shape`` (its test.py ``--benchmark`` setting, aux head included). segzoo: the same Segmentor
  (aux included), then ``segzoo.deploy`` graphs of the main output only: fp32, fused, bf16, int8 (naive
  calibration on N(0, 1) images: ranges do not change speed). Ratios of the deploy rows are against GluonCV FP32.
  The networks alternate call by call so they share the machine load; median of ``--iters``.
* **accuracy** of each precision against FP32 on a *trained* model: the tiny-backbone DeepLabV3 of ``make demo``'s
  recipe, trained here once for ``--train-epochs`` (kept under ``runs/benchmark/``) unless ``--weights`` is given,
  scored at its training scale on all 45 bundled images (30 training, 15 held out); argmax agreement with FP32 and
  the mIoU change on each group. INT8 calibrates on 3 batches of 8 training crops. A testval pass at every image's
  own size times each graph's per-size set-up.
* **multi-scale eval** (scales 0.75/1/1.25 + flip, base = crop = 256) on DeepLabV3-ResNet50, same weights: GluonCV's
  MultiEvalModel as its test.py runs it (not hybridized) and hybridized, against segzoo's fp32 deploy graph (what
  test.py runs) and its fused, bf16 and int8 graphs.
* **train step** (DeepLabV3-ResNet50, batch 2, crop 256): each framework's own training loop, checked to be the same
  computation (one step from the same weights and batch); peak RSS of training in a fresh process per framework.
* **data pipeline**: ``benchmarks/data_pipeline.py``'s two loaders (train mode, crop 480), 12 alternating epochs
  (an epoch of the bundled images takes 0.2-0.4 s, so a few epochs gave ratios 1.5-2.4x from run to run).
* **GFLOP/s**: convolution FLOPs of the R101 graphs (only the taps that read inside the map) / latency, against a
  conv peak measured in the same run: the fastest of a few of the network's conv shapes, chained, in FP32 and INT8.

Usage::

    nice python benchmarks/run.py [--iters 3] [--train-epochs 300] [--weights PATH] [--json out.json]
"""
import argparse
import ast
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import mxnet as mx
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))

import data_pipeline  # noqa: E402  (benchmarks/ helpers: GluonCV and segzoo loaders)
import model_speed  # noqa: E402  (benchmarks/ helpers: same-weight networks, interleaved timing)
from segzoo import deploy  # noqa: E402

VOC_MINI = os.path.join(REPO, 'segzoo', 'sample_data', 'voc_mini')
DEMO_MODEL = ['--model', 'deeplab', '--backbone', 'resnet_tiny', '--aux', '--dataset', 'pascal_voc', '--no-cuda']
DEMO_SIZE = 96   # make demo's base and crop size: the trained model's scale
MS_SCALES = (0.75, 1.0, 1.25)
R50_SIZE = 256   # crop (and base) size of the ResNet-50 rows
TRAIN_STEPS, TRAIN_TIMINGS = 3, 5   # consecutive training steps per timing; timings per framework
PIPELINE_EPOCHS = 12   # timed epochs per data pipeline, alternating
SCHEDULE_EPOCHS = 50   # both training loops: poly lr schedule over 50 epochs of one step (GluonCV's default epochs)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--iters', type=int, default=3, help='timed latency calls per network (after 1 warm-up)')
    p.add_argument('--size', type=int, default=480, help='latency input size (square)')
    p.add_argument('--weights', default=None, help="trained tiny DeepLabV3 .params (default: trained here, once)")
    p.add_argument('--train-epochs', type=int, default=300, help="epochs of make demo's recipe for that model")
    p.add_argument('--json', default=None, help='also write the rows as JSON')
    p.add_argument('--train-rss', choices=('gluoncv', 'segzoo'), default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def median_ms(times):
    return float(np.median(times))


# --------------------------------------------------------------------------------------------- latency, FLOPs
def _taps_inside(size, out, kernel, stride, pad, dilation):
    """Sum over the kernel taps along one axis of the number of outputs at which the tap reads inside the input."""
    return sum(1 for k in range(kernel) for o in range(out) if 0 <= o * stride + k * dilation - pad < size)


def conv_gflop(net, shape, outputs='main'):
    """Convolution GFLOP (2 x multiply-adds) of `net`'s graph (``outputs='main'``: the main output's only; 'all':
    with the aux head) at input `shape`, counting only the taps that read inside the input (a rate-36 3x3 conv on
    a 32x32 map does 1 tap's work, not 9; oneDNN skips the rest)."""
    sym, _, _ = deploy.to_symbol(net, outputs=outputs)
    internals = sym.get_internals()
    arg_shapes, out_shapes, _ = internals.infer_shape(data=shape)
    shapes = dict(zip(internals.list_arguments(), arg_shapes))
    shapes.update(zip(internals.list_outputs(), out_shapes))
    nodes = json.loads(sym.tojson())['nodes']

    def shape_of(entry):
        node = nodes[entry[0]]
        return shapes[node['name'] if node['op'] == 'null' else f'{node["name"]}_output']
    total = 0
    for node in nodes:
        if node['op'] != 'Convolution':
            continue
        attrs = node['attrs']
        kernel, stride, pad, dilate = (ast.literal_eval(attrs.get(key, default)) for key, default in
                                       (('kernel', '(1, 1)'), ('stride', '(1, 1)'), ('pad', '(0, 0)'),
                                        ('dilate', '(1, 1)')))
        data, weight, out = shape_of(node['inputs'][0]), shape_of(node['inputs'][1]), shapes[f'{node["name"]}_output']
        taps = [_taps_inside(data[2 + a], out[2 + a], kernel[a], stride[a], pad[a], dilate[a]) for a in (0, 1)]
        total += 2 * out[0] * weight[0] * weight[1] * taps[0] * taps[1]
    return total / 1e9


# (channels, kernel, dilation, size): convolutions like those the ResNet-101 graph runs most (at 480: 60x60 maps)
PEAK_CONVS = ((512, 3, 4, 60), (256, 3, 2, 60), (1024, 1, 1, 60))
PEAK_CHAIN = 3   # convs (each + ReLU) chained per measurement: INT8 stays int8 between them, as in the network


def conv_peak(iters):
    """(FP32, INT8) GFLOP/s of the fastest of PEAK_CONVS, each as a chain of PEAK_CHAIN conv + ReLU at batch 1
    (oneDNN; the INT8 chain calibrated on a ReLU'd input, so u8s8 kernels as inside the network)."""
    best = [0.0, 0.0]
    for channels, kernel, dilation, size in PEAK_CONVS:
        pad = dilation * (kernel - 1) // 2
        chain = mx.gluon.nn.HybridSequential()
        for _ in range(PEAK_CHAIN):
            chain.add(mx.gluon.nn.Conv2D(channels, kernel, padding=pad, dilation=dilation, in_channels=channels,
                                         use_bias=False), mx.gluon.nn.Activation('relu'))
        chain.initialize(mx.init.Xavier())
        x = mx.nd.random.normal(shape=(1, channels, size, size)).relu()
        int8 = deploy.quantize(chain, [x], calib_mode='naive')
        chain.hybridize(static_alloc=True, static_shape=True)
        times = model_speed.alternate([lambda: chain(x), lambda: int8(x)], 2, max(iters, 5))
        gflop = PEAK_CHAIN * 2 * channels * channels * _taps_inside(size, size, kernel, 1, pad, dilation) ** 2 / 1e9
        best = [max(b, gflop / (median_ms(ms) / 1000)) for b, ms in zip(best, times)]
    return tuple(best)


def latency_rows(args, ctx):
    size = args.size
    mx.random.seed(0)
    gcv = model_speed.build_gluoncv('deeplab', 'resnet101', size, ctx)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'deeplab_resnet101_voc.params')
        gcv.save_parameters(path)
        sz, _ = model_speed.build_segzoo('deeplab', 'resnet101', size, path, ctx)
    x = mx.nd.random.normal(shape=(1, 3, size, size))
    same = model_speed._diff(gcv(x)[0], sz(x)[0])
    gflop = {outputs: conv_gflop(sz, (1, 3, size, size), outputs) for outputs in ('all', 'main')}
    t0 = time.perf_counter()
    calib = [mx.nd.random.normal(shape=(1, 3, size, size)) for _ in range(2)]
    fp32 = deploy.convert(sz, 'fp32')   # traced once; the other graphs start from its symbol
    graphs = {'fp32': fp32, 'fused': deploy.fuse(fp32), 'bf16': deploy.to_bf16(fp32),
              'int8': deploy.quantize(fp32, calib, calib_mode='naive')}
    convert_s = time.perf_counter() - t0
    for net in (gcv, sz):
        net.hybridize(static_alloc=True, static_shape=True)
    names = ['gluoncv', 'segzoo'] + list(graphs)
    fns = [lambda: gcv(x), lambda: sz(x)] + [lambda g=g: g(x) for g in graphs.values()]
    times = dict(zip(names, model_speed.alternate(fns, 1, args.iters)))
    # a size change on the INT8 graph: first call at a new size, then the cached one again
    other = (size * 2 // 3, size + 32)
    y = mx.nd.random.normal(shape=(1, 3) + other)
    new_size_ms = model_speed._timed(lambda: graphs['int8'](y))
    back_ms = model_speed._timed(lambda: graphs['int8'](x))
    g = median_ms(times['gluoncv'])
    shape = f'{size}x{size}'
    rows = [(f'latency FP32 Segmentor (aux) {shape}', g, median_ms(times['segzoo']), 'ms')]
    for name in graphs:
        rows.append((f'latency {name} deploy graph {shape}', g, median_ms(times[name]), 'ms'))
    notes = [f'R101 outputs GluonCV vs segzoo: max |diff| {same[0]:.2g} (max |logit| {same[1]:.3g}), '
             f'same argmax {100 * same[2]:.2f}%',
             f'conversion time (fp32+fused+bf16+int8 naive, 2 calibration images): {convert_s:.0f} s',
             f'int8 first call at a new size {other[0]}x{other[1]}: {new_size_ms:.0f} ms; back at {shape} '
             f'(its CachedOp kept): {back_ms:.0f} ms',
             'spread (min-max ms): ' + ', '.join(f'{k} {min(v):.0f}-{max(v):.0f}' for k, v in times.items())]
    fp32_peak, int8_peak = conv_peak(args.iters)
    # GFLOP/s of what each runs: GluonCV's network computes its aux head too, the deploy graphs the main output only
    rates = {'gluoncv': gflop['all'] / (g / 1000)}
    rates.update({name: gflop['main'] / (median_ms(times[name]) / 1000) for name in ('fp32', 'int8')})
    rows.append((f'GFLOP/s FP32: GluonCV network ({gflop["all"]:.0f} GFLOP of convs with aux) / fp32 deploy graph '
                 f'({gflop["main"]:.0f}; taps inside the map); FP32 conv peak {fp32_peak:.0f}', rates['gluoncv'],
                 rates['fp32'], 'GFLOP/s'))
    rows.append((f'GOP/s INT8 deploy graph (INT8 conv peak {int8_peak:.0f})', None, rates['int8'], 'GFLOP/s'))
    shares = [100 * rates[name] / peak for name, peak in (('gluoncv', fp32_peak), ('fp32', fp32_peak),
                                                          ('int8', int8_peak))]
    notes.append(f'conv peak = the fastest of {len(PEAK_CONVS)} of the network\'s conv shapes run alone here (FP32 '
                 f'{fp32_peak:.0f}, INT8 {int8_peak:.0f} GOP/s); of it, R101 reaches {shares[0]:.0f}% (GluonCV) and '
                 f'{shares[1]:.0f}% (segzoo fp32 graph) in FP32, {shares[2]:.0f}% in INT8: near the FP32 peak, equal '
                 'work cannot get much faster in FP32')
    return rows, notes


# --------------------------------------------------------------------------------------------- accuracy
def trained_weights(args):
    """(path, how) of the trained tiny DeepLabV3: --weights, or make demo's recipe run for --train-epochs here, once
    (kept under runs/benchmark/ and reused)."""
    if args.weights:
        return args.weights, f'--weights {args.weights}'
    run_dir = os.path.join(REPO, 'runs', 'benchmark', f'deeplab_tiny_{args.train_epochs}_epochs')
    path = os.path.join(run_dir, 'checkpoint.params')
    how = f"make demo's recipe for {args.train_epochs} epochs ({os.path.relpath(run_dir, REPO)})"
    if not os.path.isfile(path):
        cmd = [sys.executable, os.path.join(REPO, 'train.py')] + DEMO_MODEL + [
            '--dataset-root', VOC_MINI, '--train-split', 'train_official', '--batch-size', '10',
            '--base-size', str(DEMO_SIZE), '--crop-size', str(DEMO_SIZE), '--epochs', str(args.train_epochs),
            '--lr', '0.05', '--workers', '2', '--log-interval', '30', '--no-val', '--save-dir', run_dir]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f'training the benchmark model failed ({" ".join(cmd)}):\n{done.stderr[-3000:]}')
        how += ', trained in this run'
    return path, how


def accuracy_rows(args):
    """Each precision against FP32 on the trained tiny DeepLabV3, scored as make demo scores it: at the scale it was
    trained at (long side DEMO_SIZE, one padded window; test.py --multi-eval), on its 30 training and 15 held-out
    images. INT8 calibrates as test.py does (3 batches of 8 centre crops of the training images). A testval pass at
    every image's own size (22 sizes) times the per-size set-up of each graph."""
    from segzoo.data import get_segmentation_dataset
    from segzoo.data.loader import get_dataloader
    from segzoo.data.transforms import ImageNormalize
    from segzoo.inference import predict
    from segzoo.model_zoo import get_segmentation_model
    from segzoo.utils.metrics import SegmentationMetric
    weights, how = trained_weights(args)
    net = get_segmentation_model('deeplab', backbone='resnet_tiny', aux=True, pretrained=weights,
                                 pretrained_base=False, base_size=DEMO_SIZE, crop_size=DEMO_SIZE)
    splits = {split: get_segmentation_dataset('pascal_voc', split=split, mode='testval', root=VOC_MINI,
                                              transform=ImageNormalize()) for split in ('val', 'train_official')}
    crops = get_segmentation_dataset('pascal_voc', split='train_official', mode='val', root=VOC_MINI,
                                     transform=ImageNormalize(), base_size=DEMO_SIZE, crop_size=DEMO_SIZE)
    calib = deploy.calibration_batches(get_dataloader(crops, 8, shuffle=True, last_batch='discard', seed=0),
                                       num_calib_batches=3)
    fp32 = deploy.convert(net, 'fp32')
    graphs = {'fp32': fp32, 'fused': deploy.fuse(fp32), 'bf16': deploy.to_bf16(fp32),
              'int8 naive': deploy.quantize(fp32, calib, calib_mode='naive'),
              'int8 entropy': deploy.quantize(fp32, calib, calib_mode='entropy')}
    images = [(split, mx.nd.array(image), mask) for split, ds in splits.items() for image, mask in ds]
    preds = {name: [predict(graph, image, base_size=DEMO_SIZE, crop_size=DEMO_SIZE).argmax(axis=0).asnumpy()
                    .astype(np.int64) for _, image, _ in images] for name, graph in graphs.items()}
    seconds = {}
    for name, graph in graphs.items():       # testval: each image at its own size, new sizes for every graph
        start = time.perf_counter()
        for _, image, _ in images:
            graph(image.expand_dims(0))[0].wait_to_read()
        seconds[name] = time.perf_counter() - start

    def miou(name, split):
        metric = SegmentationMetric(21)
        for (which, _, mask), pred in zip(images, preds[name]):
            if which == split:
                metric.update(mask, pred)
        return 100 * metric.get()[1]

    def agreement(name, split=None):
        same = [(a == b).ravel() for (which, _, _), a, b in zip(images, preds[name], preds['fp32'])
                if split in (None, which)]
        return 100 * float(np.mean(np.concatenate(same)))
    base = {split: miou('fp32', split) for split in splits}
    rows = []
    for name in list(graphs)[1:]:
        rows.append((f'{name}: argmax agreement with FP32, all 45 images (30 training / 15 held-out: '
                     f'{agreement(name, "train_official"):.2f} / {agreement(name, "val"):.2f} %)', None,
                     agreement(name), '%'))
        for split, what in (('val', 'held-out'), ('train_official', 'training')):
            rows.append((f'{name}: mIoU change on the {what} images (FP32 {base[split]:.2f})', None,
                         miou(name, split) - base[split], 'points'))
    notes = [f'trained model: tiny-backbone DeepLabV3 (widths 8/4/8/16/32), {how}; scored at its training scale '
             f'(long side {DEMO_SIZE}); FP32 mIoU {base["val"]:.2f} % on the 15 held-out val images, '
             f'{base["train_official"]:.2f} % on its 30 training images',
             f'testval pass over the {len(images)} images at their own sizes ({len({i.shape for _, i, _ in images})} '
             'sizes, each new to every graph once), s: ' + ', '.join(f'{k} {v:.1f}' for k, v in seconds.items())]
    return rows, notes


# --------------------------------------------------------------------------------------------- R50 rows
def train_rss(framework):
    """Child process: 3 steps of the framework's training loop on DeepLabV3-R50 built by that framework alone (the
    weights' values do not change the memory); prints the peak RSS in MiB."""
    ctx = mx.cpu()
    if framework == 'gluoncv':
        loop = gluoncv_loop(model_speed.build_gluoncv('deeplab', 'resnet50', R50_SIZE, ctx), 3, ctx)
    else:
        from segzoo.model_zoo import get_segmentation_model
        net = get_segmentation_model('deeplab', dataset='pascal_voc', backbone='resnet50', aux=True,
                                     pretrained_base=False, base_size=R50_SIZE, crop_size=R50_SIZE, ctx=ctx)
        loop = segzoo_loop(net, 3, ctx)
    model_speed._timed(loop)
    print(json.dumps({'peak_rss_mib': peak_rss_mib()}))


def peak_rss_mib():
    """This process's peak resident set (VmHWM). Not ``getrusage().ru_maxrss``: Linux keeps that across
    ``exec``, so a child started by a large parent reports the parent's peak."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _r50_pair(ctx):
    """GluonCV's DeepLabV3-ResNet-50 (crop R50_SIZE) and segzoo's, loaded from GluonCV's saved weights (seed 0).

    The random classifier weights are scaled by 1e-3: GluonCV's initialisation gives logits of ~1e3, whose exp (the
    multi-scale fusion) overflows to inf, while trained logits are ~10; speed does not depend on the values."""
    mx.random.seed(0)
    gcv = model_speed.build_gluoncv('deeplab', 'resnet50', R50_SIZE, ctx)
    classifier = gcv.head.block[-1].weight
    classifier.set_data(classifier.data() * 1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'w.params')
        gcv.save_parameters(path)
        sz, _ = model_speed.build_segzoo('deeplab', 'resnet50', R50_SIZE, path, ctx)
    return gcv, sz


def multiscale_rows(args, ctx):
    """Multi-scale + flip evaluation of DeepLabV3-R50: GluonCV's MultiEvalModel on its network as its test.py runs it
    (not hybridized) and hybridized (static_alloc/static_shape), against segzoo's predict() on the graphs test.py
    evaluates: fp32 (test.py's default), fused, bf16, int8 (`--precision`)."""
    from gluoncv.model_zoo.segbase import MultiEvalModel
    from segzoo.inference import predict
    size = R50_SIZE
    gcv, sz = _r50_pair(ctx)
    gcv_hybrid = model_speed.build_gluoncv('deeplab', 'resnet50', size, ctx)
    for key, param in gcv_hybrid.collect_params().items():
        param.set_data(gcv.collect_params()[key.replace(gcv_hybrid.prefix, gcv.prefix, 1)].data())
    gcv_hybrid.hybridize(static_alloc=True, static_shape=True)
    images = [mx.nd.random.normal(shape=(3, 300, 400)), mx.nd.random.normal(shape=(3, 400, 300))]
    evaluators = {'gluoncv': MultiEvalModel(gcv, 21, [ctx], flip=True, scales=list(MS_SCALES)),
                  'gluoncv hybridized': MultiEvalModel(gcv_hybrid, 21, [ctx], flip=True, scales=list(MS_SCALES))}
    fp32 = deploy.convert(sz, 'fp32')
    calib = [mx.nd.random.normal(shape=(2, 3, size, size))]
    graphs = {'fp32': fp32, 'fused': deploy.fuse(fp32), 'bf16': deploy.to_bf16(fp32),
              'int8': deploy.quantize(fp32, calib, calib_mode='naive')}
    outs = {}

    def run_gluoncv(name):
        outs[name] = [evaluators[name](im)[0] for im in images]   # (C, H, W) per (3, H, W) image

    def run_segzoo(name):
        outs[name] = [predict(graphs[name], im, base_size=size, crop_size=size, scales=MS_SCALES, flip=True)
                      for im in images]
    names = list(evaluators) + list(graphs)
    fns = [lambda n=n: run_gluoncv(n) for n in evaluators] + [lambda n=n: run_segzoo(n) for n in graphs]
    times = dict(zip(names, model_speed.alternate(fns, 1, 3)))
    per_image = {name: median_ms(ms) / 1000 / len(images) for name, ms in times.items()}

    def diff(name):
        return max(float(np.abs(a.asnumpy() - b.asnumpy()).max() / np.abs(a.asnumpy()).max())
                   for a, b in zip(outs['gluoncv'], outs[name]))
    rows = [('multi-scale+flip eval R50, fp32 graph (test.py) vs GluonCV as its test.py runs it, s/image',
             per_image['gluoncv'], per_image['fp32'], 's'),
            ('multi-scale+flip eval R50, fp32 graph (test.py) vs GluonCV hybridized, s/image',
             per_image['gluoncv hybridized'], per_image['fp32'], 's')]
    for name in ('fused', 'bf16', 'int8'):
        rows.append((f'multi-scale+flip eval R50, {name} graph vs GluonCV hybridized FP32, s/image',
                     per_image['gluoncv hybridized'], per_image[name], 's'))
    notes = [f'multi-scale: scales {MS_SCALES}, flip, base = crop = {size}, images 300x400 and 400x300 (8 forwards '
             'of 256x256 each); spread (min-max s/image): ' +
             ', '.join(f'{k} {min(v) / 2000:.2f}-{max(v) / 2000:.2f}' for k, v in times.items()),
             'multi-scale outputs against GluonCV (max relative |diff|): ' +
             ', '.join(f'{name} {diff(name):.2g}' for name in ['gluoncv hybridized'] + list(graphs)) +
             ' (random weights: the bf16/int8 differences say nothing about a trained model, see the accuracy rows)']
    return rows, notes


def _batch(ctx):
    """The training batch of the loop rows: 2 random images of R50_SIZE and their labels (ignore label included)."""
    image = mx.nd.random.normal(shape=(2, 3, R50_SIZE, R50_SIZE), ctx=ctx)
    label = mx.nd.random.randint(-1, 21, shape=(2, R50_SIZE, R50_SIZE), ctx=ctx).astype('int32')
    return image, label


def gluoncv_loop(net, steps, ctx, batch=None):
    """`steps` iterations of GluonCV's train.py loop body on `net`: DataParallelModel/Criterion, ``waitall`` between
    forward and backward, SGD step with its poly schedule, ``loss.asnumpy()`` and ``waitall`` every iteration. The
    loop returns the mean loss of its last step."""
    import gluoncv.loss
    import gluoncv.utils
    from gluoncv.utils.parallel import DataParallelCriterion, DataParallelModel
    image, label = _batch(ctx) if batch is None else batch
    model = DataParallelModel(net, [ctx])
    criterion = DataParallelCriterion(gluoncv.loss.MixSoftmaxCrossEntropyLoss(aux=True,
                                                                              aux_weight=model_speed.AUX_WEIGHT), [ctx])
    schedule = gluoncv.utils.LRScheduler('poly', base_lr=model_speed.SGD['learning_rate'], nepochs=SCHEDULE_EPOCHS,
                                         iters_per_epoch=1, power=0.9)
    trainer = mx.gluon.Trainer(net.collect_params(), 'sgd', dict(model_speed.SGD, lr_scheduler=schedule),
                               kvstore='local')

    def loop():
        for _ in range(steps):
            with mx.autograd.record(True):
                outputs = model(image.astype('float32', copy=False))
                losses = criterion(outputs, label)
                mx.nd.waitall()
                mx.autograd.backward(losses)
            trainer.step(image.shape[0])
            means = [np.mean(loss.asnumpy()) for loss in losses]
            mx.nd.waitall()
        return float(np.mean(means))
    return loop


def segzoo_loop(net, steps, ctx, batch=None):
    """`steps` iterations of segzoo's train.py loop on `net`: ``train.train_step`` with train.py's trainer, training
    policy (head lr x10, as GluonCV's model sets) and loss with ``--gluoncv-loss`` (GluonCV's gradients: the same
    computation), same SGD settings; the losses read once at the end (train.py reads them every --log-interval
    steps). The loop returns the mean loss of its last step."""
    import train
    from segzoo import cli
    image, label = _batch(ctx) if batch is None else batch
    args = train.parse_args(['--no-cuda', '--lr', str(model_speed.SGD['learning_rate']), '--gluoncv-loss',
                             '--epochs', str(SCHEDULE_EPOCHS)])
    train.set_training_policy(net, args.head_lr_mult, args.no_wd)
    trainer = train.make_trainer(net, args, 1, cli.get_kvstore(args, [ctx]))
    config = train.LoopConfig(ctx_list=[ctx], run_dir=None, save=None, epochs=1)
    loss_fn = train.make_loss(args, aux=True)
    done = [0]

    def loop():
        for _ in range(steps):
            losses = train.train_step(net, loss_fn, trainer, image, label, config, done[0])
            done[0] += 1
        return float(losses[0].mean().asscalar())
    return loop


def train_difference(ctx):
    """How far segzoo's training step is from GluonCV's: one step of each loop from the same weights on the same
    batch, dropout off (its masks are drawn differently); (relative |diff| of the losses, largest relative |diff|
    of a parameter after the step)."""
    gcv, sz = _r50_pair(ctx)
    for net in (gcv, sz):
        net.apply(lambda block: setattr(block, '_rate', 0.0) if isinstance(block, mx.gluon.nn.Dropout) else None)
    batch = _batch(ctx)
    g_loss, s_loss = gluoncv_loop(gcv, 1, ctx, batch)(), segzoo_loop(sz, 1, ctx, batch)()
    s_params = sz.gluoncv_params()   # by GluonCV's structural keys, those of gcv's own parameters
    param_diff = 0.0
    for key, param in gcv._collect_params_with_prefix().items():
        g, s = param.data().asnumpy(), s_params[key].data().asnumpy()
        param_diff = max(param_diff, float(np.abs(g - s).max() / max(np.abs(g).max(), 1e-12)))
    return abs(g_loss - s_loss) / abs(g_loss), param_diff


def train_rows(args, ctx):
    """Training step img/s (each framework's loop, 3 consecutive steps per timing) and peak RSS of training."""
    gcv, sz = _r50_pair(ctx)
    steps = TRAIN_STEPS
    g_ms, s_ms = model_speed.alternate([gluoncv_loop(gcv, steps, ctx), segzoo_loop(sz, steps, ctx)], 1,
                                       TRAIN_TIMINGS)
    images = 2 * steps
    rows = [('train step R50 crop 256 batch 2 (each framework\'s loop) img/s', 1000 * images / median_ms(g_ms),
             1000 * images / median_ms(s_ms), 'img/s')]
    loss_diff, param_diff = train_difference(ctx)
    notes = [f'train loop: {steps} steps per timing, {TRAIN_TIMINGS} timings after 1 warm-up; spread (min-max img/s): '
             f'GluonCV {1000 * images / max(g_ms):.3f}-{1000 * images / min(g_ms):.3f}, segzoo '
             f'{1000 * images / max(s_ms):.3f}-{1000 * images / min(s_ms):.3f}; one step from the same weights on '
             f'the same batch (dropout off): loss relative |diff| {loss_diff:.2g}, parameters after the step '
             f'{param_diff:.2g} (largest relative |diff| of a parameter)']
    rss = {}
    for framework in ('gluoncv', 'segzoo'):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), '--train-rss', framework], check=True,
                             capture_output=True, text=True, cwd=REPO).stdout
        rss[framework] = json.loads(out.strip().splitlines()[-1])['peak_rss_mib']
    rows.append(('peak RSS of training R50 (process) MiB', rss['gluoncv'], rss['segzoo'], 'MiB'))
    return rows, notes


def pipeline_rows():
    rows, _ = data_pipeline.run(data_pipeline.parse_args(['--epochs', str(PIPELINE_EPOCHS), '--warmup', '1']))
    return [('data pipeline train crop 480 img/s', rows[0][1], rows[1][1], 'img/s')]


# --------------------------------------------------------------------------------------------- output
_HIGHER_IS_BETTER = ('img/s', 'GFLOP/s')


def format_table(rows):
    lines = ['| measurement | GluonCV | segzoo | GluonCV / segzoo |', '|---|---:|---:|---:|']
    for what, g, s, unit in rows:
        ratio = ''
        if g is not None:
            ratio = f'{(s / g if unit in _HIGHER_IS_BETTER else g / s):.2f}x'
        g_text = '' if g is None else f'{g:.3g} {unit}'
        lines.append(f'| {what} | {g_text} | {s:.3g} {unit} | {ratio} |')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.train_rss:
        return train_rss(args.train_rss)
    load = os.getloadavg()
    ctx = mx.cpu()
    start = time.perf_counter()
    rows, notes = [], []
    for part in (lambda: latency_rows(args, ctx), lambda: accuracy_rows(args), lambda: multiscale_rows(args, ctx),
                 lambda: train_rows(args, ctx), lambda: (pipeline_rows(), [])):
        part_rows, part_notes = part()
        rows += part_rows
        notes += part_notes
        print(format_table(part_rows), flush=True)
    print('\n' + format_table(rows))
    print('\nratio: above 1 = segzoo faster (for the deploy rows: against GluonCV FP32)')
    for note in notes:
        print(f'- {note}')
    flags = sorted(f for f in (deploy._cpu_flags() or ()) if f.startswith(('avx512', 'amx', 'avx2')))
    print(f'- machine: {os.cpu_count()} CPUs ({", ".join(flags)}), MXNet {mx.__version__}, load average before '
          f'{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after {os.getloadavg()[0]:.2f}; '
          f'wall time {time.perf_counter() - start:.0f} s')
    print('- command: python ' + ' '.join([os.path.relpath(__file__, os.getcwd())] +
                                          (sys.argv[1:] if argv is None else list(argv))))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'rows': rows, 'notes': notes}, f, indent=1)
    return rows


if __name__ == '__main__':
    main()
