"""Single-process data parallelism over a list of contexts: split a batch, run one function per device.

``SyncBatchNorm`` waits inside its forward until every device has reached the same layer, so with ``--syncbn`` the
per-device forwards must run concurrently, and so must the backwards (on CPU contexts, one thread issuing every
device's backward deadlocks in SyncBN's backward, measured with MXNet 1.9.1): put ``record(); forward;
loss.backward()`` inside the function given to :func:`parallel_apply`. MXNet keeps autograd's recording/training
flags per thread, so each worker thread re-enters the caller's mode. Without SyncBN a plain loop is used (cheaper, and MXNet's engine still overlaps
the devices' work asynchronously).
"""
import threading

from mxnet import autograd
from mxnet.gluon.utils import split_and_load

__all__ = ['split_batch', 'parallel_apply']


def split_batch(batch, ctx_list):
    """Split an NDArray along axis 0 over ``ctx_list`` (GluonCV's ``even_split=False``: slice sizes differ by at most one).

    Raises ValueError naming both sizes when the batch has fewer samples than there are devices.
    """
    if batch.shape[0] < len(ctx_list):
        raise ValueError(f'batch of {batch.shape[0]} samples cannot be split over {len(ctx_list)} devices; '
                         'use a batch size that is at least the number of devices')
    return split_and_load(batch, ctx_list, batch_axis=0, even_split=False)


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

    threads = [threading.Thread(target=worker, args=(i, args), daemon=True)
               for i, args in enumerate(per_device_args)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for exc in errors:
        if exc is not None:
            raise exc
    return results
