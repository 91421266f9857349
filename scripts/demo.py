"""Segment one image: write a palette mask and an overlay, and print the classes found.

Examples::

    python scripts/demo.py photo.jpg --model-zoo deeplab_resnet101_voc --out results/photo
    python scripts/demo.py photo.jpg --model deeplab --backbone resnet101 --dataset pascal_voc \\
        --resume runs/pascal_voc/deeplab/res101/checkpoint.params --no-cuda
    python scripts/demo.py photo.jpg --model-zoo psp_resnet101_ade --scales 0.75 1.0 1.25 --flip
    python scripts/demo.py photo.jpg --model-zoo deeplab_resnet101_voc --label photo.png --caption 'held-out image'

Writes ``<out>_mask.png`` (class ids with the dataset's palette) and ``<out>_overlay.png`` (mask blended over the
photograph); with ``--label MASK`` also ``<out>_panels.png``: photo | ground truth | prediction with a class
legend, headed by ``--caption`` and the pixel accuracy. With ``--scales``/``--flip`` or ``--base-size`` the
prediction uses GluonCV's multi-scale evaluation (``segzoo.inference.predict``: the long side resized to
``--base-size`` x scale) with softmax fusion; by default the network runs once on the whole image.
"""
import os

import mxnet as mx
import numpy as np
from PIL import Image

from segzoo import cli
from segzoo.data import DatasetError
from segzoo.data.transforms import ImageNormalize
from segzoo.deploy import flags as deploy_flags
from segzoo.inference import predict
from segzoo.model_zoo import model_dataset
from segzoo.utils.viz import save_panels, save_prediction

def parse_args(argv=None):
    """Parse the demo's command line (``argv=None`` reads ``sys.argv``)."""
    parser = cli.base_parser('Segment one image with a segzoo / GluonCV model.')
    parser.add_argument('image', help='input image (any format PIL reads)')
    parser.add_argument('--out', type=str, default=None,
                        help='output prefix: writes <out>_mask.png and <out>_overlay.png '
                             '(default: the image name in the current folder)')
    parser.add_argument('--label', type=str, default=None, metavar='MASK',
                        help="the image's ground-truth mask (in --dataset's encoding): also write <out>_panels.png")
    parser.add_argument('--caption', type=str, default=None,
                        help='headline of the panels, e.g. "training image" or "held-out image"')
    add_prediction_args(parser)    # int8: ranges calibrated on the image itself
    args = parser.parse_args(argv)
    check_prediction_args(parser, args)
    return args


def add_prediction_args(parser):
    """The flags of scripts/demo.py and scripts/predict.py: overlay, multi-scale, model, data, devices, precision."""
    parser.add_argument('--alpha', type=float, default=0.5, help='weight of the mask colours in the overlay')
    parser.add_argument('--scales', type=float, nargs='+', default=[1.0],
                        help='multi-scale evaluation: scales of --base-size (default: one pass on the whole image)')
    parser.add_argument('--flip', action='store_true', help='add horizontally flipped passes')
    cli.add_model_args(parser)
    cli.add_data_args(parser, default_dataset='pascal_voc')
    cli.add_device_args(parser)
    deploy_flags.add_precision_args(parser, calibration=False)   # int8 calibrates on the images it is given
    parser.set_defaults(base_size=None, crop_size=None, pretrained_base=False)


def check_prediction_args(parser, args):
    """Exit through ``parser.error`` unless some weights are named and the precision and --alpha flags fit;
    ``--model-zoo NAME`` predicts its zoo dataset's classes (unless ``--dataset folder`` or ``--classes`` name
    others, e.g. for a zoo model fine-tuned with ``--reset-classes``)."""
    cli.check_args(parser, args)
    deploy_flags.check_precision_args(parser, args)
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f'--alpha must be in [0, 1], got {args.alpha}')
    if args.model_zoo and args.dataset != 'folder' and not getattr(args, 'classes', None):
        try:
            args.dataset = model_dataset(args.model_zoo)    # the classes the zoo model predicts
        except ValueError as err:
            parser.error(f'--model-zoo: {err}')
    if not cli.has_weights(args):
        parser.error('no weights: pass --model-zoo NAME (published weights), --resume PATH or --pretrained')


def read_image(path):
    """uint8 (H, W, 3) RGB array of an image file; a clear error names an unreadable file."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert('RGB'))
    except (OSError, ValueError) as err:
        raise SystemExit(f'error: cannot read image {path!r}: {err}') from err


def read_label(args):
    """The ``--label`` mask as class ids (-1 ignore); errors name the file."""
    try:
        label = cli.label_reader(args)(args.label)
    except (DatasetError, FileNotFoundError) as err:
        raise SystemExit(f'error: --label: {err}') from err
    return label


def segment(net, rgb, ctx, scales=(1.0,), flip=False, base_size=None, crop_size=None):
    """Class ids (H, W) int64 of a uint8 RGB image.

    One forward pass on the whole image by default; with more scales, ``flip`` or a ``base_size``, GluonCV's
    multi-scale protocol at ``base_size`` (default: the network's) / ``crop_size`` with softmax fusion.
    """
    image = mx.nd.array(ImageNormalize()(rgb), ctx=ctx)
    if list(scales) == [1.0] and not flip and base_size is None:
        scores = predict(net, image, fusion='softmax')
    else:
        scores = predict(net, image, base_size=base_size or net.base_size, crop_size=crop_size or net.crop_size,
                         scales=tuple(scales), flip=flip, fusion='softmax')
    return scores.argmax(axis=0).asnumpy().astype(np.int64)


def class_shares(pred, class_names):
    """``[(class name, share of pixels)]`` of the classes present, largest first."""
    counts = np.bincount(pred.ravel(), minlength=len(class_names))
    order = np.argsort(-counts, kind='stable')
    return [(class_names[i], counts[i] / pred.size) for i in order if counts[i] > 0]


def main(args):
    """Run the demo; returns ``{'mask': path, 'overlay': path, 'panels': path or None, 'classes': {name: share}}``."""
    ctx_list = cli.get_contexts(args)[:1]
    rgb = read_image(args.image)
    classes, palette = cli.dataset_classes(args), cli.dataset_palette(args)
    label = read_label(args) if args.label else None
    if label is not None and label.shape != rgb.shape[:2]:
        raise SystemExit(f'error: --label {args.label} is {label.shape[1]}x{label.shape[0]} but {args.image} is '
                         f'{rgb.shape[1]}x{rgb.shape[0]} (WxH)')
    net = cli.load_eval_model(args, ctx_list, len(classes))
    net = deploy_flags.prepare_network(net, args, lambda: [mx.nd.array(ImageNormalize()(rgb)).expand_dims(0)])
    net.hybridize()
    pred = segment(net, rgb, ctx_list[0], args.scales, args.flip, args.base_size, args.crop_size)
    prefix = args.out or os.path.splitext(os.path.basename(args.image))[0]
    mask_path, overlay_path = save_prediction(prefix, rgb, pred, args.dataset, args.alpha, palette)
    panels_path = None
    if label is not None:
        panels_path = save_panels(f'{prefix}_panels.png', rgb, label, pred, classes, args.dataset, palette,
                                  args.caption)
    shares = class_shares(pred, classes)
    print(f'{args.image}: {rgb.shape[1]}x{rgb.shape[0]} pixels')
    for name, share in shares:
        print(f'  {name:<16} {100 * share:6.2f} %')
    print(f'wrote {mask_path} and {overlay_path}' + (f' and {panels_path}' if panels_path else ''))
    return {'mask': mask_path, 'overlay': overlay_path, 'panels': panels_path, 'classes': dict(shares)}


if __name__ == '__main__':
    cli.run(main, parse_args)
