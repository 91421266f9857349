"""Resumable, checksum-verified HTTP downloads and an inter-process file lock.

``download`` streams into ``<path>.part``, continues an interrupted transfer with an HTTP ``Range``
request, retries transient failures with exponential backoff, checks the SHA-1 and only then renames
the file into place, so ``path`` either does not exist or is complete. Transport: ``requests``.
"""
import errno
import fcntl
import hashlib
import logging
import os
import time

import requests
from tqdm import tqdm

from .fileio import fsync_replace

__all__ = ['DownloadError', 'check_sha1', 'sha1sum', 'download', 'FileLock']

_LOG = logging.getLogger(__name__)
_CHUNK = 1 << 15
# Status codes worth retrying: the server or a proxy may recover.
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(RuntimeError):
    """A download failed for good; the message names the URL and the destination path."""

    def __init__(self, message, url=None, path=None):
        super().__init__(message)
        self.url = url
        self.path = path


class _Retryable(Exception):
    """Internal: an attempt failed in a way that another attempt may fix."""


def sha1sum(path):
    """Return the hexadecimal SHA-1 digest of the file at ``path``."""
    digest = hashlib.sha1()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def check_sha1(path, sha1_hash):
    """Whether the file's SHA-1 starts with ``sha1_hash`` (or ``sha1_hash`` starts with it).

    Like GluonCV the comparison covers the shorter of the two strings, so an 8-character tag such as
    ``'ed817f76'`` checks a file as well as the full 40-character digest does.

    Parameters
    ----------
    path : str
        File to hash.
    sha1_hash : str
        Expected digest or digest prefix, hexadecimal (case-insensitive), at least one character.

    Returns
    -------
    bool
    """
    if not sha1_hash:
        raise ValueError(f'check_sha1({path!r}): an empty expected hash checks nothing')
    actual = sha1sum(path)
    expected = sha1_hash.lower()
    n = min(len(actual), len(expected))
    return actual[:n] == expected[:n]


def _resolve_path(url, path):
    name = url.split('?')[0].rstrip('/').split('/')[-1]
    if path is None:
        return os.path.abspath(name)
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        return os.path.abspath(os.path.join(path, name))
    return os.path.abspath(path)


def _content_range_start(header):
    # 'bytes 100-199/200' -> 100 ; anything else -> None
    try:
        unit, rest = header.split(' ', 1)
        if unit.strip() != 'bytes':
            return None
        return int(rest.split('-', 1)[0])
    except (ValueError, AttributeError):
        return None


def _attempt(url, part, timeout, progress, session):
    """One HTTP transfer into ``part``, resuming it when it is non-empty. Returns True if it resumed."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {'Range': f'bytes={offset}-'} if offset else {}
    try:
        resp = session.get(url, stream=True, timeout=timeout, headers=headers)
    except requests.RequestException as exc:
        raise _Retryable(f'{type(exc).__name__}: {exc}') from exc
    with resp:
        if offset and resp.status_code == 416:
            # The .part is already as long as (or longer than) the file: start again from scratch.
            os.remove(part)
            raise _Retryable('server refused the byte range of the partial file (HTTP 416); restarting')
        if resp.status_code in _RETRY_STATUS:
            raise _Retryable(f'HTTP {resp.status_code} {resp.reason}')
        if resp.status_code not in (200, 206):
            raise DownloadError(f'Downloading {url} to {part[:-5]} failed: HTTP {resp.status_code} {resp.reason}',
                                url, part[:-5])
        resumed = offset > 0 and resp.status_code == 206
        if resumed and _content_range_start(resp.headers.get('Content-Range')) != offset:
            os.remove(part)
            raise _Retryable(f'server answered the range request with Content-Range '
                             f'{resp.headers.get("Content-Range")!r}; restarting')
        if not resumed:
            offset = 0  # 200 OK: the server ignored Range and sends the whole file
        length = resp.headers.get('Content-Length')
        expected = offset + int(length) if length is not None else None
        received = offset
        with open(part, 'ab' if resumed else 'wb') as f, \
                tqdm(total=expected, initial=offset, unit='B', unit_scale=True, unit_divisor=1024,
                     desc=os.path.basename(part[:-5]), disable=not progress, dynamic_ncols=True,
                     leave=False) as bar:
            try:
                for chunk in resp.iter_content(chunk_size=_CHUNK):
                    if chunk:
                        f.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            except (requests.RequestException, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES):
                    raise
                raise _Retryable(f'connection lost after {received} bytes: {exc}') from exc
        if expected is not None and received < expected:
            raise _Retryable(f'connection closed after {received} of {expected} bytes')
    return resumed


def download(url, path=None, sha1_hash=None, overwrite=False, retries=5, timeout=30.0, backoff=1.0,
             progress=True, session=None):
    """Download ``url`` to ``path``, resuming a previous partial transfer, and verify its SHA-1.

    The data goes to ``path + '.part'``; an existing ``.part`` is continued with ``Range: bytes=N-``
    (a server that answers ``200`` instead of ``206`` makes the transfer restart from byte 0). When the
    transfer is complete and the checksum matches, the file is fsynced and renamed to ``path``.
    A resumed file with a wrong checksum is downloaded once more from scratch before giving up.

    Parameters
    ----------
    url : str
        HTTP(S) URL.
    path : str, optional
        Destination file, or an existing directory (the URL's file name is appended). Default: the URL's
        file name in the current directory.
    sha1_hash : str, optional
        Expected SHA-1 (a prefix works, see :func:`check_sha1`). An existing ``path`` with another hash is
        downloaded again; without a hash an existing ``path`` is trusted.
    overwrite : bool
        Download even if ``path`` exists and verifies; also discards any ``.part``.
    retries : int
        Attempts for transient failures (connection errors, timeouts, cuts, HTTP 5xx/429), >= 1.
    timeout : float
        Seconds to wait for the connection and between received bytes.
    backoff : float
        Sleep ``backoff * 2**k`` seconds after the k-th failed attempt.
    progress : bool
        Show a tqdm progress bar.
    session : requests.Session, optional

    Returns
    -------
    str
        Absolute path of the verified file.

    Raises
    ------
    DownloadError
        Naming the URL and the destination path, after the attempts are used up, on a permanent HTTP
        error (e.g. 404) or on a checksum mismatch.
    """
    if retries < 1:
        raise ValueError(f'download(): retries must be >= 1, got {retries}')
    path = _resolve_path(url, path)
    part = path + '.part'
    if os.path.exists(path) and not overwrite:
        if sha1_hash is None or check_sha1(path, sha1_hash):
            return path
        _LOG.warning('%s exists but its SHA-1 is not %s: downloading it again from %s', path, sha1_hash, url)
    if overwrite and os.path.exists(part):
        os.remove(part)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    session = session or requests.Session()
    failures = []
    attempt = 0
    while attempt < retries:
        attempt += 1
        try:
            resumed = _attempt(url, part, timeout, progress, session)
        except _Retryable as exc:
            failures.append(str(exc))
            _LOG.warning('download %s (attempt %d/%d): %s', url, attempt, retries, exc)
            if attempt < retries:
                time.sleep(backoff * 2 ** (attempt - 1))
            continue
        if sha1_hash is not None and not check_sha1(part, sha1_hash):
            actual = sha1sum(part)
            os.remove(part)
            if resumed and attempt < retries:
                failures.append(f'resumed file has SHA-1 {actual}, expected {sha1_hash}')
                _LOG.warning('download %s: resumed file is corrupt; restarting from scratch', url)
                continue
            raise DownloadError(f'Downloaded {url} to {path} but its SHA-1 is {actual}, expected {sha1_hash}. '
                                'The file on the server may differ from the published one (check the mirror, '
                                'MXNET_GLUON_REPO or --mirror), or the transfer was corrupted.', url, path)
        fsync_replace(part, path)
        return path
    detail = '; '.join(failures[-3:])
    raise DownloadError(f'Downloading {url} to {path} failed after {retries} attempt(s): {detail}. '
                        f'The partial data is kept in {part} and the next call resumes it.', url, path)


class FileLock:
    """Exclusive inter-process lock on ``path`` (``fcntl.flock``), usable as a context manager.

    Parameters
    ----------
    path : str
        Lock file; created if missing and left in place (deleting it would race with other holders).
    timeout : float
        Seconds to wait for the lock before raising ``TimeoutError`` naming the lock file.
    poll : float
        Seconds between attempts.
    """

    def __init__(self, path, timeout=300.0, poll=0.1):
        self.path = path
        self.timeout = timeout
        self.poll = poll
        self._fd = None

    def acquire(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise TimeoutError(f'could not lock {self.path} within {self.timeout} s: another process '
                                       'is downloading the same file (delete the lock file only if no such '
                                       'process is running)') from None
                time.sleep(self.poll)

    def release(self):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
