"""DataLoader for the segmentation datasets: per-sample seeding, batching, worker errors.

:func:`get_dataloader` wraps ``mxnet.gluon.data.DataLoader`` (worker threads by default, or forked processes):

* **Seeding.** Sample ``index`` of epoch ``e`` is loaded with its own numpy Generator,
  :func:`sample_rng` ``(seed, e, index)``, passed to the dataset's ``load(index, rng)`` (segzoo's datasets hand it to
  their transforms). So the items depend neither on the worker that loads a sample nor on the order in which workers
  finish, and ``dataset.load(i, sample_rng(seed, e, i))`` is what the loader yields for sample ``i``. In worker
  processes, Python's ``random`` and numpy's global RNG are seeded from the same key too, for datasets that draw
  from them (GluonCV leaves numpy unseeded in its workers, which then all draw the same numbers). The caller's
  global RNGs are never touched by threads or by ``num_workers=0``.
* **Batching.** Fixed-size items are stacked (image float32 (B, 3, H, W), mask int32 (B, H, W), ``mx.nd``);
  variable-size items (modes ``testval``/``test``) come as lists, like GluonCV's ``ms_batchify_fn``.
* **Errors.** A sample's exception reaches the caller with its type and message plus a note naming the item;
  exceptions that cannot travel between processes become a ``RuntimeError`` with the same text.

For the same dataset, ``seed``, ``batch_size``, ``shuffle`` and ``last_batch``, epoch ``e`` yields the same batches
whatever ``num_workers`` and ``thread_pool`` are. ``last_batch='rollover'`` recomputes the samples carried into
epoch ``e`` from the earlier epochs, and ``set_epoch(e, skip_batches=k)`` resumes in the middle of an epoch, so a
resumed run matches an uninterrupted one.
"""
import functools
import pickle
import random
import secrets

import mxnet as mx
import numpy as np

__all__ = ['SegDataLoader', 'get_dataloader', 'stack_batchify', 'list_batchify', 'ms_batchify_fn',
           'SeededBatchSampler', 'LAST_BATCH', 'sample_rng']

LAST_BATCH = ('keep', 'discard', 'rollover')


# ---------------------------------------------------------------------------------------------- batchify
def _to_numpy(x):
    return x.asnumpy() if isinstance(x, mx.nd.NDArray) else np.asarray(x)


def _new_array(array, ctx):
    """numpy array -> NDArray on ``ctx`` (one copy)."""
    return mx.nd.array(array, ctx=ctx, dtype=array.dtype)


def _stack(arrays, dtype, ctx):
    """Stack same-shape numpy arrays into a new NDArray on ``ctx``, copying each array once."""
    out = mx.nd.empty((len(arrays),) + arrays[0].shape, ctx=ctx, dtype=dtype)
    for i, array in enumerate(arrays):
        out[i]._sync_copyfrom(np.ascontiguousarray(array, dtype=dtype))
    return out


def stack_batchify(items, ctx=None):
    """``[image (B, ...), mask (B, H, W) int32, ...]`` ``mx.nd`` arrays on ``ctx`` (default cpu) stacked from
    same-size ``(image, mask, ...)`` items (numpy or ``mx.nd``); the image keeps its dtype."""
    ctx = mx.cpu() if ctx is None else ctx
    batch = []
    for field, values in enumerate(zip(*items)):
        arrays = [_to_numpy(v) for v in values]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f'cannot stack items of different shapes {sorted(shapes)} (field {field}); '
                             "use batchify='list' for variable-size items (modes testval/test)")
        dtype = np.int32 if field == 1 else arrays[0].dtype
        batch.append(_stack(arrays, dtype, ctx))
    return batch


def list_batchify(items, ctx=None):
    """One list per field of ``(image, mask or file name)`` items, arrays as ``mx.nd`` on ``ctx`` (masks int32),
    strings as they are: GluonCV's ``ms_batchify_fn`` for variable-size items."""
    ctx = mx.cpu() if ctx is None else ctx
    batch = []
    for field, values in enumerate(zip(*items)):
        column = []
        for v in values:
            if isinstance(v, str):
                column.append(v)
                continue
            array = _to_numpy(v)
            if field == 1 and array.dtype != np.int32:
                array = array.astype(np.int32)
            column.append(_new_array(array, ctx))
        batch.append(column)
    return batch


ms_batchify_fn = list_batchify


# ---------------------------------------------------------------------------------------------- seeding
def _sample_seed(seed, epoch, index):
    return np.random.SeedSequence([seed, epoch, index])


def sample_rng(seed, epoch, index):
    """The numpy Generator with which a loader seeded with ``seed`` loads sample ``index`` in epoch ``epoch``."""
    return np.random.default_rng(_sample_seed(seed, epoch, index))


class SeededBatchSampler:
    """Batches of ``(epoch, index)`` keys, a pure function of ``(base_seed, epoch)``.

    Epoch ``e`` orders the samples by ``numpy.random.default_rng([base_seed, e]).permutation`` (when shuffling).
    Each iteration yields the batches of :attr:`epoch` from batch :attr:`skip` on, then advances the epoch and
    resets the skip. With ``last_batch='rollover'`` the epoch starts with the samples the previous epochs left over
    (the last ``(e * length) % batch_size`` keys of the stream so far), recomputed rather than remembered, so an
    epoch set after a restart yields what an uninterrupted run yields.
    """

    def __init__(self, length, batch_size, shuffle, last_batch, base_seed, shard=None):
        self._shard = slice(*shard) if shard else slice(None)    # this worker's part of every batch
        self._length = length
        self._batch_size = batch_size
        self._shuffle = shuffle
        self._last_batch = last_batch
        self._base_seed = int(base_seed)
        self.epoch = 0
        self.skip = 0

    def epoch_keys(self, epoch):
        """The ``(epoch, index)`` keys of epoch ``epoch`` in order (no carried-over samples)."""
        if self._shuffle:
            order = np.random.default_rng([self._base_seed, epoch]).permutation(self._length).tolist()
        else:
            order = range(self._length)
        return [(epoch, i) for i in order]

    def _carried(self, epoch):
        """Keys that rollover carries into ``epoch``: the tail of the stream of the earlier epochs."""
        if self._last_batch != 'rollover' or self._length == 0:
            return []
        count = (epoch * self._length) % self._batch_size
        keys, previous = [], epoch - 1
        while len(keys) < count:
            keys = self.epoch_keys(previous) + keys
            previous -= 1
        return keys[len(keys) - count:] if count else []

    def __iter__(self):
        epoch, skip = self.epoch, self.skip
        self.epoch, self.skip = epoch + 1, 0
        keys = self._carried(epoch) + self.epoch_keys(epoch)
        for start in range(skip * self._batch_size, len(keys), self._batch_size):
            batch = keys[start:start + self._batch_size]
            if len(batch) == self._batch_size or self._last_batch == 'keep':
                yield batch[self._shard]

    def __len__(self):
        total = len(self._carried(self.epoch)) + self._length
        if self._last_batch == 'keep':
            return max(0, -(-total // self._batch_size) - self.skip)
        return max(0, total // self._batch_size - self.skip)


def _portable(err, index, dataset):
    """``err`` annotated with the item index and its image file, or a RuntimeError with its text if it cannot be
    pickled."""
    images = getattr(dataset, 'images', None)
    image = f' (image {images[index]})' if images is not None and 0 <= index < len(images) else ''
    where = f'while loading item {index}{image} of {type(dataset).__name__}'
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # noqa: BLE001 -- anything that cannot travel between processes is replaced
        return RuntimeError(f'{type(err).__name__}: {err} ({where})')
    if hasattr(err, 'add_note'):
        err.add_note(where)
    return err


class _SeededDataset(mx.gluon.data.Dataset):
    """Dataset view whose keys are ``(epoch, index)``: loads each item with :func:`sample_rng`.

    Datasets with ``load(index, rng)`` (segzoo's) receive the Generator; others are indexed. With
    ``seed_globals`` (worker processes only, which belong to the loader) Python's ``random`` and numpy's global
    RNG are seeded from the same key first.
    """

    def __init__(self, dataset, base_seed, seed_globals):
        super().__init__()
        self._dataset = dataset
        self._base_seed = base_seed
        self._seed_globals = seed_globals

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, key):
        epoch, index = key
        seed = _sample_seed(self._base_seed, epoch, index)
        if self._seed_globals:
            words = seed.generate_state(2)
            random.seed((int(words[0]) << 32) | int(words[1]))
            np.random.seed(words)
        try:
            if hasattr(self._dataset, 'load'):
                return self._dataset.load(index, np.random.default_rng(seed))
            return self._dataset[index]
        except Exception as err:  # noqa: BLE001 -- re-raised with its index, in a form that pickles
            portable = _portable(err, index, self._dataset)
            if portable is err:
                raise
            raise portable from None


# ---------------------------------------------------------------------------------------------- loader
class SegDataLoader:
    """Iterable over batches with per-sample seeding (see the module docstring); build with :func:`get_dataloader`.

    Attributes
    ----------
    epoch : int
        Index of the epoch the next iteration yields.
    """

    def __init__(self, dataset, batch_sampler, loader):
        self.dataset = dataset
        self._sampler = batch_sampler
        self._loader = loader

    @property
    def epoch(self):
        return self._sampler.epoch

    def set_epoch(self, epoch, skip_batches=0):
        """Make the next iteration yield epoch ``epoch`` from its batch ``skip_batches`` on (to resume a run).

        Parameters
        ----------
        epoch : int
        skip_batches : int
            Batches of that epoch already consumed (a run resumed mid-epoch); they are not loaded.
        """
        if epoch < 0 or skip_batches < 0:
            raise ValueError(f'epoch and skip_batches must be >= 0, got {epoch} and {skip_batches}')
        self._sampler.epoch = int(epoch)
        self._sampler.skip = int(skip_batches)

    def __iter__(self):
        return iter(self._loader)

    def __len__(self):
        return len(self._loader)


def _default_batchify(dataset):
    return 'list' if getattr(dataset, 'mode', None) in ('testval', 'test') else 'stack'


def get_dataloader(dataset, batch_size, shuffle=False, last_batch='keep', num_workers=0, seed=None,
                   batchify=None, thread_pool=True, prefetch=None, timeout=120, shard=None):
    """Build a DataLoader over a segmentation dataset.

    Parameters
    ----------
    dataset : Dataset
        E.g. ``segzoo.data.get_segmentation_dataset(..., transforms='gluoncv')``.
    batch_size : int
    shuffle : bool
        New random order every epoch (drawn from ``seed`` and the epoch).
    last_batch : {'keep', 'discard', 'rollover'}
        Incomplete last batch: returned, dropped, or completed with the next epoch's first samples. Validation
        uses ``'keep'`` (the exact val set).
    num_workers : int
        Workers (threads or processes, see ``thread_pool``); 0 loads in the calling thread.
    seed : int or None
        Base seed of the sample order and of :func:`sample_rng`; None draws one from the OS.
    batchify : {'stack', 'list'} or callable or None
        ``'stack'`` (fixed-size items), ``'list'`` (variable-size items, GluonCV's ``ms_batchify_fn``), or
        ``f(items, ctx)``. None: ``'list'`` if ``dataset.mode`` is ``'testval'`` or ``'test'``, else ``'stack'``.
    thread_pool : bool
        With workers: True (default) loads in threads of this process, False in forked processes (MXNet's
        DataLoader modes). Threads are faster here: decoding, resizing, blurring and numpy release the GIL, and
        batches need no shared memory or pickling (``benchmarks/data_pipeline.py`` measures both).
    prefetch : int or None
        Batches in flight; None = ``2 * num_workers`` (MXNet's default).
    timeout : float
        Seconds to wait for a worker's batch.
    shard : (int, int) or None
        Yield only samples ``start:stop`` of every batch (a distributed worker's share of the global batch, see
        ``segzoo.distributed.worker_share``); batch counts and seeds stay those of the whole batch.

    Returns
    -------
    SegDataLoader
        Iterating yields ``[image mx.nd float32 (B, 3, H, W), mask mx.nd int32 (B, H, W)]`` ('stack') or
        ``[list of image arrays, list of mask arrays or file names]`` ('list').
    """
    if last_batch not in LAST_BATCH:
        raise ValueError(f'last_batch must be one of {", ".join(LAST_BATCH)}, got {last_batch!r}')
    if batch_size < 1:
        raise ValueError(f'batch_size must be positive, got {batch_size}')
    if num_workers < 0:
        raise ValueError(f'num_workers must be >= 0, got {num_workers}')
    batchify = _default_batchify(dataset) if batchify is None else batchify
    functions = {'stack': stack_batchify, 'list': list_batchify}
    if isinstance(batchify, str):
        if batchify not in functions:
            raise ValueError(f"batchify must be 'stack', 'list' or a callable, got {batchify!r}")
        batchify = functions[batchify]
    processes = num_workers > 0 and not thread_pool
    ctx = mx.Context('cpu_shared', 0) if processes else mx.cpu()
    base_seed = secrets.randbits(63) if seed is None else seed
    batch_sampler = SeededBatchSampler(len(dataset), batch_size, shuffle, last_batch, base_seed, shard)
    loader = mx.gluon.data.DataLoader(
        _SeededDataset(dataset, base_seed, seed_globals=processes), batch_sampler=batch_sampler,
        batchify_fn=functools.partial(batchify, ctx=ctx), num_workers=num_workers, thread_pool=thread_pool,
        prefetch=prefetch, timeout=timeout)
    return SegDataLoader(dataset, batch_sampler, loader)
