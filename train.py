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
Outputs go to ``runs/<dataset>/<method>/<checkname>/`` (see ``segzoo.cli.run_dir``).
"""
import dataclasses
import functools
import json
import logging
import math
import os
import time
from typing import Callable, Optional

import mxnet as mx
from mxnet import autograd
from tqdm import tqdm

from segzoo import checkpoint as ckpt
from segzoo import cli
from segzoo import distributed
from segzoo.checkpoint import TrainState
from segzoo.data import get_segmentation_dataset
from segzoo.data.loader import get_dataloader
from segzoo.loss import MixSoftmaxCrossEntropyLoss
from segzoo.lr_scheduler import TIMINGS, get_lr_scheduler
from segzoo.optimizer import OPTIMIZERS, make_optimizer
from segzoo.utils.fileio import atomic_write, write_json
from segzoo.utils.metrics import SegmentationMetric, class_iou_table
from segzoo.utils import runlock
from segzoo.utils.parallel import check_engine_threads, parallel_apply, split_batch

DEFAULT_TRAIN_SPLIT = {'pascal_aug': 'train_aug'}
# Flags a full-state resume must repeat: the lr schedule the saved trainer state continues, and the update.
SCHEDULE_ARGS = ('lr', 'lr_scheduler', 'power', 'alpha_f', 'lr_timing', 'warmup_epochs', 'epochs', 'batch_size',
                 'optimizer', 'grad_norm')
GRAD_NORMS = ('gluoncv', 'composer')
logger = logging.getLogger('segzoo')      # configured by cli.setup_logger in main


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass
class LoopConfig:
    """How :func:`train_one_epoch` runs: fixed for the whole run, unlike the :class:`TrainState` it advances."""
    ctx_list: list
    run_dir: str
    save: Callable                    # save(state, best=False): write a checkpoint of the run
    epochs: int                       # train until this epoch count (--epochs)
    seed: int = 0
    dtype: str = 'float32'
    threaded: bool = False            # per-device forward/backward in threads: SyncBN waits for every device
    log_interval: int = 20
    save_interval: int = 0            # also checkpoint every N steps (0: at the end of each epoch only)
    stop_at_iter: Optional[int] = None
    grad_norm: str = 'gluoncv'        # --grad-norm, see step_divisor
    present_only: bool = False        # --miou present: Composer's MIoU (classes with union 0 left out)
    workers: distributed.Workers = dataclasses.field(default_factory=lambda: distributed.Workers(None))

    def stop_requested(self, state):
        """The stop rule: ``--stop-at-iter`` steps done."""
        return self.stop_at_iter is not None and state.global_step >= self.stop_at_iter

    def step_divisor(self, batch):
        """What ``trainer.step`` divides the per-device loss gradients, summed over devices and workers (the kvstore
        sums the workers'), by: the global batch (GluonCV), or the global number of devices (Composer: the mean over
        devices of per-device mean losses)."""
        per_worker = batch if self.grad_norm == 'gluoncv' else len(self.ctx_list)
        return self.workers.step_batch_size(per_worker)      # x workers, unless Horovod averages them


# ----------------------------------------------------------------------------------------------- arguments
def parse_args(argv=None):
    """Parse train.py's command line (GluonCV's flag names; ``argv=None`` reads ``sys.argv``)."""
    parser = cli.base_parser('Train a semantic segmentation network (segzoo, GluonCV-compatible flags).')
    model = cli.add_model_args(parser)
    model.add_argument('--reset-classes', action='store_true',
                       help='fine-tune to the dataset\'s classes: load every weight of --model-zoo / --resume FILE '
                            'except the classifiers (main and aux), which start afresh for the new class count')
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
    opt.add_argument('--optimizer', type=str, default='sgd', choices=tuple(OPTIMIZERS),
                     help='sgdw = SGD with decoupled weight decay (Composer DecoupledSGDW)')
    opt.add_argument('--lr', type=float, default=1e-3, help='backbone learning rate')
    opt.add_argument('--head-lr-mult', type=float, default=10.0, help='lr multiplier of the head and aux head')
    opt.add_argument('--lr-scheduler', type=str, default='poly', choices=('poly', 'cosine'))
    opt.add_argument('--alpha-f', type=float, default=0.0,
                     help="final lr as a fraction of --lr (Composer's alpha_f; GluonCV decays to 0)")
    opt.add_argument('--lr-timing', type=str, default='gluoncv', choices=TIMINGS,
                     help="whose iteration maths the schedule follows: GluonCV's LRScheduler or Composer's "
                          "schedulers (first step at the peak rate)")
    opt.add_argument('--grad-norm', type=str, default='gluoncv', choices=GRAD_NORMS,
                     help='gluoncv: per-device mean losses, gradient divided by the global batch; composer: the '
                          'mean over devices of per-device mean losses (larger by the per-device batch)')
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
    cli.add_miou_arg(run)
    run.add_argument('--eval', action='store_true', help='only evaluate on the validation split')
    run.add_argument('--no-val', action='store_true', help='skip validation after each epoch')
    run.add_argument('--seed', type=int, default=0, help='seed of shuffling, augmentation and dropout')
    args = parser.parse_args(argv)
    cli.check_args(parser, args)
    if args.eval and args.no_val:
        parser.error('--eval evaluates on the validation split: it cannot be combined with --no-val')
    if args.train_split is None:
        args.train_split = DEFAULT_TRAIN_SPLIT.get(args.dataset, 'train')
    return args


# ----------------------------------------------------------------------------------------------- data
def get_datasets(args):
    """Training and validation datasets with the ``--augment`` pipelines (numpy items, normalised)."""
    common = dict(transforms=args.augment, base_size=args.base_size, crop_size=args.crop_size)
    if args.dataset_root:
        common['root'] = args.dataset_root
    cli.check_folder_dataset(args, [split for split, skipped in ((args.train_split, args.eval),
                                                                 (args.val_split, args.no_val)) if not skipped])
    train_set = None if args.eval else get_segmentation_dataset(args.dataset, split=args.train_split,
                                                                mode='train', **common)
    val_set = None if args.no_val else get_segmentation_dataset(args.dataset, split=args.val_split, mode='val',
                                                                **common)
    return train_set, val_set


def make_loaders(train_set, val_set, args, workers, num_devices):
    """Training loader (shuffled, GluonCV's ``last_batch='rollover'``, per-sample seeds from ``--seed`` and the
    epoch, so an epoch can be replayed from any batch) and validation loader (every image once: ``'keep'``)."""
    train = val = None
    if train_set is not None:
        train = get_dataloader(train_set, args.batch_size, shuffle=True, last_batch='rollover',
                               num_workers=args.workers, seed=args.seed,
                               shard=workers.batch_share(args.batch_size, num_devices))
    if val_set is not None:
        val = get_dataloader(workers.val_shard(val_set), args.test_batch_size, shuffle=False, last_batch='keep',
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


def build_network(args, ctx_list, num_classes, weights):
    """The network of the model flags (``weights``: a ``.params`` file or None), with the training policy set."""
    net = cli.build_model(args, ctx_list, weights=weights, num_classes=num_classes)
    cli.check_num_classes(net, num_classes, args)
    if args.dtype == 'float16':
        net.cast('float16')
    set_training_policy(net, args.head_lr_mult, args.no_wd)   # before the Trainer (and before loading states)
    return net


def iterations_per_epoch(train_set, args):
    """Optimizer steps per epoch (GluonCV: whole batches only); 1 when only validating."""
    if train_set is None:
        return 1
    if len(train_set) < args.batch_size:
        raise SystemExit(f'error: --batch-size {args.batch_size} exceeds the {len(train_set)} training images '
                         f'of {args.dataset}/{args.train_split}')
    return len(train_set) // args.batch_size


def make_trainer(net, args, iters_per_epoch, kvstore):
    """``gluon.Trainer`` with GluonCV's per-iteration schedule (``num_update`` counts every step)."""
    schedule = get_lr_scheduler(args.lr_scheduler, args.lr, args.epochs, iters_per_epoch,
                                warmup_epochs=args.warmup_epochs, power=args.power, alpha_f=args.alpha_f,
                                timing=args.lr_timing)
    optimizer = make_optimizer(args.optimizer, args.lr, momentum=args.momentum, wd=args.weight_decay,
                               lr_scheduler=schedule, begin_num_update=args.start_epoch * iters_per_epoch,
                               multi_precision=args.dtype == 'float16')
    return distributed.make_trainer(net.collect_params(), optimizer, kvstore)


def make_loss(args, aux):
    return MixSoftmaxCrossEntropyLoss(aux=aux, aux_weight=args.aux_weight, gluoncv_compat=args.gluoncv_loss,
                                      dice_weight=args.dice_weight)


# ----------------------------------------------------------------------------------------------- state
def restore_state(args, state_file, net, trainer, ctx_list, iters_per_epoch):
    """The :class:`TrainState` to start from: the full state in ``state_file``, else a new run at --start-epoch."""
    if state_file is None:
        if args.resume:          # weights only (loaded by build_network): a new stage with a fresh schedule
            logger.info(f'loaded weights from {args.resume}; new schedule from epoch {args.start_epoch}')
        return TrainState(epoch=args.start_epoch, global_step=args.start_epoch * iters_per_epoch)
    state, saved_args = ckpt.load_checkpoint(state_file, net, trainer, ctx_list)
    changed = [k for k in SCHEDULE_ARGS if k in saved_args and saved_args[k] != getattr(args, k)]
    if changed:
        diff = ', '.join(f'--{k.replace("_", "-")} {saved_args[k]} -> {getattr(args, k)}' for k in changed)
        raise SystemExit(f'error: {state_file} continues a run with other schedule flags ({diff}); repeat its '
                         f'flags (see args.json), or start a new stage from its weights with --resume '
                         f'{os.path.join(os.path.dirname(state_file), ckpt.CHECKPOINT_PARAMS)}')
    logger.info(f'resumed {state_file}: epoch {state.epoch}, iteration {state.iteration}, '
                f'step {state.global_step}, best mIoU {state.best_miou:.4f}')
    return state


def open_run_dir(args, new_history, writer=True):
    """Create the run directory with its train.log and args.json, and seed the global RNGs. ``new_history``: a
    new run in an old directory, whose metrics.jsonl is removed. Without ``writer`` (the workers other than rank 0)
    nothing is written and only warnings are logged."""
    run_dir = cli.run_dir(args)
    if not writer:
        cli.setup_logger(None, level=logging.WARNING)
        ckpt.seed_all(args.seed)
        return run_dir
    os.makedirs(run_dir, exist_ok=True)
    runlock.acquire(run_dir)      # before any write: a second train.py here exits naming this PID
    cli.setup_logger(os.path.join(run_dir, 'train.log'))
    logger.info(f'run directory: {run_dir}')
    write_json(os.path.join(run_dir, 'args.json'), vars(args))
    if new_history and os.path.exists(os.path.join(run_dir, 'metrics.jsonl')):
        os.remove(os.path.join(run_dir, 'metrics.jsonl'))
    ckpt.seed_all(args.seed)
    return run_dir


def loop_config(args, ctx_list, run_dir, net, trainer, workers):
    """The :class:`LoopConfig` of the flags; checkpoints go to ``run_dir`` with the flags in them."""
    return LoopConfig(ctx_list=ctx_list, run_dir=run_dir, epochs=args.epochs, seed=args.seed, dtype=args.dtype,
                      threaded=args.syncbn and len(ctx_list) > 1, log_interval=args.log_interval,
                      save_interval=args.save_interval, stop_at_iter=args.stop_at_iter, workers=workers,
                      grad_norm=args.grad_norm, present_only=args.miou == 'present',
                      save=functools.partial(_save, run_dir, net, trainer, vars(args), workers))


def _save(run_dir, net, trainer, flags, workers, state, best=False):
    """Checkpoint from rank 0, with the BN running statistics averaged over the workers (a collective)."""
    with distributed.averaged_bn_stats(net, workers.reducer):
        if workers.is_writer:
            ckpt.save_checkpoint(run_dir, net, trainer, state, flags, best)


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


# ----------------------------------------------------------------------------------------------- loops
def train_step(net, loss_fn, trainer, image, label, config, step):
    """One optimizer step on this worker's share of a global batch; returns the per-device losses (not
    synchronised). Each device's dropout draws from (seed, step, global device index), so the masks do not depend on
    how the devices are spread over processes. With threads (SyncBN) each device thread seeds its own device: MXNet's
    CPU dropout keeps generator state per thread, which the reused device threads would otherwise carry on."""
    images = split_batch(image.astype(config.dtype, copy=False), config.ctx_list)
    labels = split_batch(label, config.ctx_list)
    first_device = config.workers.first_device(len(config.ctx_list))

    def forward_backward(device, x, y):
        device_seed = distributed.device_seed(config.seed, step, first_device + device)
        if config.threaded:
            mx.random.seed(device_seed, ctx=config.ctx_list[device])
        else:
            ckpt.seed_mx(device_seed)
        # backward in the device's own thread too: SyncBN's backward also waits for every device
        with autograd.record():
            loss = loss_fn(*net(x), y)
        loss.backward()
        return loss

    losses = parallel_apply(forward_backward, list(zip(range(len(images)), images, labels)), config.threaded)
    trainer.step(config.step_divisor(image.shape[0]))
    return losses


class _LossMeter:
    """Per-step losses summed on the device and read (a sync point) only at log/checkpoint time."""

    def __init__(self):
        self.pending, self.num_pending, self.total, self.count = None, 0, 0.0, 0

    def add(self, losses, ctx):
        """Add the mean over devices of one step's per-device losses."""
        loss = mx.nd.add_n(*[device_loss.sum().as_in_context(ctx) for device_loss in losses]) / len(losses)
        self.pending = loss if self.pending is None else self.pending + loss
        self.num_pending += 1

    def sync(self, workers):
        """Mean of the losses added since the last sync (waits for them), over every worker."""
        mean = workers.mean(self.pending.asscalar() / self.num_pending)
        self.total, self.count = self.total + mean * self.num_pending, self.count + self.num_pending
        self.pending, self.num_pending = None, 0
        return mean

    @property
    def epoch_mean(self):
        return self.total / max(self.count, 1)


def _check_finite(loss, state, run_dir):
    if not math.isfinite(loss):
        state_file = os.path.join(run_dir, ckpt.CHECKPOINT_JSON)
        last = (f'the last good checkpoint is kept: {state_file}' if os.path.isfile(state_file)
                else 'no checkpoint was written yet')
        message = (f'loss is {loss} at epoch {state.epoch} iteration {state.iteration}: training stopped; {last}. '
                   'Lower --lr, or check the data.')
        logger.error(message)
        raise TrainingDiverged(message)


def train_one_epoch(net, loss_fn, trainer, loader, state, config):
    """Train epoch ``state.epoch`` from its batch ``state.iteration`` on, advancing ``state`` at every step.

    Checkpoints every ``config.save_interval`` steps, and stops early (checkpointed) when ``config.stop_requested``.
    Returns ``{'loss', 'seconds', 'img/s', 'completed'}``: the mean loss of the batches run, and whether the epoch
    reached its last batch.
    """
    loader.set_epoch(state.epoch, skip_batches=state.iteration)
    num_batches = len(loader) + state.iteration
    meter, tic, images = _LossMeter(), time.time(), 0
    bar = tqdm(loader, total=num_batches, initial=state.iteration, desc=f'epoch {state.epoch}', dynamic_ncols=True,
               leave=False, disable=not config.workers.is_writer)
    for image, label in bar:
        meter.add(train_step(net, loss_fn, trainer, image, label, config, state.global_step), config.ctx_list[0])
        state.iteration += 1
        state.global_step += 1
        images += image.shape[0]
        last = state.iteration == num_batches
        stop = not last and config.stop_requested(state)
        save = stop or (not last and config.save_interval and state.global_step % config.save_interval == 0)
        if meter.num_pending == config.log_interval or last or save:
            loss = meter.sync(config.workers)                    # sync point: log interval / checkpoint only
            _check_finite(loss, state, config.run_dir)
            bar.set_postfix(loss=f'{loss:.4f}', lr=f'{trainer.learning_rate:.2e}',
                            img_s=f'{images / max(time.time() - tic, 1e-9):.1f}')
            logger.debug(f'epoch {state.epoch} iter {state.iteration}/{num_batches} loss {loss:.4f}')
        if save:
            config.save(state)
        if stop:
            break
    bar.close()
    mx.nd.waitall()
    seconds = time.time() - tic
    return {'loss': meter.epoch_mean, 'seconds': seconds, 'img/s': images / seconds,
            'completed': state.iteration >= num_batches}


def evaluate(net, loader, ctx_list, num_classes, dtype='float32', present_only=False):
    """Single-scale validation over every image of ``loader``; returns the filled SegmentationMetric
    (``present_only``: Composer's MIoU)."""
    metric = SegmentationMetric(num_classes, present_only=present_only)
    for image, label in loader:
        devices = ctx_list[:image.shape[0]]
        preds = [mx.nd.argmax(net(x.astype(dtype, copy=False))[0], axis=1).astype('int32')
                 for x in split_batch(image, devices)]
        metric.update(split_batch(label, devices), preds)   # sync: asnumpy inside the metric
    return metric


def end_epoch(net, trainer, state, stats, val_data, config):
    """Validate, checkpoint (``model_best.params`` too when mIoU improved), record and log the finished epoch;
    then move ``state`` to the next epoch. Returns the epoch's record and its validation metric (or None)."""
    record = {'epoch': state.epoch, 'loss': stats['loss'], 'lr': trainer.learning_rate, 'img/s': stats['img/s'],
              'seconds': stats['seconds'], 'pixAcc': None, 'mIoU': None}
    metric, scores = None, ''
    if val_data is not None:
        metric = config.workers.sum_metric(evaluate(net, val_data, config.ctx_list, net.num_classes, config.dtype,
                                                    config.present_only))
        pix_acc, miou = (float(v) for v in metric.get())
        record.update(pixAcc=pix_acc, mIoU=miou)
        scores = f' | pixAcc {100 * pix_acc:.2f} {cli.miou_name(metric.present_only)} {100 * miou:.2f}'
    improved = record['mIoU'] is not None and record['mIoU'] > state.best_miou
    if improved:
        state.best_miou = record['mIoU']
    state.epoch_done = True
    config.save(state, best=improved)
    if config.workers.is_writer:
        _append_metrics(config.run_dir, record)
        plot_curves(config.run_dir)
    logger.info(f'epoch {state.epoch}: loss {stats["loss"]:.4f} lr {record["lr"]:.3e} {stats["img/s"]:.1f} img/s '
                f'{stats["seconds"]:.0f}s{scores}')
    state.next_epoch()
    return record, metric


def fit(net, loss_fn, trainer, state, train_data, val_data, config):
    """Train from ``state`` until ``config.epochs`` or the stop rule; returns the last epoch's record and the state."""
    record, metric = {'epoch': state.epoch}, None
    while state.epoch < config.epochs and not config.stop_requested(state):
        stats = train_one_epoch(net, loss_fn, trainer, train_data, state, config)
        if stats['completed']:
            record, metric = end_epoch(net, trainer, state, stats, val_data, config)
    result = dict(record, iteration=state.iteration, global_step=state.global_step, best_mIoU=state.best_miou)
    if state.epoch < config.epochs:
        logger.info(f'stopped at iteration {state.global_step} (--stop-at-iter); continue with '
                    f'--resume {config.run_dir}')
    elif metric is not None:
        class_iou = metric.get_class_iou()
        logger.info('per-class IoU (%) on the last validation:\n'
                    + class_iou_table(class_iou, val_data.dataset.CLASSES))
        result['class_iou'] = class_iou.tolist()
    return result


def validate(net, val_data, ctx_list, dtype, workers, present_only=False):
    """``--eval``: one validation pass (summed over the workers), logged with the per-class IoU table; returns its
    metrics."""
    metric = workers.sum_metric(evaluate(net, val_data, ctx_list, net.num_classes, dtype, present_only))
    pix_acc, miou = (float(v) for v in metric.get())
    class_iou = metric.get_class_iou()
    logger.info(f'validation: pixAcc {100 * pix_acc:.2f}  {cli.miou_name(metric.present_only)} {100 * miou:.2f}\n'
                'per-class IoU (%):\n' + class_iou_table(class_iou, val_data.dataset.CLASSES))
    return {'pixAcc': pix_acc, 'mIoU': miou, 'class_iou': class_iou.tolist()}


def main(args):
    """Train (or only validate, with ``--eval``); returns the final metrics dict."""
    state_file = ckpt.find_state(args.resume) if args.resume else None
    workers = distributed.Workers(args.kvstore)       # first: only rank 0 writes the run directory
    ctx_list = workers.contexts(cli.get_contexts(args))     # bad device flags fail before the run dir exists
    if not args.eval:
        check_engine_threads(ctx_list, args.syncbn)
    run_dir = open_run_dir(args, new_history=state_file is None and not args.eval, writer=workers.is_writer)
    train_set, val_set = get_datasets(args)
    train_data, val_data = make_loaders(train_set, val_set, args, workers, len(ctx_list))
    net = build_network(args, ctx_list, (val_set if train_set is None else train_set).NUM_CLASS,
                        weights=None if state_file else args.resume)
    iters_per_epoch = iterations_per_epoch(train_set, args)
    trainer = make_trainer(net, args, iters_per_epoch, workers.kvstore or cli.get_kvstore(args, ctx_list))
    if workers.is_writer and not args.eval:     # an unwritable or full disk fails now, not at the first save
        ckpt.check_save_dir(run_dir, net)
    state = restore_state(args, state_file, net, trainer, ctx_list, iters_per_epoch)
    if workers.distributed:       # equal step counts on every worker (else the job hangs)
        workers.reducer.check_same('the training images, steps per epoch and devices per worker',
                                   [0 if train_set is None else len(train_set), iters_per_epoch, len(ctx_list)])
    distributed.init_trainer(trainer)       # weights broadcast before the first forward
    if args.eval:
        result = validate(net, val_data, ctx_list, args.dtype, workers, args.miou == 'present')
    else:
        logger.info(f'{len(train_set)} training images, {iters_per_epoch} iterations/epoch, devices {ctx_list}')
        config = loop_config(args, ctx_list, run_dir, net, trainer, workers)
        result = fit(net, make_loss(args, net.aux_head is not None), trainer, state, train_data, val_data, config)
    return result


if __name__ == '__main__':
    cli.run(main, parse_args)
