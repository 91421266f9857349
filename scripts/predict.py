"""Segment many images: palette masks, overlays, a summary.csv of class shares, and optional truth panels.

Examples::

    python scripts/predict.py photos/ --model-zoo deeplab_resnet101_voc --out results/
    python scripts/predict.py 'shots/*.jpg' one.png --model deeplab --backbone resnet_tiny --aux \\
        --resume runs/folder/deeplab/mine/checkpoint.params --dataset folder --dataset-root DIR --out results/
    python scripts/predict.py DIR/images/val --resume model.params --model deeplab --classes DIR/classes.txt \\
        --labels DIR/masks/val --out results/

INPUT is any mix of files, folders (their .jpg/.jpeg/.png files) and glob patterns. For every image
``<out>/<name>_mask.png`` (class ids with the palette) and ``<out>/<name>_overlay.png`` are written; with
``--labels DIR`` also ``<name>_panels.png`` (photo | ground truth ``DIR/<name>.png`` | prediction, with a class
legend and the pixel accuracy). ``<out>/summary.csv`` has one row per image with each class's share of its
pixels. Unreadable files are skipped with a warning naming them, and the exit status is then 1.

Whole images of equal size run as one batch (``--batch-size`` images are read at a time); ``--scales``,
``--flip`` or ``--base-size`` use GluonCV's multi-scale evaluation per image, as scripts/demo.py does;
``--precision fused|bf16|int8`` runs the network through ``segzoo.deploy`` (int8 calibrated on the first image).
"""
import csv
import glob
import os
import sys

import mxnet as mx
import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo import add_prediction_args, check_prediction_args, segment  # noqa: E402  (shared with scripts/demo.py)

from segzoo import cli  # noqa: E402
from segzoo.data import DatasetError  # noqa: E402
from segzoo.data.base import read_image  # noqa: E402
from segzoo.data.folder import (IMAGE_EXTENSIONS, folder_label_lut, read_class_file, read_label,  # noqa: E402
                                read_palette_file)
from segzoo.data.transforms import ImageNormalize  # noqa: E402
from segzoo.deploy import flags as deploy_flags  # noqa: E402
from segzoo.inference import predict_whole  # noqa: E402
from segzoo.utils.fileio import atomic_write  # noqa: E402
from segzoo.utils.viz import class_palette, labelled_accuracy, save_panels, save_prediction  # noqa: E402


def parse_args(argv=None):
    """Parse the command line (``argv=None`` reads ``sys.argv``)."""
    parser = cli.base_parser('Segment images, folders or globs with a segzoo / GluonCV model.')
    parser.add_argument('inputs', nargs='+', metavar='INPUT', help='image files, folders or glob patterns')
    parser.add_argument('--out', type=str, required=True, help='output folder')
    parser.add_argument('--classes', type=str, default=None, metavar='FILE',
                        help='class names, one per line (e.g. a folder dataset\'s classes.txt), instead of --dataset')
    parser.add_argument('--palette', type=str, default=None, metavar='FILE',
                        help='with --classes: one "R G B" per class (default: palette.txt beside FILE, if any)')
    parser.add_argument('--labels', type=str, default=None, metavar='DIR',
                        help='ground-truth masks DIR/<name>.png: also write <name>_panels.png')
    parser.add_argument('--batch-size', type=int, default=4, help='images read and predicted together')
    add_prediction_args(parser)    # int8: ranges calibrated on the first image
    args = parser.parse_args(argv)
    check_prediction_args(parser, args)
    if args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    return args


def class_spec(args):
    """``(class names, flat palette or None, read_label(path) -> ids)`` from ``--classes`` or ``--dataset``."""
    if not args.classes:
        return cli.dataset_classes(args), cli.dataset_palette(args), cli.label_reader(args)
    try:
        names = read_class_file(args.classes)
        palette_file = args.palette or os.path.join(os.path.dirname(args.classes), 'palette.txt')
        colors = read_palette_file(palette_file, len(names)) if os.path.isfile(palette_file) else None
    except (OSError, DatasetError) as err:
        raise SystemExit(f'error: --classes/--palette: {err}') from err
    if args.palette and colors is None:
        raise SystemExit(f'error: --palette {args.palette} does not exist')
    lut = folder_label_lut(len(names))
    return names, class_palette(colors), lambda path: read_label(path, lut, colors)


def expand_inputs(inputs):
    """``(image paths, missing inputs)``: folders give their image files, globs their matches, files themselves."""
    paths, missing = [], []
    for item in inputs:
        if os.path.isdir(item):
            found = [os.path.join(item, n) for n in sorted(os.listdir(item))
                     if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
        else:
            found = [item] if os.path.isfile(item) else []
        if not found:
            missing.append(item)
        paths.extend(found)
    return list(dict.fromkeys(paths)), missing


def _warn(message):
    tqdm.write(f'warning: {message}', file=sys.stderr)


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def predict_images(net, images, ctx, args):
    """Class ids (H, W) of each uint8 RGB image: equal sizes batched on the whole-image path."""
    if list(args.scales) != [1.0] or args.flip or args.base_size is not None:
        return [segment(net, rgb, ctx, args.scales, args.flip, args.base_size, args.crop_size) for rgb in images]
    preds = [None] * len(images)
    by_size = {}
    for index, rgb in enumerate(images):
        by_size.setdefault(rgb.shape, []).append(index)
    normalize = ImageNormalize()
    for indices in by_size.values():
        batch = mx.nd.array(np.stack([normalize(images[i]) for i in indices]), ctx=ctx)
        ids = predict_whole(net, batch).argmax(axis=1).asnumpy().astype(np.int64)
        for i, pred in zip(indices, ids):
            preds[i] = pred
    return preds


def _calibration_batch(paths):
    """``--precision int8``: the first readable input image, as the one calibration batch."""
    for path in paths:
        rgb = _read(path, [])
        if rgb is not None:
            return [mx.nd.array(ImageNormalize()(rgb)).expand_dims(0)]
    raise SystemExit('error: --precision int8: no readable input image to calibrate on')


def _read(path, skipped):
    try:
        return np.asarray(read_image(path))
    except (DatasetError, FileNotFoundError) as err:
        _warn(f'skipped {path}: {err}')
        skipped.append(path)
        return None


def write_summary(path, rows, class_names, with_accuracy):
    """summary.csv: image, width, height, [pixel accuracy], then each class's share of the image's pixels."""
    header = ['image', 'width', 'height'] + (['pixel_accuracy'] if with_accuracy else []) + list(class_names)

    def write(tmp):
        with open(tmp, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
    atomic_write(path, write)


def main(args):
    """Segment every input; returns ``{'written': [prefixes], 'skipped': [paths], 'summary': path}``."""
    class_names, palette, label_of = class_spec(args)
    paths, missing = expand_inputs(args.inputs)
    skipped = list(missing)
    for item in missing:
        _warn(f'skipped {item}: no such file, folder of images or matching glob')
    stems = {}
    for path in paths:
        stems.setdefault(_stem(path), []).append(path)
    clashes = {stem: p for stem, p in stems.items() if len(p) > 1}
    if clashes:
        raise SystemExit(f'error: several inputs would write the same outputs: {clashes}')
    ctx_list = cli.get_contexts(args)[:1]
    net = cli.load_eval_model(args, ctx_list, len(class_names))
    net = deploy_flags.prepare_network(net, args, lambda: _calibration_batch(paths))
    net.hybridize()
    os.makedirs(args.out, exist_ok=True)
    rows, written = [], []
    with_labels = args.labels is not None
    bar = tqdm(total=len(paths), desc='predict', dynamic_ncols=True)
    for start in range(0, len(paths), args.batch_size):
        chunk = [(p, _read(p, skipped)) for p in paths[start:start + args.batch_size]]
        chunk = [(p, rgb) for p, rgb in chunk if rgb is not None]
        for (path, rgb), pred in zip(chunk, predict_images(net, [rgb for _, rgb in chunk], ctx_list[0], args)):
            prefix = os.path.join(args.out, _stem(path))
            save_prediction(prefix, rgb, pred, args.dataset, args.alpha, palette)
            shares = np.bincount(pred.ravel(), minlength=len(class_names))[:len(class_names)] / pred.size
            accuracy = []
            if with_labels:
                accuracy = [_write_panels(prefix, path, rgb, pred, class_names, palette, label_of, args)]
            rows.append([path, rgb.shape[1], rgb.shape[0]] + accuracy + [f'{s:.4f}' for s in shares])
            written.append(prefix)
        bar.update(len(paths[start:start + args.batch_size]))
    bar.close()
    summary = os.path.join(args.out, 'summary.csv')
    write_summary(summary, rows, class_names, with_labels)
    print(f'{len(written)} images segmented into {args.out} (summary.csv)'
          + (f'; {len(skipped)} skipped: {", ".join(skipped)}' if skipped else ''))
    return {'written': written, 'skipped': skipped, 'summary': summary}


def _write_panels(prefix, path, rgb, pred, class_names, palette, label_of, args):
    """``<prefix>_panels.png`` against ``--labels DIR/<name>.png``; returns the pixel accuracy ('' without label)."""
    label_path = os.path.join(args.labels, _stem(path) + '.png')
    label = None
    if not os.path.isfile(label_path):
        _warn(f'no ground truth {label_path} for {path}: its panels show none')
    else:
        try:
            label = label_of(label_path)
        except DatasetError as err:
            _warn(f'ground truth of {path} not used: {err}')
        if label is not None and label.shape != pred.shape:
            _warn(f'ground truth {label_path} is {label.shape[1]}x{label.shape[0]} but {path} is '
                          f'{pred.shape[1]}x{pred.shape[0]}: not used')
            label = None
    save_panels(f'{prefix}_panels.png', rgb, label, pred, class_names, args.dataset, palette, _stem(path))
    accuracy = None if label is None else labelled_accuracy(label, pred)
    return '' if accuracy is None else f'{accuracy:.4f}'


if __name__ == '__main__':
    sys.exit(1 if cli.run(main, parse_args)['skipped'] else 0)
