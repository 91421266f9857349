"""Single-process data parallelism over a list of contexts: split a batch, run one function per device.

``SyncBatchNorm`` waits inside its forward until every device has reached the same layer, so with ``--syncbn`` the
per-device forwards must run concurrently, and so must the backwards (on CPU contexts, one thread issuing every
device's backward deadlocks in SyncBN's backward, measured with MXNet 1.9.1): put ``record(); forward;
loss.backward()`` inside the function given to :func:`parallel_apply`. MXNet keeps autograd's recording/training
flags per thread, so each worker thread re-enters the caller's mode. Without SyncBN a plain loop is used (cheaper,
and MXNet's engine still overlaps the devices' work asynchronously).

The worker threads are started once and reused (device i always runs in thread i): MXNet keeps per-thread state
that a finished thread never gives back, so a new thread per device per step grew the process by ~25 MiB a step
(measured with MXNet 1.9.1, tiny DeepLabV3 on 2 CPU contexts; the memory growth of gluon-cv #1298 / #1316, whose
DataParallelModel starts new threads on every call).

SyncBN over N *CPU* contexts also needs enough worker threads in MXNet's CPU engine: all CPU contexts share one
pool (``MXNET_CPU_WORKER_NTHREADS``, default 1) and a SyncBN op blocks its worker until every device's twin
arrives. Layers on parallel branches (the ASPP's five, DeepLabV3+'s c1 projection, the aux head) can wait at the
same time, so one worker per device is not enough: device 0 can hold every worker in the SyncBN of branches A and B
while device 1 needs one to reach A (a hang seen in 3 of 8 two-device runs once the ASPP branches got fast). With
at most ``MAX_WAITING_NORMS`` layers waiting per device, each short of at least one twin, ``MAX_WAITING_NORMS *
(N - 1) + 1`` workers always leave one free (10 of 10 runs). MXNet reads the variable once, when it is imported:
:func:`ensure_engine_threads` (called by the CLIs' entry point) restarts the process with it set when needed, and
:func:`check_engine_threads` refuses to start a run that would deadlock.
"""
import functools
import os
import queue
import sys
import threading

from mxnet import autograd
from mxnet.gluon.utils import split_and_load

__all__ = ['split_batch', 'parallel_apply', 'engine_threads_needed', 'ensure_engine_threads', 'check_engine_threads']

ENGINE_THREADS_VAR = 'MXNET_CPU_WORKER_NTHREADS'
#: SyncBN layers of one segzoo network that can wait at once on one device: the ASPP's five parallel branches,
#: DeepLabV3+'s c1 projection and the auxiliary head.
MAX_WAITING_NORMS = 7


def _engine_threads():
    """CPU engine workers of this process (the variable as MXNet read it at import, unless changed since)."""
    return int(os.environ.get(ENGINE_THREADS_VAR, '1'))


def engine_threads_needed(ctx_list, syncbn):
    """CPU engine workers a run on ``ctx_list`` needs: with SyncBN on N > 1 CPU contexts
    ``MAX_WAITING_NORMS * (N - 1) + 1`` (see the module docstring), else 1."""
    if syncbn and ctx_list[0].device_type == 'cpu' and len(ctx_list) > 1:
        return MAX_WAITING_NORMS * (len(ctx_list) - 1) + 1
    return 1


def ensure_engine_threads(num_threads):
    """Restart this process (same pid, arguments and interpreter) with ``MXNET_CPU_WORKER_NTHREADS >=
    num_threads`` if MXNet started with fewer; only an entry point may call this."""
    if num_threads <= _engine_threads():
        return
    os.environ[ENGINE_THREADS_VAR] = str(num_threads)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, getattr(sys, 'orig_argv', None) or [sys.executable, *sys.argv])


def check_engine_threads(ctx_list, syncbn):
    """Exit with a message instead of deadlocking when the CPU engine has too few workers for SyncBN."""
    needed, workers = engine_threads_needed(ctx_list, syncbn), _engine_threads()
    if needed > workers:
        raise SystemExit(f'error: --syncbn on {len(ctx_list)} CPU contexts needs {ENGINE_THREADS_VAR} >= {needed} set '
                         f'before MXNet starts (it is {workers}); run the script from the command line, which sets '
                         f'it, or export it')


def split_batch(batch, ctx_list):
    """Split an NDArray along axis 0 over ``ctx_list`` (GluonCV's ``even_split=False``: sizes differ by at most 1).

    Raises ValueError naming both sizes when the batch has fewer samples than there are devices.
    """
    if batch.shape[0] < len(ctx_list):
        raise ValueError(f'batch of {batch.shape[0]} samples cannot be split over {len(ctx_list)} devices; '
                         'use a batch size that is at least the number of devices')
    return split_and_load(batch, ctx_list, batch_axis=0, even_split=False)


_QUEUES = []                # one persistent worker thread per device slot, see the module docstring
_QUEUES_LOCK = threading.Lock()


def _serve(jobs):
    while True:
        job, finished = jobs.get()
        try:
            job()
        finally:
            finished.set()


def _worker_queue(slot):
    """The job queue of worker thread ``slot``, started on first use."""
    with _QUEUES_LOCK:
        while len(_QUEUES) <= slot:
            jobs = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(jobs,), daemon=True, name=f'segzoo-device-{len(_QUEUES)}').start()
            _QUEUES.append(jobs)
        return _QUEUES[slot]


def parallel_apply(fn, per_device_args, threaded=False):
    """Call ``fn(*args)`` for each device's ``args``; concurrently in threads when ``threaded``.

    Parameters
    ----------
    fn : callable
        E.g. ``lambda image, label: loss_fn(*net(image), label)``.
    per_device_args : list of tuple
        One argument tuple per device.
    threaded : bool
        Run each call in its own thread (needed for SyncBatchNorm), in the caller's autograd mode.

    Returns
    -------
    list
        ``fn``'s results in device order. The first exception raised by a worker is re-raised.
    """
    if not threaded or len(per_device_args) == 1:
        return [fn(*args) for args in per_device_args]
    recording, training = autograd.is_recording(), autograd.is_training()
    results = [None] * len(per_device_args)
    errors = [None] * len(per_device_args)

    def worker(i, args):
        try:
            if recording:
                with autograd.record(train_mode=training):
                    results[i] = fn(*args)
            else:
                with autograd.predict_mode() if not training else autograd.train_mode():
                    results[i] = fn(*args)
        except Exception as exc:  # re-raised in the caller's thread below
            errors[i] = exc

    finished = [threading.Event() for _ in per_device_args]
    for i, args in enumerate(per_device_args):
        _worker_queue(i).put((functools.partial(worker, i, args), finished[i]))
    for event in finished:
        event.wait()
    for exc in errors:
        if exc is not None:
            raise exc
    return results
