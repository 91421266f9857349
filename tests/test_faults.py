"""Faults during training: kill -9 mid-epoch or mid-checkpoint-write then --resume RUN_DIR equals an uninterrupted
run (with DataLoader workers, and on 2 CPU devices with SyncBN); a corrupt state falls back to the previous one;
SyncBN on 2 CPU contexts keeps its memory flat.

Each killed run is a real ``python train.py`` that SIGKILLs itself at a chosen moment: a small wrapper patches
``gluon.Trainer.step`` (the n-th step dies after its forward and backward) or the checkpoint writer (the n-th
``.states`` file dies half written), then runs train.py as ``__main__``. The moment is drawn at random (any
moment must work) and named in the assertion messages.
"""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest

from helpers import ROOT, load_script, make_voc_root
from segzoo import checkpoint as ckpt
from segzoo import cli
from segzoo.utils.parallel import engine_threads_needed

train = load_script('train.py')

KILLER = textwrap.dedent('''
    import os, runpy, signal, sys
    import mxnet as mx
    from segzoo import checkpoint as ckpt
    kind, n = sys.argv[1], int(sys.argv[2])
    calls = [0]

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if kind == 'step':                  # the n-th optimizer step dies after its forward and backward
        real_step = mx.gluon.Trainer.step

        def step(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                die()
            return real_step(self, *args, **kwargs)
        mx.gluon.Trainer.step = step
    else:                               # the n-th trainer-state file dies half written
        real_write = ckpt.atomic_write

        def atomic_write(path, write_fn):
            if not path.endswith('.states'):
                return real_write(path, write_fn)
            calls[0] += 1
            if calls[0] != n:
                return real_write(path, write_fn)

            def torn(tmp):
                write_fn(tmp)
                with open(tmp, 'r+b') as f:
                    f.truncate(os.path.getsize(tmp) // 2)
                die()
            return real_write(path, torn)
        ckpt.atomic_write = atomic_write
    sys.argv = ['train.py'] + sys.argv[3:]
    runpy.run_path(os.path.join(sys.path[0] or '.', 'train.py'), run_name='__main__')
''')
STEPS = 4               # 2 epochs x 2 iterations (4 training images, batch 2)
SYNCBN_WORKERS = str(engine_threads_needed([mx.cpu(0), mx.cpu(1)], syncbn=True))   # engine workers of 2-device runs


def _argv(voc_root, save_dir, *extra):
    return ['--dataset', 'pascal_voc', '--dataset-root', voc_root, '--model', 'deeplab', '--backbone',
            'resnet_tiny', '--aux', '--no-cuda', '--batch-size', '2', '--test-batch-size', '2', '--base-size', '40',
            '--crop-size', '32', '--lr', '0.01', '--epochs', '2', '--log-interval', '1', '--save-interval', '1',
            '--save-dir', str(save_dir), *extra]


def _params(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


def _assert_same_params(a, b, what):
    pa, pb = _params(a), _params(b)
    assert sorted(pa) == sorted(pb)
    for key in pa:     # BN running statistics restart from the device mean on resume (see test_train): 1e-6
        atol = 1e-6 if 'running' in key else 0
        np.testing.assert_allclose(pb[key], pa[key], rtol=0, atol=atol, err_msg=f'{key} ({what})')


# name -> (extra flags, kill kind, n): the n-th step (2..STEPS: a checkpoint exists) or states write (2..STEPS)
SCENARIOS = {
    'mid_epoch_2_workers': (('--workers', '2'), 'step'),
    'mid_epoch_syncbn_2_devices': (('--workers', '0', '--ngpus', '2', '--syncbn'), 'step'),
    'mid_checkpoint_write_syncbn_2_devices': (('--workers', '0', '--ngpus', '2', '--syncbn'), 'save'),
}


@pytest.fixture(scope='module')
def voc_root(sample_data, tmp_path_factory):
    return make_voc_root(sample_data, tmp_path_factory.mktemp('voc'))


@pytest.fixture(scope='module')
def killed(voc_root, tmp_path_factory):
    """Every scenario's train.py started at once (they overlap the in-process reference runs), each SIGKILLing
    itself at a random moment; stopped by pid at the end if still running."""
    base = tmp_path_factory.mktemp('killed')
    env = dict(os.environ, PYTHONPATH=ROOT, MXNET_CPU_WORKER_NTHREADS=SYNCBN_WORKERS, OMP_NUM_THREADS='1')
    runs = {}
    try:
        for name, (extra, kind) in SCENARIOS.items():
            n = random.randint(2, STEPS)
            run_dir = base / name
            proc = subprocess.Popen([sys.executable, '-c', KILLER, kind, str(n), *_argv(voc_root, run_dir, *extra)],
                                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            runs[name] = proc, run_dir, f'{kind} {n}'
        yield runs
    finally:
        for proc, _, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture(scope='module')
def straight(voc_root, tmp_path_factory):
    """Uninterrupted runs with the same seed: {extra flags: checkpoint.params}."""
    done = {}

    def get(extra):
        if extra not in done:
            run_dir = tmp_path_factory.mktemp('straight')
            train.main(train.parse_args(_argv(voc_root, run_dir, *extra)))
            done[extra] = run_dir / ckpt.CHECKPOINT_PARAMS
        return done[extra]
    return get


@pytest.mark.parametrize('name', list(SCENARIOS))
def test_kill_9_then_resume_equals_an_uninterrupted_run(name, killed, straight, voc_root):
    extra = SCENARIOS[name][0]
    reference = straight(extra if '--syncbn' in extra else ('--workers', '2'))   # workers do not change the data
    proc, run_dir, moment = killed[name]
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f'{moment}: {err[-2000:]}'
    record = json.loads((run_dir / ckpt.CHECKPOINT_JSON).read_text())
    assert record['global_step'] == int(moment.split()[1]) - 1, moment     # the last committed checkpoint
    result = train.main(train.parse_args(_argv(voc_root, run_dir, *extra, '--resume', str(run_dir))))
    assert result['global_step'] == STEPS and result['epoch'] == 1
    _assert_same_params(reference, run_dir / ckpt.CHECKPOINT_PARAMS, moment)
    assert not [f for f in os.listdir(run_dir) if '.tmp' in f], moment     # the torn temporary is gone


def test_corrupt_state_falls_back_to_the_previous_good_one(voc_root, straight, tmp_path, capsys):
    reference = straight(('--workers', '2'))
    run_dir = tmp_path / 'run'
    train.main(train.parse_args(_argv(voc_root, run_dir, '--workers', '0', '--stop-at-iter', '3')))
    assert json.loads((run_dir / ckpt.PREVIOUS_JSON).read_text())['global_step'] == 2
    latest = run_dir / json.loads((run_dir / ckpt.CHECKPOINT_JSON).read_text())['params']
    latest.write_bytes(latest.read_bytes()[:-100])             # truncated (e.g. a copy cut short)
    result = train.main(train.parse_args(_argv(voc_root, run_dir, '--workers', '0', '--resume', str(run_dir))))
    assert result['global_step'] == STEPS
    log = (run_dir / 'train.log').read_text()
    assert f'{latest} is corrupt or truncated' in log
    assert f'resuming from the previous good state {run_dir / ckpt.PREVIOUS_JSON} (step 2)' in log
    _assert_same_params(reference, run_dir / ckpt.CHECKPOINT_PARAMS, 'fell back to step 2')

    # both states damaged: one error line naming the files, exit status 1
    for name in (ckpt.CHECKPOINT_JSON, ckpt.PREVIOUS_JSON):
        states = run_dir / json.loads((run_dir / name).read_text())['states']
        states.write_bytes(b'\0' * 64)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(train.main, train.parse_args, _argv(voc_root, run_dir, '--workers', '0', '--resume', str(run_dir)))
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and 'Traceback' not in err
    line = [e for e in err.splitlines() if e.startswith('error: ')][0]
    assert 'is corrupt or truncated' in line and 'the previous state is unusable too' in line


def _rss_mib():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


SOAK = textwrap.dedent('''
    import json, os, sys
    sys.path.insert(0, os.path.join({root!r}, 'tests'))
    import mxnet as mx
    from helpers import load_script
    from test_faults import _rss_mib
    train = load_script('train.py')
    from segzoo import distributed
    from segzoo.model_zoo import get_segmentation_model
    ctx = [mx.cpu(0), mx.cpu(1)]
    net = get_segmentation_model('deeplab', 'pascal_voc', 'resnet_tiny', aux=True, pretrained_base=False, ctx=ctx,
                                 norm_layer=mx.gluon.contrib.nn.SyncBatchNorm, norm_kwargs={{'num_devices': 2}})
    trainer = mx.gluon.Trainer(net.collect_params(), 'sgd', {{'learning_rate': 0.001, 'momentum': 0.9}})
    distributed.init_trainer(trainer)
    loss_fn = train.make_loss(train.parse_args(['--aux']), True)
    config = train.LoopConfig(ctx_list=ctx, run_dir='', save=None, epochs=1, threaded=True)
    image = mx.nd.random.uniform(shape=(4, 3, 32, 32))
    label = mx.nd.random.randint(0, 21, shape=(4, 32, 32)).astype('float32')
    rss = []
    for step in range({steps}):
        losses = train.train_step(net, loss_fn, trainer, image, label, config, step)
        mx.nd.waitall()
        rss.append(_rss_mib())
    print(json.dumps(rss))
''')


@pytest.mark.slow
def test_syncbn_soak_keeps_memory_flat():
    """gluon-cv #1298/#1316: memory grew with every SyncBN iteration. 60 steps of a tiny DeepLabV3 with SyncBN over
    2 CPU contexts through train.py's train_step (threaded forwards and backwards): after 20 warm-up steps the
    resident memory may grow by at most 8 MiB over the last 40. Starting new threads every step (as before, and as
    GluonCV's DataParallelModel does) grew it by ~25 MiB per step here: about 1 GiB in those 40 steps."""
    env = dict(os.environ, MXNET_CPU_WORKER_NTHREADS=SYNCBN_WORKERS, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, '-c', SOAK.format(root=ROOT, steps=60)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rss = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = max(rss[20:]) - rss[20]
    assert growth <= 8, f'RSS grew {growth:.1f} MiB after warm-up ({rss[20]:.0f} -> {rss[-1]:.0f} MiB)'
