"""DataLoader for the segmentation datasets: reproducible per-sample seeding, batching, worker errors.

:func:`get_dataloader` builds on ``mxnet.gluon.data.DataLoader`` (worker threads by default, or forked worker
processes) and adds:

* **Seeding.** Every sample gets its own seed, drawn in the main process from ``(seed, epoch, position in the
  epoch)``. The sample is loaded with a ``random.Random`` seeded from it, which segzoo's transforms use through
  :func:`segzoo.data.transforms.item_rng`; in worker processes Python's global ``random`` and numpy's global RNG
  are seeded from it too. The items therefore depend neither on which worker loads a sample nor on the order in
  which workers finish (seeding each worker once could not give that: the pool hands each batch to whichever
  worker is free). GluonCV forks its workers with numpy's RNG unseeded, so all of them draw the same numpy
  numbers; here numpy is seeded per sample in worker processes even when ``seed`` is None (then the base seed
  comes from the OS and runs are not reproducible). The caller's own global RNGs are never touched by threads
  or by ``num_workers=0``.
* **Batching.** Fixed-size items are stacked: image float32 (B, 3, H, W), mask int32 (B, H, W), as ``mx.nd``
  arrays (in shared CPU memory with worker processes). Variable-size items (modes ``testval``/``test``) are
  returned as lists of per-item arrays (strings stay strings), like GluonCV's ``ms_batchify_fn``.
* **Errors.** An exception raised while loading a sample reaches the caller with its type and message (the
  datasets name the file), plus a note giving the item index; exceptions that could not travel between
  processes are replaced by a ``RuntimeError`` carrying the same text.

What is reproducible, exactly: for the same dataset, ``seed``, ``batch_size``, ``shuffle`` and ``last_batch``,
epoch ``e`` (the ``e``-th iteration over the loader, or the one chosen with :meth:`SegDataLoader.set_epoch`, e.g.
when resuming) yields the same batches, in order, whatever ``num_workers`` and ``thread_pool`` are, provided the
dataset's randomness comes from segzoo's transforms (segzoo's datasets) or, with worker processes only, from
Python's global ``random`` / numpy's global RNG. With ``last_batch='rollover'`` the samples carried into epoch
``e`` are recomputed from the earlier epochs, so a resumed run matches an uninterrupted one there too;
``set_epoch(e, skip_batches=k)`` resumes in the middle of an epoch.
"""
import functools
import pickle
import random
import secrets

import mxnet as mx
import numpy as np

from .transforms import item_rng

__all__ = ['SegDataLoader', 'get_dataloader', 'stack_batchify', 'list_batchify', 'ms_batchify_fn',
           'SeededBatchSampler', 'LAST_BATCH']

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
    """Stack fixed-size ``(image, mask)`` items into a batch.

    Parameters
    ----------
    items : list of tuple
        ``(image, mask)`` per sample: image (3, H, W) (or (H, W, 3) uint8 when the dataset has no transform),
        mask (H, W); numpy arrays or ``mx.nd`` arrays. Further fields are stacked as they are.
    ctx : mx.Context or None
        Where the batch lives; None = ``mx.cpu()``. Worker processes use ``mx.Context('cpu_shared', 0)``.

    Returns
    -------
    list of mx.nd.NDArray
        ``[image (B, 3, H, W), mask (B, H, W) int32, ...]``; the image keeps its dtype (float32 after
        normalisation).
    """
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
    """Batch variable-size items as lists (GluonCV's ``ms_batchify_fn`` semantics).

    Parameters
    ----------
    items : list of tuple
        ``(image, mask)`` or ``(image, file name)`` per sample.
    ctx : mx.Context or None
        Where the arrays live; None = ``mx.cpu()``.

    Returns
    -------
    list of list
        One list per field, one entry per sample: arrays become ``mx.nd`` arrays (masks int32), strings stay.
    """
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
class SeededBatchSampler:
    """Batches of ``(seed_words, index)`` keys, a pure function of ``(base_seed, epoch)``.

    Epoch ``e`` draws from ``numpy.random.default_rng([base_seed, e])`` the sample order (when shuffling) and two
    32-bit seed words per position. Each iteration yields the batches of the current epoch and advances it by
    one. With ``last_batch='rollover'`` the epoch starts with the samples the previous epochs left over (the last
    ``(e * length) % batch_size`` keys of the stream so far), recomputed rather than remembered, so an epoch set
    with :attr:`epoch` after a restart yields exactly what an uninterrupted run yields.

    Parameters
    ----------
    length : int
        Dataset size.
    batch_size : int
    shuffle : bool
    last_batch : {'keep', 'discard', 'rollover'}
    base_seed : int

    Attributes
    ----------
    epoch : int
        The epoch the next iteration yields.
    skip : int
        Batches of that epoch the next iteration leaves out at its start (to resume mid-epoch); reset to 0 by
        the iteration.
    """

    def __init__(self, length, batch_size, shuffle, last_batch, base_seed):
        self._length = length
        self._batch_size = batch_size
        self._shuffle = shuffle
        self._last_batch = last_batch
        self._base_seed = int(base_seed)
        self.epoch = 0
        self.skip = 0

    def epoch_keys(self, epoch):
        """The ``(seed_words, index)`` keys of epoch ``epoch`` in order (no carried-over samples)."""
        gen = np.random.default_rng([self._base_seed, epoch])
        order = gen.permutation(self._length) if self._shuffle else np.arange(self._length)
        words = gen.integers(0, 2 ** 32, size=(self._length, 2), dtype=np.uint64).tolist()
        return [(tuple(w), i) for w, i in zip(words, order.tolist())]

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
                yield batch

    def __len__(self):
        total = len(self._carried(self.epoch)) + self._length
        if self._last_batch == 'keep':
            return max(0, -(-total // self._batch_size) - self.skip)
        return max(0, total // self._batch_size - self.skip)


def _seed_globals(words):
    """Seed Python's ``random`` and numpy's global RNG from two 32-bit words."""
    random.seed((words[0] << 32) | words[1])
    np.random.seed(np.array(words, dtype=np.uint32))


def _portable(err, index, dataset):
    """``err`` annotated with the item index, or a RuntimeError with its text if it cannot be pickled."""
    where = f'while loading item {index} of {type(dataset).__name__}'
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # noqa: BLE001 -- anything that cannot travel between processes is replaced
        return RuntimeError(f'{type(err).__name__}: {err} ({where})')
    if hasattr(err, 'add_note'):
        err.add_note(where)
    return err


class _SeededDataset(mx.gluon.data.Dataset):
    """Dataset view whose keys are ``(seed_words, index)``: loads the item with its own seeded RNG.

    The item's ``random.Random`` is handed to segzoo's transforms through
    :func:`segzoo.data.transforms.item_rng` (per thread). In worker processes, which belong to the loader,
    Python's global ``random`` and numpy's global RNG are seeded from the same words too, so datasets that draw
    from them (GluonCV's, for instance) are reproducible as well.

    Parameters
    ----------
    dataset : Dataset
    seed_globals : bool
        Also seed the process-wide RNGs (only in worker processes: the caller's and threads' RNGs are left alone).
    """

    def __init__(self, dataset, seed_globals):
        super().__init__()
        self._dataset = dataset
        self._seed_globals = seed_globals

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, key):
        words, index = key
        if self._seed_globals:
            _seed_globals(words)
        try:
            with item_rng(random.Random((words[0] << 32) | words[1])):
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
                   batchify=None, thread_pool=True, prefetch=None, timeout=120):
    """Build a DataLoader over a segmentation dataset.

    Parameters
    ----------
    dataset : Dataset
        E.g. from ``segzoo.data.get_segmentation_dataset(..., transform=ImageNormalize())``.
    batch_size : int
    shuffle : bool
        New random order every epoch (drawn from ``seed`` and the epoch).
    last_batch : {'keep', 'discard', 'rollover'}
        Incomplete last batch: returned, dropped, or completed with the next epoch's first samples. Validation
        uses ``'keep'`` (the exact val set).
    num_workers : int
        Worker processes; 0 loads in the calling process.
    seed : int or None
        Base seed of the sample order and per-sample seeds; None draws one from the OS.
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
    batch_sampler = SeededBatchSampler(len(dataset), batch_size, shuffle, last_batch, base_seed)
    loader = mx.gluon.data.DataLoader(
        _SeededDataset(dataset, seed_globals=processes), batch_sampler=batch_sampler,
        batchify_fn=functools.partial(batchify, ctx=ctx), num_workers=num_workers, thread_pool=thread_pool,
        prefetch=prefetch, timeout=timeout)
    return SegDataLoader(dataset, batch_sampler, loader)
