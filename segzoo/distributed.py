"""Data-parallel training over several processes on MXNet's parameter server (``--kvstore dist_sync``).

Measured on MXNet 1.9.1 (see the README's "Training on several machines"), Gluon's defaults train wrong there, so
train.py goes through these functions:

* :func:`create_kvstore` refuses ``dist_async``; :func:`trainer_options` turns ``update_on_kvstore`` off, because the
  servers would drop every ``lr_mult``/``wd_mult`` and cannot unpickle segzoo's ``sgdw`` (each worker runs the
  optimizer on the summed gradients instead).
* :func:`init_trainer` broadcasts the weights and waits at a barrier before the first step: Gluon's lazy
  initialisation lets the first gradient push overtake the weight pull, which then returns a gradient sum.
* The servers SUM the workers' gradients, so a worker steps with the global batch (:func:`step_batch_size`), and
  reads its contiguous share of every global batch (:func:`worker_share`), the devices of all workers splitting it
  as one process with all those devices would.
* :class:`Reducer` sums arrays over the workers (validation confusion matrices, consistency checks), and
  :func:`averaged_bn_stats` makes the BatchNorm running statistics, which are per worker, their mean while a
  checkpoint is written.
* :func:`device_seed` gives each device a dropout seed from (seed, step, global device index), so the masks do not
  depend on how the devices are spread over processes.

``--kvstore horovod`` (Horovod built with MXNet, started by ``horovodrun``; one device per process) gives the same
semantics: :func:`make_trainer` builds ``hvd.DistributedTrainer``, which averages the gradients (so the step takes
the local batch), :func:`init_trainer` broadcasts rank 0's weights, and :class:`Reducer` sums with Horovod's
allreduce.

Without a dist kvstore every function reduces to the single-process behaviour (rank 0 of 1).
"""
import contextlib
import importlib

import mxnet as mx
import numpy as np

__all__ = ['create_kvstore', 'is_distributed', 'rank_and_size', 'trainer_options', 'make_trainer', 'init_trainer',
           'step_batch_size', 'worker_share', 'shard_indices', 'device_seed', 'Reducer', 'averaged_bn_stats',
           'DatasetShard', 'Workers', 'BN_STATS']

BN_STATS = '.*running_mean|.*running_var'
REDUCE_KEY_BASE = 1 << 30        # far above the Trainer's keys (one per parameter, counted from 0)
HOROVOD = 'horovod'


def _horovod():
    """``horovod.mxnet``, or exit saying how to get it."""
    try:
        return importlib.import_module('horovod.mxnet')
    except ImportError as err:
        raise SystemExit(f'error: --kvstore horovod needs Horovod built with MXNet ({err}); build it with '
                         'HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 pip install horovod '
                         '(README: Training on several machines)') from err


def create_kvstore(name):
    """The ``--kvstore`` value for ``gluon.Trainer``: a created KVStore for ``dist*`` names, else ``name`` itself.

    Asynchronous updates need ``update_on_kvstore=True``, under which the servers ignore ``lr_mult``/``wd_mult``
    and cannot run ``sgdw``, so ``dist_async`` is refused.
    """
    if name == HOROVOD:
        _horovod().init()
        return name
    if not name or 'dist' not in name.lower():
        return name
    if '_async' in name.lower():
        raise SystemExit(f'error: --kvstore {name}: asynchronous training is not supported: MXNet runs async '
                         'updates on the servers, which drop lr_mult/wd_mult (the 10x head lr, --no-wd) and cannot '
                         'load sgdw; use --kvstore dist_sync')
    try:
        return mx.kv.create(name)
    except mx.base.MXNetError as err:
        raise SystemExit(f'error: --kvstore {name}: {str(err).strip().splitlines()[-1]}') from err


def is_distributed(kvstore):
    """Whether ``kvstore`` is multi-process: a ps-lite kvstore, or ``'horovod'``."""
    return kvstore == HOROVOD or isinstance(kvstore, mx.kvstore.KVStore) and 'dist' in kvstore.type


def rank_and_size(kvstore):
    """``(rank, num_workers)``; ``(0, 1)`` without a dist kvstore."""
    if kvstore == HOROVOD:
        hvd = _horovod()
        return hvd.rank(), hvd.size()
    if is_distributed(kvstore):
        return kvstore.rank, kvstore.num_workers
    return 0, 1


def trainer_options(kvstore):
    """Keyword arguments of ``gluon.Trainer`` for ``kvstore``: optimizer on the workers for dist kvstores."""
    if is_distributed(kvstore):
        return {'kvstore': kvstore, 'update_on_kvstore': False}
    return {'kvstore': kvstore}


def make_trainer(params, optimizer, kvstore):
    """The ``gluon.Trainer`` for ``kvstore`` (see :func:`trainer_options`); ``hvd.DistributedTrainer`` for
    ``'horovod'``."""
    if kvstore == HOROVOD:
        return _horovod().DistributedTrainer(params, optimizer)
    return mx.gluon.Trainer(params, optimizer, **trainer_options(kvstore))


def init_trainer(trainer):
    """Create the trainer's kvstore and broadcast (rank 0's / device 0's) weights now, then wait for every worker.

    Call it after loading any state and before the first forward. Gluon does this lazily inside the first step:
    there, with a dist kvstore, the weight pull may be served after the first gradient sum (measured: 4 runs in 10
    went wrong), and with several devices the broadcast also copies device 0's BatchNorm running statistics,
    already updated by the first forward, over the other devices'. Uses the Trainer's private
    ``_init_kvstore``/``_init_params``; MXNet 1.9 has no public equivalent. Parameters with deferred shapes are
    left to Gluon in a single process and refused with a dist kvstore.
    """
    deferred = [p.name for p in trainer._params if p._deferred_init]
    if deferred:
        if not is_distributed(trainer._kvstore_params.get('kvstore')):
            return
        raise ValueError(f'parameters {deferred[:3]} are not initialised yet (deferred shapes); run one forward '
                         'pass before init_trainer')
    if type(trainer).__module__.startswith('horovod'):
        _horovod().broadcast_parameters({p.name: p for p in trainer._params}, root_rank=0)
        mx.nd.waitall()
        return
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    mx.nd.waitall()
    if is_distributed(trainer._kvstore):
        trainer._kvstore._barrier()


def step_batch_size(local_batch_size, kvstore):
    """The ``trainer.step`` batch size: the global batch, as the servers sum the workers' gradients (Horovod's
    trainer averages them: the local batch)."""
    if kvstore == HOROVOD:
        return local_batch_size
    return local_batch_size * rank_and_size(kvstore)[1]


def _split_sizes(size, parts):
    """Sizes of ``mx.gluon.utils.split_data(..., even_split=False)``: the first ``size % parts`` get one more."""
    each, extra = divmod(size, parts)
    return [each + 1] * extra + [each] * (parts - extra)


def worker_share(batch_size, devices_per_worker, rank, num_workers):
    """``(start, stop)`` of worker ``rank``'s contiguous share of a global batch of ``batch_size``.

    The global batch is split over all ``num_workers * devices_per_worker`` devices as one process with that many
    devices splits it (``split_batch``), and the worker takes its devices' slices; its own ``split_batch`` over
    its devices then gives the same per-device slices.
    """
    total = num_workers * devices_per_worker
    if batch_size < total:
        raise ValueError(f'--batch-size {batch_size} is smaller than the {total} devices of {num_workers} '
                         f'worker(s) x {devices_per_worker}')
    bounds = np.cumsum([0] + _split_sizes(batch_size, total))
    return int(bounds[rank * devices_per_worker]), int(bounds[(rank + 1) * devices_per_worker])


def shard_indices(length, rank, num_workers):
    """Worker ``rank``'s contiguous part of ``range(length)`` (validation: each image on exactly one worker)."""
    bounds = np.cumsum([0] + _split_sizes(length, num_workers))
    return range(int(bounds[rank]), int(bounds[rank + 1]))


def device_seed(seed, step, device_index):
    """Seed of the MXNet RNG for one device at one step, a function of (seed, step, global device index) only."""
    return int(np.random.SeedSequence([seed, step, device_index]).generate_state(1)[0]) % (2 ** 31)


class Reducer:
    """Sums float64 arrays over the workers through the kvstore (identity without a dist kvstore).

    Every worker must make the same calls in the same order: each name gets its own kvstore key, created on first
    use (a collective with a barrier) and shared by every Reducer of the kvstore. Values are exact for integers
    below 2**53 (pixel counts).
    """

    _keys = {}       # (id(kvstore), name) -> key

    def __init__(self, kvstore):
        self.kvstore = kvstore if is_distributed(kvstore) else None
        self.rank, self.num_workers = rank_and_size(kvstore)

    def sum(self, name, array):
        """Elementwise sum of ``array`` (numpy, any shape) over the workers, as a float64 numpy array."""
        array = np.asarray(array, dtype=np.float64)
        if self.kvstore is None:
            return array.copy()
        value = mx.nd.array(array.reshape(-1), dtype='float64')
        if self.kvstore == HOROVOD:
            out = _horovod().allreduce(value, average=False, name=f'segzoo.sum.{name}')
            return out.asnumpy().reshape(array.shape)
        slot = (id(self.kvstore), name)
        if slot not in self._keys:
            self._keys[slot] = REDUCE_KEY_BASE + len(self._keys)
            self.kvstore.init(self._keys[slot], mx.nd.zeros(value.shape, dtype='float64'))
        out = mx.nd.zeros(value.shape, dtype='float64')
        self.kvstore.pushpull(self._keys[slot], value, out=out)
        return out.asnumpy().reshape(array.shape)

    def check_same(self, what, values):
        """Exit with a message naming ``what`` unless every worker passed the same numbers ``values``."""
        mine = np.asarray(values, dtype=np.float64).reshape(-1)
        totals = self.sum(f'check:{what}', np.concatenate([mine, mine ** 2]))
        mean, mean_sq = totals[:mine.size] / self.num_workers, totals[mine.size:] / self.num_workers
        if not (np.allclose(mean, mine, rtol=0, atol=1e-6) and np.allclose(mean_sq, mean ** 2, rtol=1e-12, atol=1e-6)):
            raise SystemExit(f'error: the workers disagree on {what} (worker {self.rank} has {mine.tolist()}); '
                             'give every host the same data and flags')


@contextlib.contextmanager
def averaged_bn_stats(net, reducer):
    """Inside the block ``net``'s BatchNorm running statistics are their mean over every worker and device.

    A single process with several devices saves the mean over its devices (``Parameter._reduce``); this gives the
    same over processes, for checkpoints. Every worker must enter the block; on exit each device gets back its own
    statistics, so training continues exactly as it would have.
    """
    params = list(net.collect_params(BN_STATS).values())
    if reducer.kvstore is None or not params:
        yield
        return
    local = [np.mean([d.asnumpy().astype(np.float64) for d in p.list_data()], axis=0) for p in params]
    total = reducer.sum('bn_stats', np.concatenate([a.reshape(-1) for a in local])) / reducer.num_workers
    saved = [[d.copy() for d in p.list_data()] for p in params]
    offset = 0
    for param, mine in zip(params, local):
        param.set_data(mx.nd.array(total[offset:offset + mine.size].reshape(mine.shape), dtype=param.dtype))
        offset += mine.size
    try:
        yield
    finally:
        for param, copies in zip(params, saved):
            for data, copy in zip(param.list_data(), copies):
                copy.copyto(data)


class DatasetShard(mx.gluon.data.Dataset):
    """The samples ``indices`` of ``dataset``; other attributes (``CLASSES``, ``NUM_CLASS``, ``mode`` ...) pass
    through to it."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]

    def load(self, i, rng):
        """Sample ``i`` loaded with the generator ``rng`` (segzoo's loader protocol), or indexed."""
        if hasattr(self.dataset, 'load'):
            return self.dataset.load(self.indices[i], rng)
        return self.dataset[self.indices[i]]

    def __getattr__(self, name):
        if name in ('dataset', 'indices'):          # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


class Workers:
    """This process's place among the workers of a run; one worker of one without a dist kvstore.

    Parameters
    ----------
    kvstore : str, KVStore or None
        ``--kvstore``: a ``dist*`` name is created here (and ``dist_async`` refused, see :func:`create_kvstore`).

    Attributes
    ----------
    kvstore : str, KVStore or None
        What ``gluon.Trainer`` gets.
    rank, num_workers : int
    reducer : Reducer
    """

    def __init__(self, kvstore):
        self.kvstore = create_kvstore(kvstore) if isinstance(kvstore, str) else kvstore
        self.rank, self.num_workers = rank_and_size(self.kvstore)
        self.reducer = Reducer(self.kvstore)

    @property
    def distributed(self):
        return self.num_workers > 1 or is_distributed(self.kvstore)

    @property
    def is_writer(self):
        """Only rank 0 writes checkpoints, logs and curves."""
        return self.rank == 0

    def contexts(self, ctx_list):
        """The devices of this worker: with Horovod one per process, GPU ``local_rank`` on GPU machines."""
        if self.kvstore != HOROVOD:
            return ctx_list
        if len(ctx_list) > 1 and ctx_list[0].device_type == 'cpu':
            raise SystemExit(f'error: --kvstore horovod runs one device per process, not {len(ctx_list)} (--ngpus); '
                             'start more processes with horovodrun -np instead')
        return [mx.gpu(_horovod().local_rank())] if ctx_list[0].device_type == 'gpu' else ctx_list

    def step_batch_size(self, local_batch_size):
        """What ``trainer.step`` gets for this worker's ``local_batch_size`` (see :func:`step_batch_size`)."""
        return step_batch_size(local_batch_size, self.kvstore)

    def batch_share(self, batch_size, num_devices):
        """``(start, stop)`` of this worker's share of every global batch (see :func:`worker_share`)."""
        return worker_share(batch_size, num_devices, self.rank, self.num_workers)

    def first_device(self, num_devices):
        """Global index of this worker's first device (workers have ``num_devices`` each)."""
        return self.rank * num_devices

    def val_shard(self, dataset):
        """This worker's contiguous part of ``dataset``; its metrics are then summed with :meth:`sum_metric`."""
        if not self.distributed:
            return dataset
        return DatasetShard(dataset, shard_indices(len(dataset), self.rank, self.num_workers))

    def mean(self, value):
        """Mean of the number ``value`` over the workers (the logged loss)."""
        if not self.distributed:
            return value
        return float(self.reducer.sum('mean', [value])[0]) / self.num_workers

    def sum_metric(self, metric):
        """Make ``metric`` (a SegmentationMetric) hold the confusion matrix of every worker's images."""
        if self.distributed:
            total = self.reducer.sum('confusion_matrix', metric.confusion_matrix)
            metric.confusion_matrix = np.rint(total).astype(metric.confusion_matrix.dtype)
        return metric
