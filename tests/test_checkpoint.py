"""segzoo.checkpoint: full-state round trip, atomic writes under simulated crashes and a real SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from segzoo import checkpoint as ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _net_and_trainer(seed=0):
    mx.random.seed(seed)
    net = gluon.nn.Dense(3, in_units=4)
    net.initialize(mx.init.Normal(0.5))
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1, 'momentum': 0.9}, kvstore=None)
    return net, trainer


def _step(net, trainer, x):
    with autograd.record():
        loss = (net(x) ** 2).sum()
    loss.backward()
    trainer.step(x.shape[0])


def _weights(net):
    return {k.split('_', 1)[1]: v.data().asnumpy() for k, v in net.collect_params().items()}


def test_round_trip_restores_weights_momentum_and_update_count(tmp_path):
    x = mx.nd.array(np.random.RandomState(0).randn(2, 4))
    net, trainer = _net_and_trainer()
    for _ in range(3):
        _step(net, trainer, x)
    ckpt.save_checkpoint(str(tmp_path), net, trainer, ckpt.TrainState(epoch=0, iteration=3, global_step=3))
    _step(net, trainer, x)
    expected = _weights(net)

    other, other_trainer = _net_and_trainer(seed=1)        # different weights before loading
    state, _ = ckpt.load_checkpoint(ckpt.find_state(str(tmp_path)), other, other_trainer, [mx.cpu()])
    assert state == ckpt.TrainState(epoch=0, iteration=3, global_step=3) and other_trainer.optimizer.num_update == 3
    _step(other, other_trainer, x)                          # uses the restored momentum
    for key, value in expected.items():
        np.testing.assert_array_equal(_weights(other)[key], value)
    files = sorted(os.listdir(tmp_path))
    assert files == ['checkpoint.json', 'checkpoint.params', 'state-00000003.params', 'state-00000003.states']


def test_old_state_files_are_replaced_but_the_previous_state_is_kept(tmp_path):
    net, trainer = _net_and_trainer()
    for step in (1, 2, 3):
        ckpt.save_checkpoint(str(tmp_path), net, trainer, ckpt.TrainState(global_step=step))
    assert not os.path.exists(tmp_path / 'state-00000001.params')
    assert json.loads((tmp_path / 'checkpoint.json').read_text())['params'] == 'state-00000003.params'
    assert json.loads((tmp_path / 'previous.json').read_text())['params'] == 'state-00000002.params'
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith('state-')) == [
        'state-00000002.params', 'state-00000002.states', 'state-00000003.params', 'state-00000003.states']


def test_rng_state_round_trip():
    import random
    random.seed(3)
    np.random.seed(4)
    state = json.loads(json.dumps(ckpt.get_rng_state()))   # survives JSON
    expected = (random.random(), np.random.rand())
    random.seed(99)
    np.random.seed(99)
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.rand()) == expected


@pytest.mark.parametrize('crash_in', ['params', 'states', 'json'])
def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch, crash_in):
    net, trainer = _net_and_trainer()
    ckpt.save_checkpoint(str(tmp_path), net, trainer, ckpt.TrainState(global_step=1))
    good = _weights(net)
    _step(net, trainer, mx.nd.ones((2, 4)))

    def crash(path, *args, **kwargs):
        with open(path, 'wb') as f:                        # a half-written temporary file ...
            f.write(b'\x00' * 7)
        raise KeyboardInterrupt('simulated kill')          # ... then the process dies

    if crash_in == 'params':
        monkeypatch.setattr(net, 'save_parameters', crash)
    elif crash_in == 'states':
        monkeypatch.setattr(trainer, 'save_states', crash)
    else:
        monkeypatch.setattr(json, 'dump', lambda obj, f, **kw: (f.write('{"trunc'), crash(f.name))[1])
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(str(tmp_path), net, trainer, ckpt.TrainState(global_step=2))
    monkeypatch.undo()

    assert not [f for f in os.listdir(tmp_path) if '.tmp' in f]      # temporaries cleaned up
    fresh, fresh_trainer = _net_and_trainer(seed=5)
    state, _ = ckpt.load_checkpoint(ckpt.find_state(str(tmp_path)), fresh, fresh_trainer, [mx.cpu()])
    assert state.global_step == 1
    for key, value in good.items():
        np.testing.assert_array_equal(_weights(fresh)[key], value)
    loaded = mx.nd.load(str(tmp_path / 'checkpoint.params'))             # the public file is intact too
    assert sorted(loaded) == sorted(good)


@pytest.mark.slow
def test_sigkill_while_saving_never_leaves_a_corrupt_checkpoint(tmp_path):
    """A real kill -9 at an arbitrary moment of a save loop: what is on disk always loads.

    Two save loops run at once (one interpreter start-up for both), each in its own folder, killed at different
    moments after their first save.
    """
    script = textwrap.dedent(f'''
        import sys, mxnet as mx
        sys.path.insert(0, {ROOT!r})
        from mxnet import gluon
        from segzoo import checkpoint as ckpt
        net = gluon.nn.Dense(512, in_units=512)
        net.initialize()
        trainer = gluon.Trainer(net.collect_params(), 'sgd', {{'learning_rate': 0.1, 'momentum': 0.9}}, kvstore=None)
        step = 0
        while True:
            step += 1
            net.weight.set_data(mx.nd.full(net.weight.shape, step))
            ckpt.save_checkpoint(sys.argv[1], net, trainer, ckpt.TrainState(global_step=step))
            print(step, flush=True)
    ''')
    runs = {0.4: tmp_path / 'early', 0.9: tmp_path / 'late'}
    procs = {delay: subprocess.Popen([sys.executable, '-c', script, str(folder)], stdout=subprocess.PIPE, text=True)
             for delay, folder in runs.items()}
    try:
        for proc in procs.values():
            assert proc.stdout.readline().strip() == '1'     # the first save finished; kill during later ones
        start = time.monotonic()
        for delay, proc in sorted(procs.items()):
            time.sleep(max(0.0, start + delay - time.monotonic()))
            proc.send_signal(signal.SIGKILL)
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(10)
    for folder in runs.values():
        record = json.loads((folder / 'checkpoint.json').read_text())
        assert record['global_step'] > 1                      # killed in the loop, not before it
        params = mx.nd.load(str(folder / record['params']))
        assert float(params['weight'][0, 0].asscalar()) == record['global_step']
        assert os.path.getsize(folder / record['states']) > 0
        public = mx.nd.load(str(folder / 'checkpoint.params'))   # complete (this or the previous save)
        assert float(public['weight'][0, 0].asscalar()) in (record['global_step'], record['global_step'] - 1)


def test_find_state_kinds(tmp_path):
    with pytest.raises(FileNotFoundError, match='no checkpoint.json'):
        ckpt.find_state(str(tmp_path))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        ckpt.find_state(str(tmp_path / 'missing.params'))
    params = tmp_path / 'w.params'
    params.write_bytes(b'x')
    assert ckpt.find_state(str(params)) is None                # weights only
    (tmp_path / 'checkpoint.json').write_text('{}')
    assert ckpt.find_state(str(tmp_path)) == str(tmp_path / 'checkpoint.json')
    with pytest.raises(FileNotFoundError, match='params file'):
        ckpt.load_checkpoint(str(tmp_path / 'checkpoint.json'), None, None, [mx.cpu()])


def test_state_and_rng_restored_as_one_and_old_records_load(tmp_path):
    """load_checkpoint gives the position to continue from and restores the RNGs saved with it; a record written
    before TrainState existed (flat keys, written by train.py's old dict) loads the same way."""
    import random
    net, trainer = _net_and_trainer()
    random.seed(7)
    np.random.seed(8)
    ckpt.save_checkpoint(str(tmp_path), net, trainer, ckpt.TrainState(epoch=2, iteration=5, global_step=17,
                                                                      best_miou=0.25, epoch_done=True),
                         args={'lr': 0.01})
    expected = (random.random(), np.random.rand())
    random.seed(99)
    np.random.seed(99)
    state, args = ckpt.load_checkpoint(ckpt.find_state(str(tmp_path)), net, trainer, [mx.cpu()])
    assert (random.random(), np.random.rand()) == expected
    assert state == ckpt.TrainState(epoch=3, iteration=0, global_step=17, best_miou=0.25) and args == {'lr': 0.01}

    record = json.loads((tmp_path / 'checkpoint.json').read_text())
    old = {k: record[k] for k in ('params', 'states', 'format_version', 'rng', 'args')}
    old.update(epoch=4, iteration=3, global_step=11, best_miou=0.5, epoch_done=False)   # a mid-epoch save
    (tmp_path / 'checkpoint.json').write_text(json.dumps(old))
    state, _ = ckpt.load_checkpoint(str(tmp_path / 'checkpoint.json'), net, trainer, [mx.cpu()])
    assert state == ckpt.TrainState(epoch=4, iteration=3, global_step=11, best_miou=0.5)
