"""segzoo.utils.runlock: a live run directory is refused naming its PID; a dead holder's lock is taken over."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from helpers import load_script

from segzoo.utils import runlock

HOLDER = textwrap.dedent('''
    import sys, time
    from segzoo.utils import runlock
    runlock.acquire(sys.argv[1])
    print('locked', flush=True)
    time.sleep(60)
''')


@pytest.fixture
def holder(tmp_path):
    """A process holding the lock on ``tmp_path / 'run'``; killed by its pid at the end."""
    run_dir = str(tmp_path / 'run')
    proc = subprocess.Popen([sys.executable, '-c', HOLDER, run_dir], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'locked'
        yield proc, run_dir
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    return proc.pid


def test_live_run_is_refused_naming_its_pid_and_taken_over_once_it_is_killed(holder):
    proc, run_dir = holder
    with pytest.raises(SystemExit, match=rf'run directory .*run is in use by PID {proc.pid} on '):
        runlock.acquire(run_dir)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock = runlock.acquire(run_dir)      # the kernel dropped the dead holder's flock: stale, taken over
    try:
        assert lock.previous['pid'] == proc.pid
        with open(lock.path) as f:
            assert json.load(f)['pid'] == os.getpid()
    finally:
        lock.release()


def test_lock_is_reentrant_in_one_process_and_released(tmp_path):
    run_dir = str(tmp_path / 'run')
    lock = runlock.acquire(run_dir)
    assert runlock.acquire(run_dir) is lock            # train.main() twice in one process
    lock.release()
    proc = subprocess.Popen([sys.executable, '-c', HOLDER, run_dir], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'locked'
    finally:
        proc.kill()
        proc.wait()


def test_stale_file_of_a_dead_process_is_taken_over(tmp_path):
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    dead = _dead_pid()
    (run_dir / runlock.LOCK_NAME).write_text(json.dumps({'pid': dead, 'host': socket.gethostname(), 'started': 0}))
    lock = runlock.acquire(str(run_dir))
    try:
        assert lock.previous['pid'] == dead
    finally:
        lock.release()


def test_without_flock_the_recorded_pid_decides(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, 'No locks available')

    monkeypatch.setattr(runlock.fcntl, 'flock', no_flock)
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    lock_file = run_dir / runlock.LOCK_NAME
    live = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        lock_file.write_text(json.dumps({'pid': live.pid, 'host': socket.gethostname(), 'started': 0}))
        with pytest.raises(SystemExit, match=f'in use by PID {live.pid}'):
            runlock.RunLock(str(run_dir)).acquire()
    finally:
        live.kill()
        live.wait()
    lock = runlock.RunLock(str(run_dir)).acquire()      # that PID is gone now
    assert lock.previous['pid'] == live.pid
    lock.release()


def test_lock_held_by_a_leftover_child_of_a_dead_run_says_so(tmp_path):
    run_dir = str(tmp_path / 'run')
    # the holder forks a child (like a DataLoader worker) that keeps the flock after the holder is killed
    script = HOLDER.replace("print('locked'", "import os\nif os.fork() == 0:\n    time.sleep(60)\nprint('locked'")
    proc = subprocess.Popen([sys.executable, '-c', script, run_dir], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        assert proc.stdout.readline().strip() == 'locked'
        with open(f'/proc/{proc.pid}/task/{proc.pid}/children') as f:
            child = int(f.read().split()[0])
        proc.kill()
        proc.wait()
        with pytest.raises(SystemExit, match=f'locked by a leftover child of the dead PID {proc.pid}.*fuser'):
            runlock.acquire(run_dir)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if child is not None:
            os.kill(child, signal.SIGKILL)


def test_train_py_refuses_a_live_run_directory_before_writing(holder):
    proc, run_dir = holder
    train = load_script('train.py')
    with pytest.raises(SystemExit, match=f'is in use by PID {proc.pid}'):
        train.main(train.parse_args(['--save-dir', run_dir, '--no-cuda']))
    assert sorted(os.listdir(run_dir)) == [runlock.LOCK_NAME]
