"""One table, segzoo against GluonCV in the same run on the same machine: latency per precision, accuracy of each
precision on a trained model, multi-scale evaluation, training step, data pipeline, training memory and GFLOP/s.

Rows (each with GluonCV's figure, segzoo's, and GluonCV / segzoo where both exist; above 1 means segzoo is faster):

* **latency**, DeepLabV3-ResNet101 480x480 batch 1, random weights (GluonCV's initialisation, saved and loaded by
  segzoo, so both networks hold the same numbers; outputs checked equal first). GluonCV: its network hybridized with
  ``static_alloc/static_shape`` (its test.py ``--benchmark`` setting, aux head included). segzoo: the same Segmentor
  (aux included), then ``segzoo.deploy`` graphs of the main output only: fp32, fused, bf16, int8 (naive
  calibration on N(0, 1) images: ranges do not change speed). Ratios of the deploy rows are against GluonCV FP32.
  The networks alternate call by call so they share the machine load; median of ``--iters``.
* **accuracy** of each precision against FP32 on a *trained* model: the tiny-backbone DeepLabV3 that ``make demo``
  trains on the bundled VOC photographs (its checkpoint if present, else trained here with the same recipe for
  ``--train-epochs``), evaluated on all 45 bundled images at their own sizes (testval); argmax agreement with FP32
  over every pixel, and mIoU on the 15 held-out val images. INT8 calibrates on 3 batches of 8 training crops.
* **multi-scale eval** (scales 0.75/1/1.25 + flip, base = crop = 256; segzoo's Segmentor, then its fp32 deploy
  graph (main output only) and the fused one that ``test.py --precision fused`` runs) and **train step** (batch 2,
  crop 256, imperative, SGD) on DeepLabV3-ResNet50, same weights; peak RSS of training in a fresh process per
  framework.
* **data pipeline**: ``benchmarks/data_pipeline.py``'s two loaders (train mode, crop 480) for a few epochs.
* **GFLOP/s**: convolution FLOPs of the R101 graph / latency, against the peak of one 3x3 256->256 convolution on
  1x256x64x64 measured here in FP32 and INT8.

Usage::

    nice python benchmarks/run.py [--iters 3] [--train-epochs 60] [--weights PATH] [--json out.json]
"""
import argparse
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
DEMO_WEIGHTS = os.path.join(REPO, 'runs', 'pascal_voc', 'deeplab', 'demo', 'checkpoint.params')
DEMO_MODEL = ['--model', 'deeplab', '--backbone', 'resnet_tiny', '--aux', '--dataset', 'pascal_voc', '--no-cuda']
MS_SCALES = (0.75, 1.0, 1.25)
R50_SIZE = 256   # crop (and base) size of the ResNet-50 rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--iters', type=int, default=3, help='timed latency calls per network (after 1 warm-up)')
    p.add_argument('--size', type=int, default=480, help='latency input size (square)')
    p.add_argument('--weights', default=None, help="trained tiny DeepLabV3 .params (default: make demo's, else train)")
    p.add_argument('--train-epochs', type=int, default=60, help='epochs when the tiny model is trained here')
    p.add_argument('--json', default=None, help='also write the rows as JSON')
    p.add_argument('--train-rss', choices=('gluoncv', 'segzoo'), default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def median_ms(times):
    return float(np.median(times))


# --------------------------------------------------------------------------------------------- latency, FLOPs
def conv_gflop(net, shape):
    """Convolution GFLOP (2 x multiply-adds) of `net`'s main-output graph at input `shape`."""
    sym, _, _ = deploy.to_symbol(net)
    internals = sym.get_internals()
    arg_shapes, out_shapes, _ = internals.infer_shape(data=shape)
    args = dict(zip(internals.list_arguments(), arg_shapes))
    outs = dict(zip(internals.list_outputs(), out_shapes))
    total = 0
    nodes = json.loads(sym.tojson())['nodes']
    for node in nodes:
        if node['op'] == 'Convolution':
            weight = args[nodes[node['inputs'][1][0]]['name']]
            out = outs[f'{node["name"]}_output']
            total += 2 * int(np.prod(weight)) * out[0] * out[2] * out[3]
    return total / 1e9


def conv_peak(iters):
    """(FP32, INT8) GFLOP/s of one 3x3 256->256 convolution on 1x256x64x64 (oneDNN; the INT8 graph includes its
    quantize and dequantize of the input and output)."""
    conv = mx.gluon.nn.HybridSequential()
    conv.add(mx.gluon.nn.Conv2D(256, 3, padding=1, in_channels=256, use_bias=False))
    conv.initialize(mx.init.Xavier())
    x = mx.nd.random.normal(shape=(1, 256, 64, 64)).relu()   # non-negative, as after a ReLU: uint8 (u8s8 kernels)
    int8 = deploy.quantize(conv, [x], calib_mode='naive')
    conv.hybridize(static_alloc=True, static_shape=True)
    fp32_ms, int8_ms = model_speed.alternate([lambda: conv(x), lambda: int8(x)], 2, max(iters, 5))
    gflop = 2 * 256 * 256 * 9 * 64 * 64 / 1e9
    return gflop / (median_ms(fp32_ms) / 1000), gflop / (median_ms(int8_ms) / 1000)


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
    gflop = conv_gflop(sz, (1, 3, size, size))
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
    fp32_rate, int8_rate = gflop / (median_ms(times['segzoo']) / 1000), gflop / (median_ms(times['int8']) / 1000)
    rows.append((f'GFLOP/s FP32 Segmentor ({gflop:.0f} GFLOP of convs; FP32 conv peak {fp32_peak:.0f})',
                 gflop / (g / 1000), fp32_rate, 'GFLOP/s'))
    rows.append((f'GOP/s INT8 deploy graph (INT8 conv peak {int8_peak:.0f})', None, int8_rate, 'GFLOP/s'))
    notes.append(f'conv peak = one 3x3 256->256 conv on 1x256x64x64 measured here; R101 reaches '
                 f'{100 * fp32_rate / fp32_peak:.0f}% of it in FP32 and {100 * int8_rate / int8_peak:.0f}% in INT8')
    return rows, notes


# --------------------------------------------------------------------------------------------- accuracy
def trained_weights(args, tmp):
    """(path, how) of the trained tiny DeepLabV3: --weights, make demo's checkpoint, or trained here."""
    if args.weights:
        return args.weights, f'--weights {args.weights}'
    if os.path.isfile(DEMO_WEIGHTS):
        path = os.path.join(tmp, 'demo.params')
        with open(DEMO_WEIGHTS, 'rb') as src, open(path, 'wb') as dst:
            dst.write(src.read())
        return path, f"make demo's {os.path.relpath(DEMO_WEIGHTS, REPO)}"
    cmd = [sys.executable, os.path.join(REPO, 'train.py')] + DEMO_MODEL + [
        '--dataset-root', VOC_MINI, '--train-split', 'train_official', '--batch-size', '10', '--test-batch-size',
        '8', '--base-size', '96', '--crop-size', '96', '--epochs', str(args.train_epochs), '--lr', '0.05',
        '--workers', '2', '--log-interval', '30', '--checkname', 'bench', '--save-dir', tmp]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return os.path.join(tmp, 'checkpoint.params'), f"trained here ({args.train_epochs} epochs, make demo's recipe)"


def accuracy_rows(args):
    from segzoo.data import get_segmentation_dataset
    from segzoo.data.loader import get_dataloader
    from segzoo.data.transforms import ImageNormalize
    from segzoo.model_zoo import get_segmentation_model
    from segzoo.utils.metrics import SegmentationMetric
    with tempfile.TemporaryDirectory() as tmp:
        weights, how = trained_weights(args, tmp)
        net = get_segmentation_model('deeplab', backbone='resnet_tiny', aux=True, pretrained=weights,
                                     pretrained_base=False, base_size=96, crop_size=96)
    splits = {split: get_segmentation_dataset('pascal_voc', split=split, mode='testval', root=VOC_MINI,
                                              transform=ImageNormalize()) for split in ('val', 'train_official')}
    crops = get_segmentation_dataset('pascal_voc', split='train_official', mode='val', root=VOC_MINI,
                                     transform=ImageNormalize(), base_size=96, crop_size=96)
    calib = deploy.calibration_batches(get_dataloader(crops, 8, shuffle=True, last_batch='discard', seed=0),
                                       num_calib_batches=3)
    net.hybridize()
    graphs = {'fp32': net, 'fused': deploy.fuse(net), 'bf16': deploy.to_bf16(net),
              'int8 naive': deploy.quantize(net, calib, calib_mode='naive'),
              'int8 entropy': deploy.quantize(net, calib, calib_mode='entropy')}
    images = [(split, *ds[i]) for split, ds in splits.items() for i in range(len(ds))]
    preds, seconds = {}, {}
    for name, graph in graphs.items():
        start = time.perf_counter()
        preds[name] = [graph(mx.nd.array(image).expand_dims(0))[0][0].argmax(axis=0).asnumpy().astype(np.int64)
                       for _, image, _ in images]
        seconds[name] = time.perf_counter() - start
    sizes = len({image.shape for _, image, _ in images})

    def miou(name, which='val'):
        metric = SegmentationMetric(21)
        for (split, _, mask), pred in zip(images, preds[name]):
            if split == which:
                metric.update(mask.asnumpy() if hasattr(mask, "asnumpy") else mask, pred)
        return metric.get()[1]

    base, fit = miou('fp32'), miou('fp32', 'train_official')
    rows, notes = [], [f'trained model: tiny-backbone DeepLabV3, {how}; {len(images)} images at {sizes} distinct '
                       f'sizes; FP32 mIoU {100 * base:.2f}% on the 15 val images, {100 * fit:.2f}% on the 30 '
                       'training images it was trained on']
    for name in graphs:
        if name == 'fp32':
            continue
        agree = np.mean(np.concatenate([(a == b).ravel() for a, b in zip(preds[name], preds['fp32'])]))
        rows.append((f'{name}: argmax agreement with FP32 (45 images)', None, 100 * agree, '%'))
        rows.append((f'{name}: val mIoU change vs FP32 ({100 * base:.2f})', None, 100 * (miou(name) - base),
                     'points'))
        rows.append((f'{name}: train-images mIoU change vs FP32 ({100 * fit:.2f})', None,
                     100 * (miou(name, 'train_official') - fit), 'points'))
    notes.append('testval pass over the 45 images (s), each size new to the graph once: ' +
                 ', '.join(f'{k} {v:.1f}' for k, v in seconds.items()))
    return rows, notes


# --------------------------------------------------------------------------------------------- R50 rows
def _train_step_setup(net, loss, size, batch, ctx):
    image = mx.nd.random.normal(shape=(batch, 3, size, size), ctx=ctx)
    label = mx.nd.random.randint(-1, 21, shape=(batch, size, size), ctx=ctx).astype('int32')
    trainer = mx.gluon.Trainer(net.collect_params(), 'sgd', dict(model_speed.SGD))
    return model_speed.train_step_fn(net, loss, trainer, image, label)


def _loss(framework):
    if framework == 'gluoncv':
        import gluoncv.loss
        return gluoncv.loss.MixSoftmaxCrossEntropyLoss(aux=True, aux_weight=model_speed.AUX_WEIGHT)
    from segzoo.loss import MixSoftmaxCrossEntropyLoss
    return MixSoftmaxCrossEntropyLoss(aux=True, aux_weight=model_speed.AUX_WEIGHT)


def train_rss(framework):
    """Child process: 3 training steps of DeepLabV3-R50 (crop 256, batch 2); prints the peak RSS in MiB."""
    ctx = mx.cpu()
    gcv = model_speed.build_gluoncv('deeplab', 'resnet50', R50_SIZE, ctx)
    if framework == 'gluoncv':
        net = gcv
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'w.params')
            gcv.save_parameters(path)
            del gcv
            net, _ = model_speed.build_segzoo('deeplab', 'resnet50', R50_SIZE, path, ctx)
    step = _train_step_setup(net, _loss(framework), R50_SIZE, 2, ctx)
    for _ in range(3):
        model_speed._timed(step)
    print(json.dumps({'peak_rss_mib': peak_rss_mib()}))


def peak_rss_mib():
    """This process's peak resident set (VmHWM). Not ``getrusage().ru_maxrss``: Linux keeps that across
    ``exec``, so a child started by a large parent reports the parent's peak."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def r50_rows(args, ctx):
    from gluoncv.model_zoo.segbase import MultiEvalModel
    from segzoo.inference import predict
    size = R50_SIZE
    gcv = model_speed.build_gluoncv('deeplab', 'resnet50', size, ctx)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'w.params')
        gcv.save_parameters(path)
        sz, _ = model_speed.build_segzoo('deeplab', 'resnet50', size, path, ctx)
    images = [mx.nd.random.normal(shape=(3, 300, 400)), mx.nd.random.normal(shape=(3, 400, 300))]
    for net in (gcv, sz):
        net.hybridize(static_alloc=True, static_shape=True)
    evaluator = MultiEvalModel(gcv, 21, [ctx], flip=True, scales=list(MS_SCALES))
    fp32 = deploy.convert(sz, 'fp32')   # main output only, one static graph per input shape
    graphs = {'segzoo': sz, 'fp32 deploy graph': fp32, 'fused deploy graph': deploy.fuse(fp32)}
    outs = {}

    def run_gcv():
        outs['gluoncv'] = [evaluator(im) for im in images]   # (1, C, H, W) per (3, H, W) image

    def run_sz(name):
        outs[name] = [predict(graphs[name], im, base_size=size, crop_size=size, scales=MS_SCALES, flip=True)
                      for im in images]
    times = model_speed.alternate([run_gcv] + [lambda n=n: run_sz(n) for n in graphs], 1, 2)
    g_s = median_ms(times[0]) / 2000
    rows, notes = [], []
    for name, ms in zip(graphs, times[1:]):
        what = 'Segmentor (aux)' if name == 'segzoo' else name
        rows.append((f'multi-scale+flip eval R50 {what} s/image', g_s, median_ms(ms) / 2000, 's'))
        diff = max(float(np.abs(a[0].asnumpy() - b.asnumpy()).max() / np.abs(a.asnumpy()).max())
                   for a, b in zip(outs['gluoncv'], outs[name]))
        notes.append(f'multi-scale outputs GluonCV vs segzoo {what}: max relative |diff| {diff:.2g}')
    notes.append(f'multi-scale: scales {MS_SCALES}, flip, base = crop = {size}, images 300x400 and 400x300; '
                 'spread (min-max s/image): ' + ', '.join(f'{k} {min(v) / 2000:.2f}-{max(v) / 2000:.2f}' for k, v in
                                                        zip(['gluoncv'] + list(graphs), times)))
    for net in (gcv, sz):
        net.hybridize(active=False)
    steps = [_train_step_setup(gcv, _loss('gluoncv'), size, 2, ctx), _train_step_setup(sz, _loss('segzoo'), size,
                                                                                       2, ctx)]
    g_ms, s_ms = model_speed.alternate(steps, 1, args.iters)
    rows.append(('train step R50 crop 256 batch 2 img/s', 2000 / median_ms(g_ms), 2000 / median_ms(s_ms), 'img/s'))
    rss = {}
    for framework in ('gluoncv', 'segzoo'):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), '--train-rss', framework], check=True,
                             capture_output=True, text=True, cwd=REPO).stdout
        rss[framework] = json.loads(out.strip().splitlines()[-1])['peak_rss_mib']
    rows.append(('peak RSS of training R50 (process) MiB', rss['gluoncv'], rss['segzoo'], 'MiB'))
    return rows, notes


def pipeline_rows():
    rows, _ = data_pipeline.run(data_pipeline.parse_args(['--epochs', '2', '--warmup', '1']))
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
    for part in (lambda: latency_rows(args, ctx), lambda: accuracy_rows(args), lambda: r50_rows(args, ctx),
                 lambda: (pipeline_rows(), [])):
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
