"""Crash-safe file writing: every file segzoo writes appears whole or not at all.

A file is written under a temporary name in its own folder, flushed and fsync'ed, then renamed over the
target (``os.replace`` is atomic on POSIX and Windows), and the folder is fsync'ed so the rename survives a
power loss. A reader therefore sees either the previous file or the new one, never a torn one.
"""
import json
import os

__all__ = ['atomic_write', 'fsync_replace', 'write_json', 'write_lines']


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:      # e.g. Windows cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_replace(src, dst):
    """fsync the finished file ``src``, rename it to ``dst`` and fsync the folder."""
    with open(src, 'rb+') as f:
        f.flush()
        os.fsync(f.fileno())
    os.replace(src, dst)
    _fsync_dir(os.path.dirname(os.path.abspath(dst)))


def atomic_write(path, write_fn):
    """Create ``path`` atomically: ``write_fn(tmp_path)`` writes a temporary file, which is fsync'ed and renamed.

    The temporary file is removed if ``write_fn`` fails, and the previous ``path`` (if any) is left untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp{os.getpid()}')
    try:
        write_fn(tmp)
        fsync_replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj, indent=1):
    """Write ``obj`` as JSON to ``path`` atomically."""
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=indent)
    atomic_write(path, write)


def write_lines(path, lines):
    """Write ``lines`` (one per line) to ``path`` atomically."""
    def write(tmp):
        with open(tmp, 'w') as f:
            f.writelines(f'{line}\n' for line in lines)
    atomic_write(path, write)
