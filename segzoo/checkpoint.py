"""Atomic, resumable training checkpoints in a run directory.

Layout written by :func:`save_checkpoint` (``run_dir`` = ``runs/<dataset>/<model>/<checkname>``)::

    state-<step>.params    weights at global step <step> (GluonCV key format)
    state-<step>.states    gluon.Trainer states: momentum buffers, update counts (schedule position), optimizer
    checkpoint.json        the commit record: the :class:`TrainState` fields (epoch, iteration, global step, best
                           mIoU, epoch_done), RNG states, args, and the names of the two files above
    checkpoint.params      the latest weights (a hard link to / copy of state-<step>.params): what GluonCV's
                           ``load_parameters``, ``segzoo.get_model(..., pretrained=PATH)`` and the next stage use
    model_best.params      weights of the best validation mIoU so far (linked like checkpoint.params)

Every file is written to a temporary name in the same folder, flushed and fsync'ed, then renamed over the old one
(``os.replace`` is atomic on POSIX and Windows), and the folder is fsync'ed. ``checkpoint.json`` is replaced only
after both state files are complete, so a crash at any moment leaves either the previous checkpoint or the new one,
never a mix or a truncated file. Superseded ``state-*`` files are deleted after the commit.
"""
import dataclasses
import glob
import json
import os
import random
import shutil

import mxnet as mx
import numpy as np

from .utils.fileio import atomic_write, write_json

__all__ = ['TrainState', 'save_params', 'save_checkpoint', 'load_checkpoint', 'find_state', 'seed_all', 'seed_mx',
           'get_rng_state', 'set_rng_state', 'CHECKPOINT_JSON', 'CHECKPOINT_PARAMS', 'BEST_PARAMS']

CHECKPOINT_JSON = 'checkpoint.json'
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
    record = dict(meta, format_version=FORMAT_VERSION, params=params_name, states=states_name)
    write_json(os.path.join(run_dir, CHECKPOINT_JSON), record)          # commit point
    _link_or_copy(os.path.join(run_dir, params_name), os.path.join(run_dir, CHECKPOINT_PARAMS))
    keep = {params_name, states_name}
    for old in glob.glob(os.path.join(run_dir, 'state-*')):
        if os.path.basename(old) not in keep:
            os.remove(old)


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


def load_checkpoint(json_path, net, trainer, ctx_list):
    """Restore weights and trainer states from a ``checkpoint.json`` written by :func:`save_checkpoint`.

    Build ``net``, set its ``lr_mult``/``wd_mult`` and create ``trainer`` exactly as in a fresh run first:
    ``Trainer.load_states`` takes the multipliers from the current parameters, not from the file.

    The Python and NumPy RNG states saved with it are restored too.

    Returns
    -------
    tuple
        ``(TrainState to continue from, the run's saved args dict (empty if none))``.
    """
    with open(json_path) as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f'{json_path} is not valid JSON: {exc}') from exc
    folder = os.path.dirname(os.path.abspath(json_path))
    for key in ('params', 'states'):
        if key not in meta or not os.path.isfile(os.path.join(folder, meta[key])):
            raise FileNotFoundError(f'{json_path}: the {key} file {meta.get(key)!r} it names is missing')
    net.load_parameters(os.path.join(folder, meta['params']), ctx=ctx_list)
    trainer.load_states(os.path.join(folder, meta['states']))
    if meta.get('rng'):
        set_rng_state(meta['rng'])
    return TrainState.from_record(meta), meta.get('args') or {}


def seed_all(seed):
    """Seed Python's, NumPy's and MXNet's global RNGs (the start of a run)."""
    random.seed(seed)
    np.random.seed(seed)
    seed_mx(seed)


def seed_mx(seed):
    """Seed MXNet's RNG on every device (dropout masks, random initialisers)."""
    mx.random.seed(int(seed) % (2 ** 31), ctx='all')
