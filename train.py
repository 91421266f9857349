"""Train a segmentation network (GluonCV's ``scripts/segmentation/train.py`` flags, with a real resume).

The published GluonCV chain, COCO -> Pascal VOC-aug -> Pascal VOC, runs as written (see scripts/*.sh)::

    python train.py --dataset coco --model deeplab --aux --backbone resnet101 --lr 0.01 --syncbn --ngpus 4 \\
        --checkname res101 --epochs 30
    python train.py --dataset pascal_aug --model-zoo deeplab_resnet101_coco --aux --lr 0.001 --syncbn --ngpus 4 \\
        --checkname res101
    python train.py --dataset pascal_voc --model deeplab --aux --backbone resnet101 --lr 0.0001 --syncbn --ngpus 4 \\
        --checkname res101 --resume runs/pascal_aug/deeplab/res101/checkpoint.params

``--resume`` takes either a run directory / its ``checkpoint.json`` (a full state: continue exactly where the run
stopped, mid-epoch included) or a ``.params`` file (weights only: a new stage with a fresh schedule).
Outputs go to ``runs/<dataset>/<model family>/<checkname>/`` (see ``segzoo.cli.run_dir``).
"""
import argparse
import json
import math
import os
import random
import sys
import time


def _preset_cpu_engine_threads(argv):
    """Give MXNet's CPU engine one worker thread per device for ``--syncbn --no-cuda --ngpus N``.

    All CPU contexts share one engine thread pool (``MXNET_CPU_WORKER_NTHREADS``, default 1), and a SyncBatchNorm
    op blocks its worker until every device's twin arrives, so N CPU devices need N workers or the run deadlocks
    (measured with MXNet 1.9.1). The variable is read when the engine starts, hence before ``import mxnet``.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('--syncbn', action='store_true')
    pre.add_argument('--no-cuda', action='store_true')
    pre.add_argument('--ngpus', type=int, default=None)
    known, _ = pre.parse_known_args(argv)
    if known.syncbn and known.no_cuda and (known.ngpus or 1) > 1:
        current = int(os.environ.get('MXNET_CPU_WORKER_NTHREADS', '1'))
        os.environ['MXNET_CPU_WORKER_NTHREADS'] = str(max(current, known.ngpus))


if __name__ == '__main__':
    _preset_cpu_engine_threads(sys.argv[1:])

import mxnet as mx  # noqa: E402  (after the engine preset above)
import numpy as np  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402
from tqdm import tqdm  # noqa: E402

from segzoo import checkpoint as ckpt  # noqa: E402
from segzoo import cli  # noqa: E402
from segzoo.data import get_segmentation_dataset  # noqa: E402
from segzoo.data.loader import get_dataloader  # noqa: E402
from segzoo.data.transforms import ImageNormalize  # noqa: E402
from segzoo.loss import MixSoftmaxCrossEntropyLoss  # noqa: E402
from segzoo.lr_scheduler import get_lr_scheduler  # noqa: E402
from segzoo.optimizer import SGDW  # noqa: F401,E402  (registers 'sgdw' with MXNet)
from segzoo.utils.fileio import atomic_write, write_json  # noqa: E402
from segzoo.utils.metrics import SegmentationMetric, class_iou_table  # noqa: E402
from segzoo.utils.parallel import parallel_apply, split_batch  # noqa: E402

DEFAULT_TRAIN_SPLIT = {'pascal_aug': 'train_aug'}
SCHEDULE_ARGS = ('lr', 'lr_scheduler', 'power', 'warmup_epochs', 'epochs', 'batch_size', 'optimizer')


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# ----------------------------------------------------------------------------------------------- arguments
def parse_args(argv=None):
    """Parse train.py's command line (GluonCV's flag names; ``argv=None`` reads ``sys.argv``)."""
    parser = cli.base_parser('Train a semantic segmentation network (segzoo, GluonCV-compatible flags).')
    cli.add_model_args(parser)
    cli.add_data_args(parser, default_dataset='pascal_aug')
    cli.add_device_args(parser)
    data = parser.add_argument_group('training data')
    data.add_argument('--train-split', type=str, default=None,
                      help="training split (default: 'train_aug' for pascal_aug, else 'train')")
    data.add_argument('--val-split', type=str, default='val', help='validation split')
    loss = parser.add_argument_group('loss')
    loss.add_argument('--aux-weight', type=float, default=0.5, help='weight of the auxiliary loss (really applied)')
    loss.add_argument('--dice-weight', type=float, default=0.0, help='weight of the softmax dice loss (Composer)')
    loss.add_argument('--gluoncv-loss', action='store_true',
                      help="GluonCV's exact loss gradients (aux weight effectively 1.0, whatever --aux-weight)")
    opt = parser.add_argument_group('optimization')
    opt.add_argument('--epochs', type=int, default=50)
    opt.add_argument('--start-epoch', '--start_epoch', dest='start_epoch', type=int, default=0,
                     help='first epoch of a new run; the lr schedule starts at that epoch too (old GluonCV '
                          'behaviour; ignored when --resume is a full state)')
    opt.add_argument('--batch-size', type=int, default=16, help='global batch, split over the devices')
    opt.add_argument('--test-batch-size', type=int, default=16)
    opt.add_argument('--optimizer', type=str, default='sgd', choices=('sgd', 'adam', 'sgdw'),
                     help='sgdw = SGD with decoupled weight decay (Composer DecoupledSGDW)')
    opt.add_argument('--lr', type=float, default=1e-3, help='backbone learning rate')
    opt.add_argument('--head-lr-mult', type=float, default=10.0, help='lr multiplier of the head and aux head')
    opt.add_argument('--lr-scheduler', type=str, default='poly', choices=('poly', 'cosine'))
    opt.add_argument('--power', type=float, default=0.9, help='poly exponent')
    opt.add_argument('--warmup-epochs', type=int, default=0, help='linear warm-up 0 -> lr')
    opt.add_argument('--momentum', type=float, default=0.9)
    opt.add_argument('--weight-decay', type=float, default=1e-4)
    opt.add_argument('--no-wd', action='store_true', help='no weight decay on BN gamma/beta and biases')
    run = parser.add_argument_group('run')
    run.add_argument('--checkname', type=str, default='default', help='run name under runs/<dataset>/<model>/')
    run.add_argument('--save-dir', type=str, default=None, help='run directory (overrides runs/... )')
    run.add_argument('--save-interval', type=int, default=0,
                     help='also checkpoint every N iterations (0: at the end of each epoch only)')
    run.add_argument('--stop-at-iter', type=int, default=None,
                     help='stop after this many iterations in total (checkpointed; continue with --resume RUN_DIR)')
    run.add_argument('--log-interval', type=int, default=20, help='iterations between loss syncs/log lines')
    run.add_argument('--eval', action='store_true', help='only evaluate on the validation split')
    run.add_argument('--no-val', action='store_true', help='skip validation after each epoch')
    run.add_argument('--seed', type=int, default=0, help='seed of shuffling, augmentation and dropout')
    args = parser.parse_args(argv)
    if args.eval and args.no_val:
        parser.error('--eval evaluates on the validation split: it cannot be combined with --no-val')
    if args.train_split is None:
        args.train_split = DEFAULT_TRAIN_SPLIT.get(args.dataset, 'train')
    return args


# ----------------------------------------------------------------------------------------------- data
def get_datasets(args):
    """Training and validation datasets with segzoo's image normalisation."""
    common = dict(transform=ImageNormalize(), base_size=args.base_size, crop_size=args.crop_size)
    if args.dataset_root:
        common['root'] = args.dataset_root
    train_set = None if args.eval else get_segmentation_dataset(args.dataset, split=args.train_split,
                                                                mode='train', **common)
    val_set = None if args.no_val else get_segmentation_dataset(args.dataset, split=args.val_split, mode='val',
                                                                **common)
    return train_set, val_set


def make_loaders(train_set, val_set, args):
    """Training loader (shuffled, GluonCV's ``last_batch='rollover'``, per-sample seeds from ``--seed`` and the
    epoch, so an epoch can be replayed from any batch) and validation loader (every image once: ``'keep'``)."""
    train = val = None
    if train_set is not None:
        train = get_dataloader(train_set, args.batch_size, shuffle=True, last_batch='rollover',
                               num_workers=args.workers, seed=args.seed)
    if val_set is not None:
        val = get_dataloader(val_set, args.test_batch_size, shuffle=False, last_batch='keep',
                             num_workers=args.workers, seed=args.seed)
    return train, val


# ----------------------------------------------------------------------------------------------- model, trainer
def set_training_policy(net, head_lr_mult, no_wd):
    """``lr_mult`` on the head and aux head; ``wd_mult = 0`` on BN gamma/beta and biases with ``--no-wd``."""
    for block in (net.head, getattr(net, 'aux_head', None)):
        if block is not None:
            block.collect_params().setattr('lr_mult', head_lr_mult)
    if no_wd:
        net.collect_params('.*beta|.*gamma|.*bias').setattr('wd_mult', 0.0)


def make_trainer(net, args, iters_per_epoch, kvstore):
    """``gluon.Trainer`` with GluonCV's per-iteration schedule (``num_update`` counts every step)."""
    schedule = get_lr_scheduler(args.lr_scheduler, args.lr, args.epochs, iters_per_epoch,
                                warmup_epochs=args.warmup_epochs, power=args.power)
    params = {'learning_rate': args.lr, 'wd': args.weight_decay, 'lr_scheduler': schedule,
              'begin_num_update': args.start_epoch * iters_per_epoch}
    if args.optimizer in ('sgd', 'sgdw'):
        params['momentum'] = args.momentum
    if args.dtype == 'float16':
        params['multi_precision'] = True
    return gluon.Trainer(net.collect_params(), args.optimizer, params, kvstore=kvstore)


def make_loss(args, aux):
    return MixSoftmaxCrossEntropyLoss(aux=aux, aux_weight=args.aux_weight, gluoncv_compat=args.gluoncv_loss,
                                      dice_weight=args.dice_weight)


# ----------------------------------------------------------------------------------------------- loops
def train_step(net, loss_fn, trainer, image, label, ctx_list, threaded, dtype):
    """One optimizer step on a global batch; returns the per-device losses (not synchronised)."""
    images, labels = split_batch(image.astype(dtype, copy=False), ctx_list), split_batch(label, ctx_list)

    def forward_backward(x, y):
        # backward in the device's own thread too: SyncBN's backward also waits for every device
        with autograd.record():
            loss = loss_fn(*net(x), y)
        loss.backward()
        return loss

    losses = parallel_apply(forward_backward, list(zip(images, labels)), threaded)
    trainer.step(image.shape[0])
    return losses


def evaluate(net, loader, ctx_list, num_classes, dtype='float32'):
    """Single-scale validation over every image of ``loader``; returns the filled SegmentationMetric."""
    metric = SegmentationMetric(num_classes)
    for image, label in loader:
        devices = ctx_list[:image.shape[0]]
        preds = [mx.nd.argmax(net(x.astype(dtype, copy=False))[0], axis=1).astype('int32')
                 for x in split_batch(image, devices)]
        metric.update(split_batch(label, devices), preds)   # sync: asnumpy inside the metric
    return metric


def _loss_sum(losses, ctx):
    """Sum of the per-device mean losses, on ``ctx``, without a sync."""
    return mx.nd.add_n(*[l.sum().as_in_context(ctx) for l in losses]) / len(losses)


# ----------------------------------------------------------------------------------------------- bookkeeping
def _save_state(run_dir, net, trainer, args, state, best=False):
    meta = dict(state, rng=ckpt.get_rng_state(), args=vars(args))
    ckpt.save_checkpoint(run_dir, net, trainer, meta, best=best)


def _check_finite(value, run_dir, epoch, iteration, logger):
    if not math.isfinite(value):
        state_file = os.path.join(run_dir, ckpt.CHECKPOINT_JSON)
        last = (f'the last good checkpoint is kept: {state_file}' if os.path.isfile(state_file)
                else 'no checkpoint was written yet')
        message = (f'loss is {value} at epoch {epoch} iteration {iteration}: training stopped; {last}. '
                   'Lower --lr, or check the data.')
        logger.error(message)
        raise TrainingDiverged(message)


def _append_metrics(run_dir, record):
    with open(os.path.join(run_dir, 'metrics.jsonl'), 'a') as f:
        f.write(json.dumps(record) + '\n')


def plot_curves(run_dir):
    """Write curves.png (loss, lr, pixAcc/mIoU per epoch) from metrics.jsonl."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if not records:
        return
    epochs = [r['epoch'] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(epochs, [r['loss'] for r in records], marker='o')
    axes[0].set_title('train loss')
    axes[1].plot(epochs, [r['lr'] for r in records], marker='o')
    axes[1].set_title('lr (end of epoch)')
    for key in ('pixAcc', 'mIoU'):
        axes[2].plot(epochs, [r.get(key) for r in records], marker='o', label=key)
    axes[2].set_title('validation')
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel('epoch')
    fig.tight_layout()
    atomic_write(os.path.join(run_dir, 'curves.png'), lambda tmp: fig.savefig(tmp, format='png'))
    plt.close(fig)


def _resume(args, state_file, net, trainer, ctx_list, iters_per_epoch, logger):
    """Load the full state ``state_file`` (None: none) into ``net``/``trainer``; returns the progress to continue."""
    progress = {'epoch': args.start_epoch, 'iteration': 0, 'global_step': args.start_epoch * iters_per_epoch,
                'best_miou': 0.0}
    if state_file is None:
        if args.resume:          # weights only (loaded by build_model): a new stage with a fresh schedule
            logger.info(f'loaded weights from {args.resume}; new schedule from epoch {args.start_epoch}')
        return progress
    meta = ckpt.load_checkpoint(state_file, net, trainer, ctx_list)
    saved = meta.get('args', {})
    changed = [k for k in SCHEDULE_ARGS if k in saved and saved[k] != getattr(args, k)]
    if changed:
        diff = ', '.join(f'--{k.replace("_", "-")} {saved[k]} -> {getattr(args, k)}' for k in changed)
        raise SystemExit(f'error: {state_file} continues a run with other schedule flags ({diff}); repeat its '
                         f'flags (see args.json), or start a new stage from its weights with --resume '
                         f'{os.path.join(os.path.dirname(state_file), ckpt.CHECKPOINT_PARAMS)}')
    ckpt.set_rng_state(meta['rng'])
    progress = {key: meta[key] for key in progress}
    if meta['epoch_done']:
        progress.update(epoch=meta['epoch'] + 1, iteration=0)
    logger.info(f'resumed {state_file}: epoch {progress["epoch"]}, iteration {progress["iteration"]}, '
                f'step {progress["global_step"]}, best mIoU {progress["best_miou"]:.4f}')
    return progress


def _seed_step(seed, step):
    """MXNet RNG (dropout) from (seed, step) only, so a resumed run draws the same masks."""
    ckpt.seed_mx((seed * 1000003 + step) % (2 ** 31))


def train_one_epoch(net, loader, loss_fn, trainer, ctx_list, args, run_dir, progress, logger):
    """Train on epoch ``progress['epoch']`` from batch ``progress['iteration']``; updates ``progress``.

    Returns
    -------
    tuple
        (mean loss of the batches run, seconds, images seen, whether the epoch was completed).
    """
    threaded = args.syncbn and len(ctx_list) > 1
    epoch = progress['epoch']
    loader.set_epoch(epoch, skip_batches=progress['iteration'])
    num_batches = len(loader) + progress['iteration']
    window, window_count, total, count = None, 0, 0.0, 0
    tic, images = time.time(), 0
    bar = tqdm(loader, total=num_batches, initial=progress['iteration'], desc=f'epoch {epoch}',
               dynamic_ncols=True, leave=False)
    for image, label in bar:
        _seed_step(args.seed, progress['global_step'])
        losses = train_step(net, loss_fn, trainer, image, label, ctx_list, threaded, args.dtype)
        progress['iteration'] += 1
        progress['global_step'] += 1
        images += image.shape[0]
        loss = _loss_sum(losses, ctx_list[0])
        window = loss if window is None else window + loss
        window_count += 1
        last = progress['iteration'] == num_batches
        save_now = not last and args.save_interval and progress['global_step'] % args.save_interval == 0
        stop_now = not last and args.stop_at_iter is not None and progress['global_step'] >= args.stop_at_iter
        if window_count == args.log_interval or last or save_now or stop_now:
            mean = window.asscalar() / window_count          # sync point: log interval / checkpoint only
            _check_finite(mean, run_dir, epoch, progress['iteration'], logger)
            total, count, window, window_count = total + mean * window_count, count + window_count, None, 0
            lr = trainer.learning_rate
            rate = images / max(time.time() - tic, 1e-9)
            bar.set_postfix(loss=f'{mean:.4f}', lr=f'{lr:.2e}', img_s=f'{rate:.1f}')
            logger.debug(f'epoch {epoch} iter {progress["iteration"]}/{num_batches} loss {mean:.4f} lr {lr:.3e}')
        if save_now or stop_now:
            _save_state(run_dir, net, trainer, args, dict(progress, epoch_done=False))
        if stop_now:
            break
    bar.close()
    mx.nd.waitall()
    completed = progress['iteration'] >= num_batches
    return total / max(count, 1), time.time() - tic, images, completed


def _validate(net, val_loader, ctx_list, num_classes, args):
    metric = evaluate(net, val_loader, ctx_list, num_classes, args.dtype)
    pix_acc, miou = metric.get()
    return metric, float(pix_acc), float(miou)


def _stop_requested(args, progress):
    return args.stop_at_iter is not None and progress['global_step'] >= args.stop_at_iter


def _check_syncbn_engine(args, ctx_list):
    """Refuse to deadlock: SyncBN over N CPU contexts needs N CPU engine workers (see the top of this file)."""
    workers = int(os.environ.get('MXNET_CPU_WORKER_NTHREADS', '1'))
    if args.syncbn and not args.eval and ctx_list[0].device_type == 'cpu' and len(ctx_list) > workers:
        raise SystemExit(f'error: --syncbn on {len(ctx_list)} CPU contexts needs MXNET_CPU_WORKER_NTHREADS >= '
                         f'{len(ctx_list)} set before MXNet starts (it is {workers}); run train.py as a script, '
                         f'which sets it, or export it')


def main(args):
    """Run training (or ``--eval``); returns the final metrics dict."""
    run_dir = cli.run_dir(args)
    os.makedirs(run_dir, exist_ok=True)
    logger = cli.setup_logger(os.path.join(run_dir, 'train.log'))
    logger.info(f'run directory: {run_dir}')
    write_json(os.path.join(run_dir, 'args.json'), vars(args))
    random.seed(args.seed)
    np.random.seed(args.seed)
    ckpt.seed_mx(args.seed)

    ctx_list = cli.get_contexts(args)
    _check_syncbn_engine(args, ctx_list)
    train_set, val_set = get_datasets(args)
    train_data, val_data = make_loaders(train_set, val_set, args)
    reference = train_set if train_set is not None else val_set
    state_file = ckpt.find_state(args.resume) if args.resume else None
    weights_only = bool(args.resume) and state_file is None
    net = cli.build_model(args, ctx_list, weights=args.resume if weights_only else None)
    num_classes = reference.NUM_CLASS
    cli.check_num_classes(net, num_classes, args)
    if args.dtype == 'float16':
        net.cast('float16')
    set_training_policy(net, args.head_lr_mult, args.no_wd)   # before the Trainer (and before loading states)

    iters_per_epoch = len(train_set) // args.batch_size if train_set is not None else 1
    if iters_per_epoch == 0:
        raise SystemExit(f'error: --batch-size {args.batch_size} exceeds the {len(train_set)} training images '
                         f'of {args.dataset}/{args.train_split}')
    trainer = make_trainer(net, args, iters_per_epoch, cli.get_kvstore(args, ctx_list))
    progress = _resume(args, state_file, net, trainer, ctx_list, iters_per_epoch, logger)
    metrics_file = os.path.join(run_dir, 'metrics.jsonl')
    if not args.eval and state_file is None and os.path.exists(metrics_file):
        os.remove(metrics_file)          # a new run in an old run directory starts a new history
    class_names = reference.CLASSES

    if args.eval:
        metric, pix_acc, miou = _validate(net, val_data, ctx_list, num_classes, args)
        logger.info(f'validation: pixAcc {100 * pix_acc:.2f}  mIoU {100 * miou:.2f}\nper-class IoU (%):\n'
                    + class_iou_table(metric.get_class_iou(), class_names))
        return {'pixAcc': pix_acc, 'mIoU': miou, 'class_iou': metric.get_class_iou().tolist()}

    loss_fn = make_loss(args, net.aux_head is not None)
    logger.info(f'{len(train_set)} training images, {iters_per_epoch} iterations/epoch, devices {ctx_list}')
    result, metric = dict(progress), None
    while progress['epoch'] < args.epochs:
        epoch = progress['epoch']
        mean_loss, seconds, images, completed = train_one_epoch(net, train_data, loss_fn, trainer, ctx_list, args,
                                                                run_dir, progress, logger)
        if not completed:
            logger.info(f'stopped at iteration {progress["global_step"]} (--stop-at-iter); continue with '
                        f'--resume {run_dir}')
            return dict(progress)
        record = {'epoch': epoch, 'loss': mean_loss, 'lr': trainer.learning_rate, 'img/s': images / seconds,
                  'seconds': seconds, 'pixAcc': None, 'mIoU': None}
        improved = False
        if val_data is not None:
            metric, pix_acc, miou = _validate(net, val_data, ctx_list, num_classes, args)
            record.update(pixAcc=pix_acc, mIoU=miou)
            improved = miou > progress['best_miou']
            if improved:
                progress['best_miou'] = miou
        _save_state(run_dir, net, trainer, args, dict(progress, epoch_done=True), best=improved)
        _append_metrics(run_dir, record)
        plot_curves(run_dir)
        scores = f' | pixAcc {100 * pix_acc:.2f} mIoU {100 * miou:.2f}' if val_data is not None else ''
        logger.info(f'epoch {epoch}: loss {mean_loss:.4f} lr {record["lr"]:.3e} {record["img/s"]:.1f} img/s '
                    f'{seconds:.0f}s{scores}')
        result = dict(record, global_step=progress['global_step'], best_mIoU=progress['best_miou'])
        progress.update(epoch=epoch + 1, iteration=0)
        if _stop_requested(args, progress):
            logger.info(f'stopped at iteration {progress["global_step"]} (--stop-at-iter); continue with '
                        f'--resume {run_dir}')
            return result
    if metric is not None:
        logger.info('per-class IoU (%) on the last validation:\n' + class_iou_table(metric.get_class_iou(), class_names))
        result['class_iou'] = metric.get_class_iou().tolist()
    return result


if __name__ == '__main__':
    main(parse_args())
