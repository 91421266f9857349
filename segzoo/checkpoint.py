"""Atomic, resumable training checkpoints in a run directory.

Layout written by :func:`save_checkpoint` (``run_dir`` = ``runs/<dataset>/<model>/<checkname>``)::

    state-<step>.params    weights at global step <step> (GluonCV key format)
    state-<step>.states    gluon.Trainer states: momentum buffers, update counts (schedule position), optimizer
    checkpoint.json        the commit record: the :class:`TrainState` fields (epoch, iteration, global step, best
                           mIoU, epoch_done), RNG states, args, and the names and SHA-1s of the two files above
    previous.json          the record before it, whose state files are kept too: the previous good state
    checkpoint.params      the latest weights (a hard link to / copy of state-<step>.params): what GluonCV's
                           ``load_parameters``, ``segzoo.get_model(..., pretrained=PATH)`` and the next stage use
    model_best.params      weights of the best validation mIoU so far (linked like checkpoint.params)

Every file is written to a temporary name in the same folder, flushed and fsync'ed, then renamed over the old one
(``os.replace`` is atomic on POSIX and Windows), and the folder is fsync'ed. ``checkpoint.json`` is replaced only
after both state files are complete, so a crash at any moment leaves either the previous checkpoint or the new one,
never a mix or a truncated file. Superseded ``state-*`` files are deleted after the commit, except the previous
record's.

A file damaged later (a full disk, a copy cut short, a bad sector) is caught on resume by its SHA-1:
:func:`load_checkpoint` names it and continues from ``previous.json`` when that state is intact.
"""
import dataclasses
import glob
import json
import logging
import os
import random
import shutil
import uuid

import mxnet as mx
import numpy as np

from .utils.download import sha1sum
from .utils.fileio import atomic_write, write_json

__all__ = ['TrainState', 'save_params', 'save_checkpoint', 'load_checkpoint', 'find_state', 'check_save_dir',
           'seed_all', 'seed_mx', 'get_rng_state', 'set_rng_state', 'CHECKPOINT_JSON', 'PREVIOUS_JSON',
           'CHECKPOINT_PARAMS', 'BEST_PARAMS']

CHECKPOINT_JSON = 'checkpoint.json'
PREVIOUS_JSON = 'previous.json'
CHECKPOINT_PARAMS = 'checkpoint.params'
BEST_PARAMS = 'model_best.params'
FORMAT_VERSION = 1


@dataclasses.dataclass
class TrainState:
    """Where a training run is; saved and restored as one by :func:`save_checkpoint` / :func:`load_checkpoint`.

    ``epoch`` is the epoch being trained and ``iteration`` the number of its batches already done; ``global_step``
    counts optimizer steps over the whole run (the lr schedule's position). ``epoch_done`` marks a state saved after
    the epoch's validation: training continues at the start of the next epoch.
    """
    epoch: int = 0
    iteration: int = 0
    global_step: int = 0
    best_miou: float = 0.0
    epoch_done: bool = False

    def next_epoch(self):
        """Move to the first batch of the next epoch."""
        self.epoch, self.iteration, self.epoch_done = self.epoch + 1, 0, False

    @classmethod
    def from_record(cls, record):
        """The state a ``checkpoint.json`` record continues from (missing fields take their defaults)."""
        state = cls(**{f.name: record[f.name] for f in dataclasses.fields(cls) if f.name in record})
        if state.epoch_done:
            state.next_epoch()
        return state


def save_params(net, path):
    """Save ``net``'s weights (GluonCV key format) to ``path`` atomically."""
    atomic_write(path, net.save_parameters)


def _link_or_copy(src, dst):
    """Atomically make ``dst`` hold ``src``'s bytes (hard link when the file system allows it)."""
    def write(tmp):
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    atomic_write(dst, write)


def get_rng_state():
    """Python and NumPy global RNG states as JSON-able data (MXNet's RNG is reseeded per step by train.py)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {'python': [py_version, list(py_state), py_gauss],
            'numpy': [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)]}


def set_rng_state(state):
    """Inverse of :func:`get_rng_state`."""
    py_version, py_state, py_gauss = state['python']
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state['numpy']
    np.random.set_state((np_name, np.asarray(np_keys, dtype=np.uint32), np_pos, np_has_gauss, np_gauss))


def save_checkpoint(run_dir, net, trainer, state, args=None, best=False):
    """Write the full training state atomically (see the module docstring).

    Parameters
    ----------
    run_dir : str
    net : gluon.Block
        Its ``save_parameters`` writes GluonCV keys.
    trainer : gluon.Trainer
    state : TrainState
        Saved with the Python and NumPy RNG states of this moment.
    args : dict or None
        JSON-able flags of the run (train.py compares the schedule flags on resume).
    best : bool
        These weights are the best so far: ``model_best.params`` becomes a link to (or copy of) them too, so the
        weights are serialised once.
    """
    meta = dict(dataclasses.asdict(state), rng=get_rng_state(), args=args)
    step = int(state.global_step)
    params_name, states_name = f'state-{step:08d}.params', f'state-{step:08d}.states'
    save_params(net, os.path.join(run_dir, params_name))
    atomic_write(os.path.join(run_dir, states_name), trainer.save_states)
    if best:   # before the commit: a crash leaves model_best at least as new as the committed best_miou
        _link_or_copy(os.path.join(run_dir, params_name), os.path.join(run_dir, BEST_PARAMS))
    record = dict(meta, format_version=FORMAT_VERSION, params=params_name, states=states_name,
                  sha1={name: sha1sum(os.path.join(run_dir, name)) for name in (params_name, states_name)})
    current, previous = os.path.join(run_dir, CHECKPOINT_JSON), os.path.join(run_dir, PREVIOUS_JSON)
    if _record_files(current) - {params_name, states_name}:     # another step: it becomes the previous state
        _link_or_copy(current, previous)
    write_json(current, record)          # commit point
    _link_or_copy(os.path.join(run_dir, params_name), os.path.join(run_dir, CHECKPOINT_PARAMS))
    keep = {params_name, states_name} | _record_files(previous)
    for old in glob.glob(os.path.join(run_dir, 'state-*')):
        if os.path.basename(old) not in keep:
            os.remove(old)
    for torn in glob.glob(os.path.join(run_dir, '.*.tmp*')):    # left by a killed run (the run lock excludes others)
        if not torn.endswith(f'.tmp{os.getpid()}'):
            os.remove(torn)


def find_state(path):
    """Return the ``checkpoint.json`` path for ``path`` (a run directory or the json itself), or None.

    A ``.params`` file (GluonCV's, or ``checkpoint.params``) is not a full state: it returns None, and the caller
    loads it as weights only.
    """
    if os.path.isdir(path):
        candidate = os.path.join(path, CHECKPOINT_JSON)
        if not os.path.isfile(candidate):
            raise FileNotFoundError(f'--resume {path}: folder has no {CHECKPOINT_JSON} (not a segzoo run directory)')
        return candidate
    if path.endswith('.json') or path.endswith('.states'):
        candidate = os.path.join(os.path.dirname(path), CHECKPOINT_JSON) if path.endswith('.states') else path
        if not os.path.isfile(candidate):
            raise FileNotFoundError(f'--resume {path}: {candidate} does not exist')
        return candidate
    if not os.path.isfile(path):
        raise FileNotFoundError(f'--resume {path}: file does not exist')
    return None


def _record_files(json_path):
    """The state files a record names (empty if it is missing or unreadable)."""
    try:
        with open(json_path) as f:
            record = json.load(f)
        return {record['params'], record['states']}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _read_record(json_path):
    """The record in ``json_path`` after checking that the files it names exist and have their saved SHA-1s."""
    with open(json_path) as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f'{json_path} is not valid JSON (corrupt or truncated): {exc}') from exc
    folder = os.path.dirname(os.path.abspath(json_path))
    for key in ('params', 'states'):
        if key not in meta or not os.path.isfile(os.path.join(folder, meta[key])):
            raise FileNotFoundError(f'{json_path}: the {key} file {meta.get(key)!r} it names is missing')
        expected = (meta.get('sha1') or {}).get(meta[key])
        if expected and sha1sum(os.path.join(folder, meta[key])) != expected:
            raise ValueError(f'{os.path.join(folder, meta[key])} is corrupt or truncated (its SHA-1 differs from '
                             f'the one {json_path} recorded)')
    return meta


def load_checkpoint(json_path, net, trainer, ctx_list):
    """Restore weights and trainer states from a ``checkpoint.json`` written by :func:`save_checkpoint`.

    Build ``net``, set its ``lr_mult``/``wd_mult`` and create ``trainer`` exactly as in a fresh run first:
    ``Trainer.load_states`` takes the multipliers from the current parameters, not from the file.

    The Python and NumPy RNG states saved with it are restored too. A corrupt or truncated state (a file whose
    SHA-1 differs from the recorded one, or that does not load) is named in a warning and the previous good state
    (``previous.json``) is used instead; without one the error is raised.

    Returns
    -------
    tuple
        ``(TrainState to continue from, the run's saved args dict (empty if none))``.
    """
    previous = os.path.join(os.path.dirname(os.path.abspath(json_path)), PREVIOUS_JSON)
    candidates = [json_path] + ([previous] if os.path.isfile(previous) else [])
    failures = []
    for path in candidates:
        try:
            meta = _read_record(path)
            folder = os.path.dirname(os.path.abspath(path))
            net.load_parameters(os.path.join(folder, meta['params']), ctx=ctx_list)
            trainer.load_states(os.path.join(folder, meta['states']))
        except (OSError, ValueError, mx.base.MXNetError) as err:
            failures.append(err)
            continue
        if failures:
            logging.getLogger('segzoo').warning(f'{failures[0]}; resuming from the previous good state {path} '
                                                f'(step {meta.get("global_step")})')
        if meta.get('rng'):
            set_rng_state(meta['rng'])
        return TrainState.from_record(meta), meta.get('args') or {}
    if len(failures) == 1:
        raise failures[0]
    raise ValueError(f'{failures[0]}; the previous state is unusable too: {failures[1]}')


def check_save_dir(run_dir, net):
    """Fail now, naming ``run_dir``, if it cannot hold ``net``'s checkpoints: a probe file must be writable, and the
    free space must hold three states (the previous, the current and the one being written), each the weights
    plus trainer states of the same size (SGD's momentum)."""
    num_bytes = 2 * sum(int(np.prod(p.shape)) * np.dtype(p.dtype).itemsize for p in net.collect_params().values())
    probe = os.path.join(run_dir, f'.write-test-{uuid.uuid4().hex}')
    try:
        with open(probe, 'wb') as f:
            f.write(b'\0' * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise OSError(err.errno, f'the save directory {run_dir} is not writable: {err.strerror}') from None
    finally:
        if os.path.exists(probe):
            os.remove(probe)
    free = shutil.disk_usage(run_dir).free
    if free < 3 * num_bytes:
        raise OSError(f'the save directory {run_dir} has {free / 2**20:.1f} MiB free but checkpoints need about '
                      f'{3 * num_bytes / 2**20:.1f} MiB (3 x {num_bytes / 2**20:.1f} MiB of weights and trainer '
                      'states); free space or choose another --save-dir')


def seed_all(seed):
    """Seed Python's, NumPy's and MXNet's global RNGs (the start of a run)."""
    random.seed(seed)
    np.random.seed(seed)
    seed_mx(seed)


def seed_mx(seed):
    """Seed MXNet's RNG on every device (dropout masks, random initialisers)."""
    mx.random.seed(int(seed) % (2 ** 31), ctx='all')
