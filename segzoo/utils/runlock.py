"""One training process per run directory: ``acquire(run_dir)`` before writing anything there.

Two runs writing one run directory corrupt each other (each deletes the other's superseded ``state-*`` files; seen
when a killed launcher left its python child running). The lock is ``RUN_DIR/.lock``, held with ``flock``, which
the kernel releases when the holder dies however it dies (``kill -9`` included), so a lock left by a dead process
is simply taken over. The file records the holder's PID, host and start time for the error message. Where the file
system has no ``flock`` the PID alone decides: a lock whose process no longer runs on this host is stale.

The lock is per process and re-entrant (``train.main`` called twice in one process gets the same lock), and is
held until :meth:`RunLock.release` or the end of the process.
"""
import errno
import fcntl
import json
import os
import socket
import time

__all__ = ['LOCK_NAME', 'RunLock', 'acquire']

LOCK_NAME = '.lock'
_HELD = {}          # realpath of the run directory -> RunLock held by this process


def _read_holder(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _pid_alive(pid):
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """The lock on one run directory (see the module docstring); build with :func:`acquire`.

    Attributes
    ----------
    path : str
        The lock file.
    previous : dict
        What the file said before this process took it (``pid``, ``host``, ``started``), e.g. a dead run's PID;
        empty for a new lock.
    """

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.previous = {}
        self._fd = None

    def _refuse(self, holder):
        run_dir, pid = os.path.dirname(self.path), holder.get('pid', '?')
        started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['started'])) \
            if isinstance(holder.get('started'), (int, float)) else 'at an unknown time'
        if holder.get('host') == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
            raise SystemExit(f'error: run directory {run_dir} is locked by a leftover child of the dead PID {pid} '
                             f'(started {started}), e.g. a DataLoader worker; find it with: fuser {self.path}')
        raise SystemExit(f'error: run directory {run_dir} is in use by PID {pid} on {holder.get("host", "?")} '
                         f'(started {started}); stop that process first, or pass another --checkname or --save-dir')

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                self._refuse(_read_holder(self.path))
            holder = _read_holder(self.path)          # no flock here: judge by the recorded PID
            if holder.get('host') == socket.gethostname() and holder.get('pid') != os.getpid() \
                    and _pid_alive(int(holder.get('pid', 0))):
                os.close(fd)
                self._refuse(holder)
        self.previous = _read_holder(self.path)
        record = json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self):
        """Give the lock up (the file stays; its flock is what counts)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
        _HELD.pop(os.path.realpath(os.path.dirname(self.path)), None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def acquire(run_dir):
    """Lock ``run_dir`` for this process (created if missing); exits naming the holder's PID if another has it.

    Returns
    -------
    RunLock
        ``previous`` names a dead holder whose lock was taken over.
    """
    os.makedirs(run_dir, exist_ok=True)
    key = os.path.realpath(run_dir)
    if key not in _HELD:
        _HELD[key] = RunLock(run_dir).acquire()
    return _HELD[key]
