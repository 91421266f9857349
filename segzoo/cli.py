"""Command-line pieces shared by ``train.py``, ``test.py`` and ``scripts/demo.py``.

Flag names and meanings follow GluonCV's ``scripts/segmentation`` scripts. Where GluonCV's flag was broken the
meaning is the documented one (see the README):

* ``--model-zoo NAME`` starts from that zoo model's published weights (GluonCV's old behaviour, which the published
  recipes rely on); ``--no-pretrained`` turns that off. With ``--model/--backbone`` the zoo weights load only with an
  explicit ``--pretrained``.
* Devices: ``--ngpus N`` GPUs, or with ``--no-cuda`` CPU contexts: ``--no-cuda`` alone (or ``--ngpus 0``) gives
  ``[cpu(0)]``; ``--no-cuda --ngpus N`` gives ``[cpu(0), ..., cpu(N-1)]``, N CPU "devices" that split the batch
  exactly as N GPUs would (used by the tests, and for SyncBN on CPU).
* ``--resume PATH``: a ``.params`` file loads weights only (test.py, demo.py, and train.py's "new stage"); train.py
  also takes a run directory or its ``checkpoint.json`` and then continues the full state (``segzoo.checkpoint``).
* Run directory: ``runs/<dataset>/<method>/<checkname>/`` unless ``--save-dir``; for ``--model-zoo`` the method is
  the zoo name's first token (``deeplab_resnet101_coco`` -> ``deeplab``), so the published VOC stage 2 finds stage 1's
  ``runs/pascal_aug/deeplab/res101/checkpoint.params``.
"""
import argparse
import logging
import os
import re
import sys

import mxnet as mx
from tqdm import tqdm

from .data.base import BASE_SIZE, CROP_SIZE
from .data.transforms import RECIPES
from .data import DATASETS, DatasetError
from .data.folder import check_folder, folder_label_lut, read_classes, read_label, read_palette
from .model_zoo import get_model, get_segmentation_model, list_models
from .models import METHODS, get_norm_layer
from .models.resnet import BACKBONES
from .models.weights import ClassCountError
from .utils.viz import class_palette
from .utils.parallel import ensure_engine_threads, engine_threads_needed

__all__ = ['run', 'UsageError', 'usage_error', 'FAILURES', 'KVSTORES', 'check_args', 'base_parser',
           'add_model_args', 'add_data_args', 'add_device_args', 'add_miou_arg', 'miou_name', 'get_contexts',
           'get_kvstore', 'get_norm_layer', 'resolve_pretrained', 'has_weights', 'load_eval_model', 'check_num_classes',
           'check_folder_dataset', 'dataset_classes', 'dataset_palette', 'label_reader',
           'method_name', 'build_model', 'run_dir', 'setup_logger']


# Exceptions that report bad inputs or a failing environment (a file, a folder, a device, the data): cli.run prints
# them as one ``error:`` line with exit status 1 (a traceback only with --debug).
FAILURES = (OSError, ValueError, RuntimeError)        # mx.base.MXNetError is a RuntimeError
# --kvstore values: MXNet's single-process ones, ps-lite's (dist_async is refused with its reason), Horovod.
KVSTORES = ('local', 'device', 'nccl', 'dist_sync', 'dist_device_sync', 'dist_async', 'horovod')


class UsageError(SystemExit):
    """A flag value that cannot work, found after parsing; its message is the ``error: ...`` line and
    :func:`run` exits with status 2 (argparse's status for usage errors). Build with :func:`usage_error`."""


def usage_error(message):
    """The :class:`UsageError` ``error: <message>``."""
    return UsageError(f'error: {message}')


def _error_line(err):
    """``error: ...`` for an exception: its message without the C++ traceback MXNet embeds, plus its notes (the
    loader's 'while loading item N ...')."""
    text = re.sub(r'Traceback \(most recent call last\):\n(?:[ \t][^\n]*\n)*', '', str(err))
    message = '\n'.join(line for line in text.splitlines() if line.strip()) or type(err).__name__
    notes = getattr(err, '__notes__', None)
    if notes:
        message += ' (' + '; '.join(notes) + ')'
    return message if message.startswith('error:') else f'error: {message}'


def run(main, parse_args, argv=None):
    """Entry point of train.py, test.py and the scripts: parse the flags, make sure MXNet's CPU engine has the
    workers SyncBN on CPU contexts needs (this may restart the process once, see ``segzoo.utils.parallel``), run
    ``main(args)`` and return its result.

    Bad input ends in one ``error: ...`` line on stderr naming the flag or file, without a traceback: exit status 2
    for usage errors (argparse's and :class:`UsageError`), 1 for failures (:data:`FAILURES`, ``SystemExit('error:
    ...')``), 130 for Ctrl-C. ``--debug`` re-raises instead, with the traceback.
    """
    debug = '--debug' in (sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        if getattr(args, 'no_cuda', False):
            ensure_engine_threads(engine_threads_needed(get_contexts(args), args.syncbn))
        return main(args)
    except UsageError as err:
        if debug:
            raise
        _report(err)
        raise SystemExit(2) from None
    except SystemExit as err:
        if not isinstance(err.code, str):
            raise
        _report(err)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        if debug:
            raise
        _report('error: interrupted')
        raise SystemExit(130) from None
    except FAILURES as err:
        if debug:
            raise
        _report(err)
        raise SystemExit(1) from None


def _report(err):
    """Print the error line on stderr, on a line of its own: open progress bars are closed first."""
    for bar in list(getattr(tqdm, '_instances', ())):
        bar.close()
    print(_error_line(err) if isinstance(err, BaseException) else err, file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line, ``error: ...`` (exit status 2), like every other segzoo error."""

    def error(self, message):
        self.exit(2, f'error: {message} (see {self.prog} --help)\n')


def check_args(parser, args):
    """Refuse, through ``parser.error`` (exit status 2), flag values that cannot work, before anything is built or
    written: unknown model, zoo name, backbone, dataset or kvstore names, and sizes that are zero or negative.
    Checks only the flags ``args`` has (each script adds its own groups)."""
    if getattr(args, 'model_zoo', None):
        if args.model_zoo not in list_models():
            parser.error(f'--model-zoo {args.model_zoo}: unknown name; valid names: {", ".join(list_models())}')
    elif hasattr(args, 'model'):
        if args.model not in METHODS:
            parser.error(f'--model {args.model}: unknown method; valid methods: {", ".join(METHODS)}')
        if args.backbone not in BACKBONES:
            parser.error(f'--backbone {args.backbone}: unknown backbone; valid backbones: '
                         f'{", ".join(sorted(BACKBONES))}')
    if hasattr(args, 'dataset') and args.dataset not in DATASETS:
        parser.error(f'--dataset {args.dataset}: unknown dataset; valid names: {", ".join(DATASETS)}')
    if getattr(args, 'kvstore', None) and args.kvstore not in KVSTORES:
        parser.error(f'--kvstore {args.kvstore}: unknown kvstore; valid values: {", ".join(KVSTORES)}')
    for flag in ('crop_size', 'base_size', 'batch_size', 'test_batch_size'):
        value = getattr(args, flag, None)
        if value is not None and value <= 0:
            parser.error(f'--{flag.replace("_", "-")} must be positive, got {value}')
    for flag in ('workers', 'ngpus'):
        value = getattr(args, flag, None)
        if value is not None and value < 0:
            parser.error(f'--{flag} must be >= 0, got {value}')


def base_parser(description):
    """An ``ArgumentParser`` that shows the defaults in ``--help``, reports usage errors as one ``error:`` line and
    takes ``--debug`` (every segzoo script uses it)."""
    parser = _Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--debug', action='store_true', help='show the Python traceback of an error')
    return parser


def add_model_args(parser):
    """Add the model flags (``--model``, ``--model-zoo``, ``--backbone``, ``--aux``, ``--syncbn``, ...)."""
    group = parser.add_argument_group('model')
    group.add_argument('--model', type=str, default='fcn',
                       help='method for get_segmentation_model: fcn, psp, deeplab (GluonCV), deeplabplus, '
                            'deeplabv3_composer (Composer)')
    group.add_argument('--model-zoo', type=str, default=None, metavar='NAME',
                       help='build a model-zoo network, e.g. deeplab_resnet101_coco; loads its published weights '
                            'unless --no-pretrained')
    group.add_argument('--pretrained', dest='pretrained', action='store_true', default=None,
                       help='load published zoo weights (implied by --model-zoo)')
    group.add_argument('--no-pretrained', dest='pretrained', action='store_false',
                       help='with --model-zoo: start from ImageNet backbone / random weights instead')
    group.add_argument('--backbone', type=str, default='resnet50',
                       help="backbone: resnet50, resnet101, resnet152 (GluonCV's deep stem), resnet50_v1b, "
                            "resnet101_v1b, resnet152_v1b (torchvision's layout, Composer's), resnet_tiny, "
                            "resnet_tiny_v1b")
    group.add_argument('--aux', action='store_true', default=False, help='add the auxiliary FCN head on stage 3')
    group.add_argument('--syncbn', action='store_true', default=False,
                       help='mx.gluon.contrib.nn.SyncBatchNorm across the devices (threaded forwards)')
    group.add_argument('--no-pretrained-base', dest='pretrained_base', action='store_false', default=True,
                       help='do not load ImageNet weights into the backbone (offline/random start)')
    group.add_argument('--backbone-weights', type=str, default=None, metavar='SOURCE',
                       help="the backbone's ImageNet weights: IMAGENET1K_V1 or IMAGENET1K_V2 (torchvision's files, "
                            "for *_v1b backbones; Composer's backbone_weights) or a GluonCV file name; default: "
                            "GluonCV's file for the backbone")
    group.add_argument('--initializers', nargs='*', default=(), metavar='NAME',
                       help="Composer's initializers, kaiming_normal and/or bn_ones: applied to what no file sets "
                            "(the heads when ImageNet weights load)")
    group.add_argument('--model-root', type=str, default=None,
                       help='where published weights are cached (default: $MXNET_HOME/models, else ~/.mxnet/models)')
    group.add_argument('--resume', type=str, default=None, metavar='PATH',
                       help='a .params file (GluonCV\'s or checkpoint.params): weights only; train.py also takes a '
                            'run directory or its checkpoint.json: the full state, continued exactly')
    return group


def add_data_args(parser, default_dataset='pascal_aug'):
    """Add ``--dataset``, ``--dataset-root``, ``--workers``, ``--base-size``, ``--crop-size``."""
    group = parser.add_argument_group('data')
    group.add_argument('--dataset', type=str, default=default_dataset,
                       help='pascal_voc, pascal_aug, coco, ade20k, citys, or folder: your own data in '
                            '--dataset-root')
    group.add_argument('--dataset-root', type=str, default=None,
                       help="the dataset's root folder (default: the dataset's ~/.mxnet/datasets/ folder); for "
                            "--dataset folder: DIR with classes.txt, images/<split>/, masks/<split>/")
    group.add_argument('--workers', type=int, default=16, help='DataLoader worker processes')
    group.add_argument('--base-size', type=int, default=BASE_SIZE, help='base image size')
    group.add_argument('--crop-size', type=int, default=CROP_SIZE, help='crop size')
    group.add_argument('--augment', type=str, default='gluoncv', choices=tuple(RECIPES),
                       help="data pipelines: GluonCV's, or Composer's ADE20K recipe (square resize, class-ratio "
                            "crop, photometric distortion; val resized to --crop-size squared)")
    return group


def add_miou_arg(group):
    """``--miou all|present``: GluonCV's mean IoU over every class, or Composer's MIoU over the classes present
    (``SegmentationMetric(present_only=...)``)."""
    group.add_argument('--miou', type=str, default='all', choices=('all', 'present'),
                       help="all: GluonCV's mean over every class; present: Composer's MIoU, the mean over the "
                            "classes present in the labels or predictions (equal on a full validation set)")


def miou_name(present_only):
    """How logs and tables name the mean IoU."""
    return 'mIoU(present classes, Composer)' if present_only else 'mIoU'


def add_device_args(parser):
    """Add ``--ngpus``, ``--no-cuda``, ``--kvstore``, ``--dtype``."""
    group = parser.add_argument_group('devices')
    group.add_argument('--ngpus', type=int, default=None,
                       help='number of GPUs (default: all visible); with --no-cuda, number of CPU contexts')
    group.add_argument('--no-cuda', action='store_true', default=False, help='run on CPU')
    group.add_argument('--kvstore', type=str, default=None,
                       help="kvstore for gradient reduction (default: 'device' on GPUs, 'local' on CPU)")
    group.add_argument('--dtype', type=str, default='float32', choices=('float32', 'float16'),
                       help='float16 casts the model and keeps float32 master weights (GPU only)')
    return group


def get_contexts(args):
    """Contexts from ``--ngpus`` / ``--no-cuda``.

    Returns
    -------
    list of mx.Context
        ``[gpu(0), ..., gpu(N-1)]``; with ``--no-cuda``, ``[cpu(0)]`` or ``[cpu(0), ..., cpu(N-1)]`` for ``--ngpus N``.
    """
    if args.no_cuda:
        return [mx.cpu(i) for i in range(max(args.ngpus or 1, 1))]
    num_visible = mx.context.num_gpus()
    ngpus = num_visible if args.ngpus is None else args.ngpus
    if ngpus <= 0 or num_visible == 0:
        raise usage_error(f'no GPU available (--ngpus {args.ngpus}, {num_visible} visible GPUs); '
                          'pass --no-cuda to run on CPU')
    if ngpus > num_visible:
        raise usage_error(f'--ngpus {ngpus} but only {num_visible} GPUs are visible')
    return [mx.gpu(i) for i in range(ngpus)]


def get_kvstore(args, ctx_list):
    """``--kvstore`` or the default: 'device' on GPUs, 'local' on CPU (GluonCV's choice)."""
    if args.kvstore:
        return args.kvstore
    return 'local' if ctx_list[0].device_type == 'cpu' else 'device'


def resolve_pretrained(args):
    """Whether published zoo weights load: ``--model-zoo`` unless ``--no-pretrained``, else ``--pretrained``."""
    if args.pretrained is None:
        return bool(args.model_zoo)
    return args.pretrained


def has_weights(args):
    """Whether the flags name weights to load: ``--resume PATH`` or published zoo weights."""
    return bool(args.resume or resolve_pretrained(args))


def load_eval_model(args, ctx_list, num_classes=None, require_weights=True):
    """The network of the model flags with its weights, for evaluation (test.py, scripts/demo.py).

    Exits with a message naming the flags when no weights are given (unless ``require_weights=False``, e.g. for a
    latency benchmark), when the weights do not fit the model flags, or when the network's class count differs
    from ``num_classes`` (the dataset's).
    """
    if require_weights and not has_weights(args):
        raise SystemExit('error: no weights to evaluate: pass --resume PATH (a .params file), --model-zoo NAME '
                         '(published weights) or --pretrained')
    try:
        net = build_model(args, ctx_list, weights=args.resume, num_classes=num_classes)
    except ValueError as err:
        what = f'--model-zoo {args.model_zoo}' if args.model_zoo else \
            f'--model {args.model} --backbone {args.backbone} --dataset {args.dataset}'
        raise SystemExit(f'error: the weights {args.resume!r} do not fit {what}: {err}') from err
    if num_classes is not None:
        check_num_classes(net, num_classes, args)
    return net


def check_num_classes(net, num_classes, args):
    """Exit with a message naming the weights and the dataset when ``net`` predicts another number of classes."""
    if net.num_classes != num_classes:
        _class_count_error(args, args.resume or args.model_zoo or 'the model', net.num_classes, num_classes)


def _class_count_error(args, source, predicted, num_classes):
    if hasattr(args, 'reset_classes'):      # train.py
        hint = 'add --reset-classes to load every other weight and train new classifiers for these classes'
    else:
        hint = f'use weights trained on {args.dataset} (or the matching --dataset)'
    raise SystemExit(f'error: {source} predicts {predicted} classes but --dataset {args.dataset} has {num_classes}; '
                     f'{hint}')


def dataset_classes(args):
    """Class names of ``--dataset``: the dataset's own, or ``classes.txt`` of ``--dataset folder``."""
    if args.dataset not in DATASETS:
        raise usage_error(f'unknown --dataset {args.dataset!r}; valid names: {", ".join(DATASETS)}')
    if args.dataset != 'folder':
        return DATASETS[args.dataset].CLASSES
    try:
        return read_classes(args.dataset_root)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f'error: --dataset folder: {err}') from err


def dataset_palette(args):
    """Flat colour palette of ``--dataset folder`` (palette.txt or generated), None for the named datasets."""
    if args.dataset != 'folder':
        return None
    try:
        return class_palette(read_palette(args.dataset_root, len(dataset_classes(args))))
    except DatasetError as err:
        raise SystemExit(f'error: {err}') from err


def label_reader(args):
    """``read(path) -> int32 (H, W)`` training ids (-1 ignore) of a mask file in ``--dataset``'s encoding (index
    PNGs; colour masks of ``--dataset folder`` through its palette.txt); errors name the file."""
    if args.dataset == 'folder':
        names = dataset_classes(args)
        lut, colors = folder_label_lut(len(names)), read_palette(args.dataset_root, len(names))
    else:
        lut, colors = DATASETS[args.dataset].LABEL_LUT, None
    return lambda path: read_label(path, lut, colors)


def check_folder_dataset(args, splits):
    """For ``--dataset folder``: the cheap check of `splits` (pairs, image headers, mask values and sizes);
    exits listing every problem with its file, so bad data fails before training rather than mid-epoch."""
    if args.dataset != 'folder':
        return
    dataset_classes(args)      # a clear error for a missing or bad classes.txt
    report = check_folder(args.dataset_root, splits, decode_images=False)
    if not report.ok:
        raise SystemExit(f'error: --dataset-root {args.dataset_root} has problems (full report: python '
                         f'scripts/datasets/folder.py {args.dataset_root}):\n' + report.format(problems_only=True))


def method_name(args):
    """The method of the model flags (``fcn``, ``deeplab`` ...): the zoo name's first token, or ``--model``."""
    if args.model_zoo:
        return args.model_zoo.split('_')[0]
    return args.model


def run_dir(args):
    """``--save-dir`` or ``runs/<dataset>/<method>/<checkname>``."""
    if getattr(args, 'save_dir', None):
        return args.save_dir
    return os.path.join('runs', args.dataset, method_name(args), getattr(args, 'checkname', 'default'))


def build_model(args, ctx_list, weights=None, dataset=None, num_classes=None):
    """Build the network named by the model flags, initialised on ``ctx_list``.

    With ``num_classes`` (e.g. a folder dataset's), the network predicts that many classes; weights for another
    count then exit with a one-line error, unless ``args.reset_classes`` (train.py ``--reset-classes``) loads
    every other weight and leaves the classifiers (``Segmentor.classifier_keys``) freshly initialised.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed model/device flags.
    ctx_list : list of mx.Context
    weights : str or None
        A ``.params`` file (GluonCV's or segzoo's ``checkpoint.params``) loaded strictly after construction.
    dataset : str or None
        Dataset deciding the class count for ``--model``; default ``args.dataset``.
    num_classes : int or None
        Class count of the network; default the dataset's (``--model``) or the zoo model's (``--model-zoo``).

    Returns
    -------
    segzoo Segmentor
        Its forward gives a tuple of logits ``(B, num_classes, H, W)``.
    """
    norm_layer, norm_kwargs = get_norm_layer(args.syncbn, len(ctx_list))
    if weights and not os.path.isfile(weights):
        raise SystemExit(f'error: weights file {weights!r} does not exist')
    reset = getattr(args, 'reset_classes', False)
    # which weights load is segzoo.models.weights' rule: the file, else published ones, else ImageNet + init
    common = dict(norm_layer=norm_layer, norm_kwargs=norm_kwargs, pretrained=weights or resolve_pretrained(args),
                  pretrained_base=(args.backbone_weights or None) if args.pretrained_base else False,
                  initializers=tuple(getattr(args, 'initializers', ())), reset_classes=reset,
                  root=args.model_root, ctx=ctx_list)
    if num_classes is not None:
        common['num_classes'] = num_classes
    source = weights or f'--model-zoo {args.model_zoo}'
    try:
        if args.model_zoo:
            # A zoo name keeps the zoo's structure (aux head included, as GluonCV's zoo and old train.py), so its
            # published weights always load; the loss follows the network (``net.aux_head``).
            net = get_model(args.model_zoo, **common)
        else:
            net = get_segmentation_model(model=args.model, dataset=dataset or args.dataset, backbone=args.backbone,
                                         aux=args.aux, **common)
    except ClassCountError as err:
        _class_count_error(args, source, err.file_classes, err.num_classes)
    if reset and common['pretrained']:
        logging.getLogger('segzoo').info(f'--reset-classes: loaded {source} except the class-dependent layers, '
                                         f're-initialised for {net.num_classes} classes: '
                                         f'{", ".join(net.classifier_keys())}')
    return net


def setup_logger(log_file=None, level=logging.INFO):
    """Log to stderr and, if given, to ``log_file`` (appending); returns the 'segzoo' logger."""
    logger = logging.getLogger('segzoo')
    logger.setLevel(level)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter('%(asctime)s %(message)s')
    stream = logging.StreamHandler()
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    logger.propagate = False
    return logger

