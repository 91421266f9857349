"""Evaluate a segmentation network: metrics on a labelled split, predictions for the test server, or latency.

GluonCV's ``scripts/segmentation/test.py`` flags, working where GluonCV's script does not: any batch
size on CPU, ``--mode`` honoured, test mode that runs, and multi-scale + flip + sliding-window evaluation with
GluonCV's ``MultiEvalModel`` semantics (``segzoo.inference.predict``), which GluonCV's script never reaches.

Typical commands::

    # single scale, full images (what GluonCV's test.py measures)
    python test.py --model-zoo deeplab_resnet101_voc --eval
    # GluonCV's published multi-scale protocol
    python test.py --model-zoo deeplab_resnet101_voc --eval --scales 0.5 0.75 1.0 1.25 1.5 1.75 --flip
    # a run's weights, VOC test-server PNGs under outdir/results/VOC2012/Segmentation/comp6_test_cls/
    python test.py --model deeplab --backbone resnet101 --resume runs/pascal_voc/deeplab/res101/checkpoint.params \\
        --mode test --save-pred
    # latency on dummy data
    python test.py --model deeplab --backbone resnet101 --benchmark --image-shape 480 --no-cuda

Evaluation paths:

* whole image (default: ``--scales 1.0`` without ``--flip``): the logits of the network at each image's own size;
  images of equal size are batched and split over the devices.
* multi-scale (any other ``--scales``, ``--flip``, or ``--multi-eval``): GluonCV's MultiEvalModel per image, with
  ``--base-size`` / ``--crop-size`` (default: the model's), one image per device at a time. On one device an FP32
  network runs as its ``segzoo.deploy`` graph: the same operators for the main output only (GluonCV computes the
  auxiliary head and discards it), one static graph per window shape.

``main(args)`` returns the metrics dict that it also writes to ``<out-dir>/metrics.json``.
"""
import argparse
import os
import time

import mxnet as mx
import numpy as np
from tqdm import tqdm

from segzoo import cli, deploy
from segzoo.data import get_segmentation_dataset
from segzoo.data.base import BASE_SIZE, CROP_SIZE
from segzoo.data.loader import get_dataloader
from segzoo.deploy import flags as deploy_flags
from segzoo.inference import FUSIONS, parallel_predict, predict_whole
from segzoo.utils.fileio import write_json
from segzoo.utils.metrics import SegmentationMetric, class_iou_table
from segzoo.utils.viz import get_color_pallete

# Where the PASCAL VOC evaluation server expects segmentation results (competition 6: outside data allowed).
VOC_TEST_LAYOUT = os.path.join('results', 'VOC2012', 'Segmentation', 'comp6_test_cls')
VOC_DATASETS = ('pascal_voc', 'pascal_aug')


def parse_args(argv=None):
    """Parse test.py's command line (``argv=None`` reads ``sys.argv``)."""
    parser = cli.base_parser('Evaluate a semantic segmentation network (segzoo, GluonCV-compatible flags).')
    cli.add_model_args(parser)
    cli.add_data_args(parser, default_dataset='pascal_voc')
    cli.add_device_args(parser)
    # Sizes default to the model's own (base_size/crop_size stored on the network); ImageNet backbone weights
    # are pointless when every weight is loaded afterwards.
    parser.set_defaults(base_size=None, crop_size=None, workers=4, pretrained_base=False)
    data = parser.add_argument_group('evaluation data')
    data.add_argument('--split', type=str, default=None,
                      help="dataset split (default: 'test' in mode test, else 'val')")
    data.add_argument('--mode', type=str, default=None, choices=('val', 'testval', 'test'),
                      help='val: centre crops; testval: full images with metrics; test: full images, '
                           'predictions only (default: testval with --eval, else test)')
    data.add_argument('--eval', action='store_true',
                      help='compute pixAcc/mIoU on a labelled split (GluonCV: split val, mode testval)')
    cli.add_miou_arg(data)
    data.add_argument('--batch-size', '--test-batch-size', dest='batch_size', type=int, default=None,
                      help='images per step (default: one per device); multi-scale runs one image per device')
    ms = parser.add_argument_group('multi-scale evaluation (GluonCV MultiEvalModel)')
    ms.add_argument('--scales', type=float, nargs='+', default=[1.0],
                    help='scales of --base-size, e.g. 0.5 0.75 1.0 1.25 1.5 1.75')
    ms.add_argument('--flip', action='store_true', help='add horizontally flipped passes')
    ms.add_argument('--multi-eval', action='store_true',
                    help='use the multi-scale path (resize to --base-size, pad/slide --crop-size windows) even '
                         'for --scales 1.0 without --flip')
    ms.add_argument('--fusion', type=str, default='gluoncv', choices=FUSIONS,
                    help="gluoncv: sum of exp(logits) (GluonCV's numbers); softmax: sum of probabilities")
    out = parser.add_argument_group('output')
    out.add_argument('--out-dir', type=str, default='outdir', help='where metrics.json and predictions go')
    out.add_argument('--save-pred', action='store_true',
                     help='write palette PNGs of the predictions (mode test: the VOC test-server layout)')
    bench = parser.add_argument_group('benchmark')
    bench.add_argument('--benchmark', action='store_true', help='measure latency on dummy data, no dataset')
    bench.add_argument('--image-shape', type=int, default=480, help='benchmark input size (square)')
    bench.add_argument('--num-iterations', type=int, default=100, help='timed benchmark iterations')
    bench.add_argument('--warmup-iterations', type=int, default=5, help='untimed benchmark iterations first')
    deploy_flags.add_precision_args(parser)
    args = parser.parse_args(argv)
    cli.check_args(parser, args)
    _check_args(parser, args)
    deploy_flags.check_precision_args(parser, args)
    return args


def _check_args(parser, args):
    if args.mode is None:
        args.mode = 'testval' if args.eval else 'test'
    if args.eval and args.mode == 'test':
        parser.error('--eval needs labels: use --mode testval or val, not test')
    if args.split is None:
        args.split = 'test' if args.mode == 'test' else 'val'
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f'--batch-size must be positive, got {args.batch_size}')
    if any(s <= 0 for s in args.scales):
        parser.error(f'--scales must be positive, got {args.scales}')
    if args.dtype != 'float32':
        parser.error('test.py evaluates in float32 (--dtype float16 is for training)')
    if args.num_iterations < 1 or args.warmup_iterations < 0:
        parser.error('--num-iterations must be >= 1 and --warmup-iterations >= 0')


# ------------------------------------------------------------------------------------------------ model, data
def get_test_set(args):
    """The evaluation dataset through the ``--augment`` recipe's pipeline of ``--mode`` (``val`` with
    ``--augment composer`` is Composer's protocol: image and label resized to the crop size squared)."""
    kwargs = dict(split=args.split, mode=args.mode, transforms=args.augment, base_size=args.base_size,
                  crop_size=args.crop_size)
    if args.dataset_root:
        kwargs['root'] = args.dataset_root
    return get_segmentation_dataset(args.dataset, **kwargs)


def load_network(args, ctx_list, num_classes=None, require_weights=True):
    """The network to evaluate: a saved graph (``--quantized PREFIX``), or the model flags' network in
    ``--precision`` (INT8 calibrated on ``--calib-split`` centre crops; random N(0, 1) crops with ``--benchmark``)."""
    if args.saved_graph:
        net = deploy_flags.load_saved_graph(args.saved_graph)
        if num_classes is not None and getattr(net, 'num_classes', num_classes) != num_classes:
            raise SystemExit(f'error: {args.saved_graph} predicts {net.num_classes} classes, --dataset {args.dataset} '
                             f'has {num_classes}')
        return net
    net = cli.load_eval_model(args, ctx_list, num_classes, require_weights=require_weights)
    return deploy_flags.prepare_network(net, args, lambda: calibration_batches(args, net))


def calibration_batches(args, net):
    """INT8 calibration data: ``--num-calib-batches`` batches of ``--batch-size`` (default 8) centre crops."""
    batch_size = args.batch_size or deploy_flags.CALIB_BATCH_SIZE
    crop = args.crop_size or getattr(net, 'crop_size', CROP_SIZE)
    if args.benchmark:
        shape = (batch_size, 3, args.image_shape, args.image_shape)
        return [mx.nd.random.normal(shape=shape) for _ in range(args.num_calib_batches)]
    calib_args = argparse.Namespace(**{**vars(args), 'split': args.calib_split, 'mode': 'val', 'crop_size': crop,
                                       'base_size': args.base_size or getattr(net, 'base_size', BASE_SIZE)})
    try:
        dataset = get_test_set(calib_args)
    except (OSError, ValueError) as err:
        raise SystemExit(f'error: --calib-split {args.calib_split}: no calibration images ({err})') from err
    if len(dataset) < batch_size:
        raise SystemExit(f'error: --calib-split {args.calib_split} has {len(dataset)} images, fewer than one '
                         f'calibration batch ({batch_size}); lower --batch-size')
    loader = get_dataloader(dataset, batch_size, shuffle=True, last_batch='discard', num_workers=args.workers,
                            seed=0)
    return (images for images, _ in loader)


def multi_eval_settings(args):
    """``predict`` keyword arguments for the multi-scale path, or None for the whole-image path."""
    if list(args.scales) == [1.0] and not args.flip and not args.multi_eval:
        return None
    return dict(base_size=args.base_size, crop_size=args.crop_size, scales=tuple(args.scales), flip=args.flip,
                fusion=args.fusion)


# ------------------------------------------------------------------------------------------------ prediction
def whole_image_logits(net, images, ctx_list):
    """Logits (C, H, W) per image: runs of equal-size images are stacked and split over the devices."""
    outputs = []
    start = 0
    while start < len(images):
        stop = start + 1
        while stop < len(images) and images[stop].shape == images[start].shape:
            stop += 1
        batch = mx.nd.stack(*images[start:stop]) if stop - start > 1 else images[start].expand_dims(0)
        devices = ctx_list[:batch.shape[0]]
        parts = mx.gluon.utils.split_and_load(batch, devices, even_split=False)
        for logits in [predict_whole(net, part) for part in parts]:
            outputs.extend(logits[i] for i in range(logits.shape[0]))
        start = stop
    return outputs


def predict_batch(net, images, ctx_list, settings, num_classes):
    """Class-id maps (numpy int64 (H, W)) of a list of normalised images (3, H, W)."""
    if settings is None:
        scores = whole_image_logits(net, images, ctx_list)
    else:
        scores = parallel_predict(net, images, ctx_list, num_classes=num_classes, **settings)
    return [s.argmax(axis=0).asnumpy().astype(np.int64) for s in scores]


def prediction_path(out_dir, dataset, mode, image_name):
    """PNG path of one prediction: VOC test-server layout in mode test for VOC, else ``out_dir/predictions``."""
    stem = os.path.splitext(os.path.basename(image_name))[0] + '.png'
    if mode == 'test' and dataset in VOC_DATASETS:
        return os.path.join(out_dir, VOC_TEST_LAYOUT, stem)
    return os.path.join(out_dir, 'predictions', stem)


def save_prediction_png(pred, path, dataset, palette=None):
    """Palette PNG of class ids; for ADE20K the palette's +1 writes ``pred + pred_offset`` (ids 1..150)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    get_color_pallete(pred, dataset, palette).save(path)


# ------------------------------------------------------------------------------------------------ runs
def run_dataset(net, dataset, args, ctx_list):
    """Predict every image of ``dataset``; update the metric (labelled modes) and write PNGs (``--save-pred``)."""

    settings = multi_eval_settings(args)
    labelled = args.mode != 'test'
    metric = SegmentationMetric(dataset.NUM_CLASS, present_only=args.miou == 'present') if labelled else None
    batch_size = args.batch_size or len(ctx_list)
    loader = get_dataloader(dataset, batch_size, shuffle=False, last_batch='keep', num_workers=args.workers,
                            seed=0, batchify='list')
    saved, index = 0, 0
    palette = cli.dataset_palette(args) if args.save_pred else None
    start = time.time()
    bar = tqdm(loader, total=len(loader), desc='test', dynamic_ncols=True)
    for images, second in bar:
        preds = predict_batch(net, images, ctx_list, settings, dataset.NUM_CLASS)
        names = second if not labelled else dataset.images[index:index + len(preds)]
        if labelled:
            metric.update([m.asnumpy() for m in second], preds)
            pix_acc, miou = metric.get()
            bar.set_description(f'pixAcc {100 * pix_acc:.2f} mIoU {100 * miou:.2f}')
        if args.save_pred:
            for pred, name in zip(preds, names):
                save_prediction_png(pred, prediction_path(args.out_dir, args.dataset, args.mode, name), args.dataset,
                                    palette)
                saved += 1
        index += len(preds)
    bar.close()
    return metric, index, time.time() - start, saved


def run_benchmark(net, args, ctx):
    """Forward latency of the network on dummy (batch, 3, S, S) inputs after a warm-up."""
    batch = args.batch_size or 1
    shape = (batch, 3, args.image_shape, args.image_shape)
    data = mx.nd.random.uniform(-1.0, 1.0, shape=shape, ctx=ctx)
    for _ in range(args.warmup_iterations):
        predict_whole(net, data).wait_to_read()
    start = time.time()
    for _ in tqdm(range(args.num_iterations), desc='benchmark', dynamic_ncols=True):
        predict_whole(net, data).wait_to_read()
    seconds = time.time() - start
    images = batch * args.num_iterations
    record = {'benchmark': True, 'image_shape': list(shape), 'iterations': args.num_iterations,
              'warmup_iterations': args.warmup_iterations, 'ms_per_img': 1000.0 * seconds / images,
              'img_per_sec': images / seconds, 'device': str(ctx)}
    print(f'benchmark {shape} on {ctx}: {record["ms_per_img"]:.2f} ms/img, {record["img_per_sec"]:.2f} img/s '
          f'({args.num_iterations} iterations after {args.warmup_iterations} warm-up)')
    return record


def main(args):
    """Evaluate (or benchmark) as the flags say; returns the metrics dict written to ``<out-dir>/metrics.json``."""
    ctx_list = cli.get_contexts(args)
    if args.benchmark:
        net = load_network(args, ctx_list[:1], require_weights=False)
        net.hybridize(static_alloc=True, static_shape=True)
        record = run_benchmark(net, args, ctx_list[0])
        record['precision'] = getattr(net, 'precision', 'fp32')
        write_json(os.path.join(args.out_dir, 'metrics.json'), record)
        return record

    net = load_network(args, ctx_list, len(cli.dataset_classes(args)))
    if args.export and not args.eval:
        return {'export': args.export, 'precision': net.precision}
    args.base_size = args.base_size or getattr(net, 'base_size', BASE_SIZE)
    args.crop_size = args.crop_size or getattr(net, 'crop_size', CROP_SIZE)
    settings = multi_eval_settings(args)
    if settings is not None and len(ctx_list) == 1 and not isinstance(net, deploy.DeployedNet):
        net = deploy.convert(net, 'fp32', ctx=ctx_list[0])   # main output only, a static graph per window shape
    elif settings is None or len(ctx_list) == 1:
        net.hybridize()   # several devices on the multi-scale path run imperatively in threads, as in GluonCV
    dataset = get_test_set(args)
    print(f'{args.dataset}/{args.split} mode {args.mode}: {len(dataset)} images on {ctx_list}; '
          + ('whole-image single scale' if settings is None else
             f'multi-scale {settings["scales"]} flip={args.flip} base {args.base_size} crop {args.crop_size} '
             f'fusion {args.fusion}'))
    metric, count, seconds, saved = run_dataset(net, dataset, args, ctx_list)
    record = {'dataset': args.dataset, 'split': args.split, 'mode': args.mode, 'num_images': count,
              'weights': args.saved_graph or args.resume or args.model_zoo,
              'precision': getattr(net, 'precision', 'fp32'), 'scales': list(args.scales), 'flip': args.flip,
              'multi_scale': settings is not None, 'fusion': args.fusion if settings is not None else None,
              'base_size': args.base_size, 'crop_size': args.crop_size, 'seconds': seconds,
              'img_per_sec': count / seconds if seconds > 0 else None, 'saved_predictions': saved}
    if metric is not None:
        pix_acc, miou = metric.get()
        class_iou = metric.get_class_iou()
        record.update(pixAcc=pix_acc, mIoU=miou,
                      class_iou={name: float(v) for name, v in zip(dataset.CLASSES, class_iou)})
        print(class_iou_table(class_iou, dataset.CLASSES))
        print(f'pixAcc {100 * pix_acc:.2f}  {cli.miou_name(metric.present_only)} {100 * miou:.2f}  ({count} images, '
              f'{seconds:.1f} s)')
    if saved:
        where = prediction_path(args.out_dir, args.dataset, args.mode, 'x')
        print(f'{saved} prediction PNGs in {os.path.dirname(where)}')
    write_json(os.path.join(args.out_dir, 'metrics.json'), record)
    return record


if __name__ == '__main__':
    cli.run(main, parse_args)
