"""segzoo.launch on 127.0.0.1: a real dist_sync job, fail-fast, an unreachable scheduler, Ctrl-C, the ssh path.

Every launch runs with a unique marker variable; afterwards no process carrying it may be left, and any that is
found is killed by its own pid before the test fails.
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import mxnet as mx
import pytest
from helpers import ROOT

from segzoo import launch

# 3 dist_sync steps of a Dense layer with sgdw and a frozen bias (lr_mult = wd_mult = 0) must equal one process on
# the union batch (the oracle, computed by each worker itself), sums over workers (confusion matrices too) must be
# exact, and BN running statistics averaged inside averaged_bn_stats and restored after it; else the worker exits 1.
DIST_WORKER = textwrap.dedent('''
    import sys

    import mxnet as mx
    import numpy as np
    from mxnet import autograd, gluon

    from segzoo import distributed as dist
    from segzoo.optimizer import SGDW
    from segzoo.utils.metrics import SegmentationMetric


    def make_net():
        net = gluon.nn.Dense(3, in_units=5)
        net.initialize(mx.init.Constant(0))
        rng = np.random.RandomState(0)
        net.weight.set_data(mx.nd.array(rng.randn(3, 5)))
        net.bias.set_data(mx.nd.array(rng.randn(3)))
        net.bias.lr_mult = net.bias.wd_mult = 0.0   # ignored when the servers run the optimizer
        return net


    def train(net, kvstore, x, y, batch_size):
        optimizer = SGDW(learning_rate=0.1, momentum=0.9, wd=0.01)
        trainer = gluon.Trainer(net.collect_params(), optimizer, **dist.trainer_options(kvstore))
        dist.init_trainer(trainer)
        for _ in range(3):
            with autograd.record():
                loss = ((net(x) - y) ** 2).sum()
            loss.backward()
            trainer.step(batch_size)
        return net


    kv = dist.create_kvstore('dist_sync')
    rank, num_workers = dist.rank_and_size(kv)
    print(f'rank {rank} of {num_workers}', flush=True)
    rng = np.random.RandomState(1)
    x, y = mx.nd.array(rng.randn(8, 5)), mx.nd.array(rng.randn(8, 3))
    start, stop = dist.worker_share(8, 1, rank, num_workers)
    net = train(make_net(), kv, x[start:stop], y[start:stop], dist.step_batch_size(stop - start, kv))
    ref = train(make_net(), None, x, y, 8)
    reducer = dist.Reducer(kv)
    ranks = reducer.sum('ranks', [rank, 1])
    bn = gluon.nn.BatchNorm(in_channels=2)
    bn.initialize()
    bn.running_mean.set_data(mx.nd.array([rank, 10.0 * rank]))
    with dist.averaged_bn_stats(bn, reducer):
        averaged = bn.running_mean.data().asnumpy().tolist()
    mean = (num_workers - 1) / 2
    bn_ok = averaged == [mean, 10 * mean] and bn.running_mean.data().asnumpy().tolist() == [rank, 10.0 * rank]
    metric = SegmentationMetric(3)
    metric.update(np.array([[rank, 2]]), np.array([[rank, 1]]))     # pixels (rank -> rank), (2 -> 1)
    workers = dist.Workers(kv)
    workers.sum_metric(metric)
    bn_ok = bn_ok and workers.mean(float(rank)) == mean
    expected_matrix = np.zeros((3, 3))
    expected_matrix[2, 1] = num_workers
    for r in range(num_workers):
        expected_matrix[r, r] += 1
    bn_ok = bn_ok and (metric.confusion_matrix == expected_matrix).all()
    w_err = np.abs(net.weight.data().asnumpy() - ref.weight.data().asnumpy()).max()
    b_moved = np.abs(net.bias.data().asnumpy() - make_net().bias.data().asnumpy()).max()
    print(f'weight error {w_err:.1e} bias moved {b_moved:.1e} rank sum {ranks.tolist()} BN mean {averaged}',
          flush=True)
    expected = [num_workers * (num_workers - 1) / 2, num_workers]
    sys.exit(0 if w_err < 1e-6 and b_moved == 0 and ranks.tolist() == expected and bn_ok else 1)
''')


def _leftovers(mark):
    """pids of processes whose environment carries ``mark``."""
    needle = f'SEGZOO_TEST_MARK={mark}'.encode()
    found = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f'/proc/{pid}/environ', 'rb') as f:
                if needle in f.read().split(b'\0'):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def _assert_nothing_left(mark):
    left = _leftovers(mark)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f'processes left running: {left}'


@contextlib.contextmanager
def _launched(args):
    """The launcher process of ``args``; on exit it is killed if still running and nothing may be left."""
    mark = uuid.uuid4().hex
    env = dict(os.environ, SEGZOO_TEST_MARK=mark, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, '-m', 'segzoo.launch', *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        time.sleep(0.2)
        _assert_nothing_left(mark)


def _run(args, timeout=40):
    """Run the launcher; returns (exit status, output, seconds) after checking nothing is left running."""
    tic = time.monotonic()
    with _launched(args) as proc:
        out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out, time.monotonic() - tic


@pytest.mark.dist
def test_dist_sync_job_trains_like_one_process(tmp_path):
    script = tmp_path / 'dist_worker.py'
    script.write_text(DIST_WORKER)
    code, out, _ = _run(['-n', '2', '-s', '1', '--timeout', '20', '--max-time', '60', '--',
                         sys.executable, str(script)])
    assert code == 0, out
    for rank in (0, 1):   # the prefix is the rank on one host
        assert f'[worker {rank}] rank {rank} of 2' in out
        assert f'[worker {rank}] weight error' in out


@pytest.mark.dist
def test_failed_worker_stops_the_job_with_its_status_and_last_lines():
    worker = 'import sys; print("loading shard"); print("boom: bad shard"); sys.exit(3)'
    code, out, seconds = _run(['-n', '2', '-s', '1', '--grace', '1', '--', sys.executable, '-c', worker])
    assert code == 3, out
    assert 'exited with status 3' in out and '    boom: bad shard' in out.split('[launch] error')[1]
    assert seconds < 15


@pytest.mark.dist
def test_unreachable_scheduler_names_host_and_port():
    port = launch._free_ports('127.0.0.1', 1)[0]
    # the scheduler needs seconds to import mxnet and bind: a 0.3 s probe cannot reach it
    code, out, seconds = _run(['-n', '1', '-s', '1', '--port', str(port), '--timeout', '0.3', '--grace', '1', '--',
                               sys.executable, '-c', 'print("never")'])
    assert code == 1, out
    assert f'cannot reach the scheduler at 127.0.0.1:{port}' in out
    assert 'never' not in out
    assert seconds < 15


@pytest.mark.dist
def test_ctrl_c_is_forwarded_and_stops_every_process():
    worker = 'import time; print("ready", flush=True); time.sleep(120)'
    with _launched(['-n', '2', '-s', '1', '--grace', '1', '--', sys.executable, '-c', worker]) as proc:
        lines, deadline = [], time.monotonic() + 30
        while sum('ready' in line for line in lines) < 2 and time.monotonic() < deadline:
            lines.append(proc.stdout.readline())
        assert sum('ready' in line for line in lines) == 2, ''.join(lines)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 128 + signal.SIGINT, out
        assert 'SIGINT: stopping every process' in out


@pytest.mark.dist
def test_ssh_launcher_runs_nodes_through_the_ssh_command(tmp_path):
    fake_ssh = tmp_path / 'fake_ssh'   # runs the remote command here: argv = [-p PORT] HOST COMMAND
    fake_ssh.write_text(f'#!{sys.executable}\nimport os, sys\nos.execvp("sh", ["sh", "-c", sys.argv[-1]])\n')
    fake_ssh.chmod(0o755)
    hosts = tmp_path / 'hosts'
    hosts.write_text('# cluster\nnode-a\nnode-b:2222  # second host\n')
    worker = 'import os; print(os.environ["DMLC_ROLE"], os.environ["DMLC_NUM_WORKER"], os.getcwd())'
    code, out, _ = _run(['-n', '2', '-s', '1', '--launcher', 'ssh', '--hosts', str(hosts), '--ssh', str(fake_ssh),
                         '--scheduler-host', '127.0.0.1', '--grace', '0.5', '--', sys.executable, '-c', worker])
    assert code == 0, out
    # server 0 -> node-a, worker 0 -> node-b, worker 1 -> node-a (round-robin), each in the launcher's folder
    assert f'[worker 0 node-b] worker 2 {ROOT}' in out
    assert f'[worker 1 node-a] worker 2 {ROOT}' in out


@pytest.mark.dist
def test_ssh_remote_processes_are_stopped_when_the_job_fails(tmp_path):
    """The fake ssh runs each remote command in its own session, as a remote host would: only the remote watchdog
    (EOF on the ssh channel) can stop it."""
    fake_ssh = tmp_path / 'fake_ssh'
    fake_ssh.write_text(f'#!{sys.executable}\nimport os, subprocess, sys\n'
                        'env = dict(os.environ, FAKE_HOST=sys.argv[-2])\n'
                        'remote = subprocess.Popen(["sh", "-c", sys.argv[-1]], env=env, start_new_session=True)\n'
                        'sys.exit(remote.wait())\n')
    fake_ssh.chmod(0o755)
    hosts = tmp_path / 'hosts'
    hosts.write_text('node-a\nnode-b\n')
    # server 0 and worker 1 on node-a wait for ever; worker 0 on node-b fails
    worker = ('import os, sys, time\nif os.environ["FAKE_HOST"] == "node-b":\n    sys.exit(5)\n'
              'print("waiting", flush=True)\ntime.sleep(120)')
    code, out, seconds = _run(['-n', '2', '-s', '1', '--launcher', 'ssh', '--hosts', str(hosts), '--ssh',
                               str(fake_ssh), '--scheduler-host', '127.0.0.1', '--grace', '1', '--',
                               sys.executable, '-c', worker])
    assert code == 5, out
    assert 'worker 0 node-b exited with status 5' in out
    assert seconds < 30


def test_hosts_file_and_plan(tmp_path):
    hosts = tmp_path / 'hosts'
    hosts.write_text('10.0.0.1\n\n# comment\n10.0.0.2:2200\n')
    assert launch.read_hosts(str(hosts)) == [('10.0.0.1', None), ('10.0.0.2', 2200)]
    nodes = launch.plan_nodes(3, 1, launch.read_hosts(str(hosts)))
    assert [(n.role, n.index, n.host) for n in nodes] == [
        ('scheduler', 0, None), ('server', 0, '10.0.0.1'), ('worker', 0, '10.0.0.2'), ('worker', 1, '10.0.0.1'),
        ('worker', 2, '10.0.0.2')]
    hosts.write_text('10.0.0.1:ssh\n')
    with pytest.raises(SystemExit, match='line 1'):
        launch.read_hosts(str(hosts))
    with pytest.raises(SystemExit):
        launch.parse_args(['-n', '2'])                   # no command
    with pytest.raises(SystemExit):
        launch.parse_args(['-n', '2', '--launcher', 'ssh', '--', 'python', 'x.py'])   # no --hosts


def _train_params(run_dir):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(run_dir / 'checkpoint.params')).items()}


def _last_record(run_dir):
    with open(run_dir / 'metrics.jsonl') as f:
        return [json.loads(line) for line in f][-1]


def _train_single(save_dir):
    """train.py on 2 CPU devices: the reference of the multi-process runs."""
    single = subprocess.run([sys.executable, *_train_argv(save_dir, '--ngpus', '2')], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert single.returncode == 0, single.stdout


def _train_argv(save_dir, *extra):
    return [os.path.join(ROOT, 'train.py'), '--dataset', 'pascal_voc', '--dataset-root', SAMPLE_VOC,
            '--train-split', 'train_official', '--model', 'deeplab', '--backbone', 'resnet_tiny', '--aux',
            '--no-cuda', '--batch-size', '4', '--test-batch-size', '16', '--base-size', '40', '--crop-size', '32',
            '--workers', '0', '--lr', '0.01', '--epochs', '1', '--log-interval', '2', '--seed', '3',
            '--save-dir', str(save_dir), *extra]


SAMPLE_VOC = os.path.join(ROOT, 'segzoo', 'sample_data', 'voc_mini')


@pytest.mark.dist
@pytest.mark.slow
def test_two_dist_sync_workers_equal_one_process_with_two_devices(tmp_path):
    """Scheduler + 1 server + 2 workers (1 CPU device each) train one epoch of a tiny DeepLabV3 (7 steps, dropout
    on, validation on the 15 val images), stopped after step 3 and resumed with --resume; train.py on 2 CPU devices
    trains the same epoch straight. Measured: weights equal bit for bit, BN running statistics within 5e-7 (the
    resumed run restarts them from their saved mean); asserted: weights within 1e-6, BN statistics within 1e-5,
    pixAcc/mIoU within 1e-9, and only rank 0 wrote the run directory."""
    dist_dir = tmp_path / 'dist'
    for extra in (('--stop-at-iter', '3'), ('--resume', str(dist_dir))):
        code, out, _ = _run(['-n', '2', '-s', '1', '--timeout', '30', '--max-time', '240', '--', sys.executable,
                             *_train_argv(dist_dir, '--kvstore', 'dist_sync', *extra)], timeout=300)
        assert code == 0, out
        worker1 = [line for line in out.splitlines() if line.startswith('[worker 1]')]
        assert any(line.startswith('[worker 0]') and 'run directory' in line for line in out.splitlines())
        assert not any('run directory' in line for line in worker1)
    assert 'resumed' in out and 'iteration 3' in out
    _train_single(tmp_path / 'single')
    a, b = _train_params(tmp_path / 'single'), _train_params(dist_dir)
    assert sorted(a) == sorted(b) and any('running_mean' in k for k in a)
    for key in a:
        assert abs(a[key] - b[key]).max() <= (1e-5 if 'running' in key else 1e-6), key
    single_record, dist_record = _last_record(tmp_path / 'single'), _last_record(dist_dir)
    for key in ('pixAcc', 'mIoU'):
        assert dist_record[key] == pytest.approx(single_record[key], abs=1e-9)


def _has_horovod():
    try:
        import horovod.mxnet  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.skipif(not _has_horovod(), reason='horovod with MXNet is not installed (see the README)')
def test_two_horovod_workers_equal_one_process_with_two_devices(tmp_path):
    """horovodrun --gloo with 2 CPU workers (--kvstore horovod) against train.py on 2 CPU devices, as above.
    Measured: weights, BN statistics, loss and metrics equal bit for bit; asserted within 1e-6 / 1e-9."""
    mark = uuid.uuid4().hex
    horovodrun = [sys.executable, '-m', 'horovod.runner.launch', '--gloo', '-np', '2', '-H', 'localhost:2']
    try:
        job = subprocess.run([*horovodrun, sys.executable, *_train_argv(tmp_path / 'hvd', '--kvstore', 'horovod')],
                             cwd=ROOT, env=dict(os.environ, SEGZOO_TEST_MARK=mark, PYTHONPATH=ROOT),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    finally:
        time.sleep(0.2)
        _assert_nothing_left(mark)
    assert job.returncode == 0, job.stdout
    _train_single(tmp_path / 'single')
    a, b = _train_params(tmp_path / 'single'), _train_params(tmp_path / 'hvd')
    assert sorted(a) == sorted(b)
    for key in a:
        assert abs(a[key] - b[key]).max() <= 1e-6, key
    single_record, hvd_record = _last_record(tmp_path / 'single'), _last_record(tmp_path / 'hvd')
    for key in ('loss', 'pixAcc', 'mIoU'):
        assert hvd_record[key] == pytest.approx(single_record[key], abs=1e-9)
