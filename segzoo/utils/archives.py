"""Safe extraction of tar and zip archives, with optional renaming of leading folders.

Member names are checked before anything is written: absolute names, ``..`` components, links,
devices and FIFOs are refused with an error naming the archive and the member, so an archive can only
write regular files and folders below the destination. Existing files are overwritten; nothing is
ever deleted.
"""
import os
import posixpath
import stat
import tarfile
import zipfile

from tqdm import tqdm

__all__ = ['UnsafeArchiveError', 'extract_archive']


class UnsafeArchiveError(RuntimeError):
    """An archive member would escape the destination or is not a regular file or folder."""


def _clean_name(archive, name):
    norm = posixpath.normpath(name.replace('\\', '/'))
    parts = norm.split('/')
    if name.startswith(('/', '\\')) or (len(parts[0]) == 2 and parts[0][1] == ':') or '..' in parts:
        raise UnsafeArchiveError(f'{archive}: member {name!r} would be written outside the destination folder')
    return '' if norm == '.' else norm


def _remap(name, remap):
    """Apply the first matching ``(old_prefix, new_prefix)``; None if ``remap`` is given and none matches."""
    if remap is None:
        return name
    for old, new in remap:
        old = old.rstrip('/')
        if name == old or name.startswith(old + '/'):
            return (new.rstrip('/') + name[len(old):]).lstrip('/') if new else name[len(old):].lstrip('/')
    return None


def _write(src, target):
    if os.path.isdir(target) and not os.path.islink(target):
        raise UnsafeArchiveError(f'cannot write file {target}: a folder with that name exists')
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, 'wb') as dst:
        for block in iter(lambda: src.read(1 << 20), b''):
            dst.write(block)


def _tar_members(path):
    with tarfile.open(path, 'r:*') as tf:
        for member in tf:
            if member.isdir():
                yield member.name, None
            elif member.isfile():
                yield member.name, tf.extractfile(member)
            else:
                kind = 'link' if (member.issym() or member.islnk()) else 'special file'
                raise UnsafeArchiveError(f'{path}: member {member.name!r} is a {kind}; refusing to extract it')


def _zip_members(path):
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            mode = info.external_attr >> 16
            if mode and stat.S_ISLNK(mode):
                raise UnsafeArchiveError(f'{path}: member {info.filename!r} is a link; refusing to extract it')
            if info.is_dir():
                yield info.filename, None
            else:
                with zf.open(info) as src:
                    yield info.filename, src


def extract_archive(path, dest, remap=None, progress=True):
    """Extract a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` archive into ``dest``.

    Parameters
    ----------
    path : str
        The archive.
    dest : str
        Destination folder (created if missing).
    remap : list of (str, str), optional
        ``(old_prefix, new_prefix)`` pairs applied to member names (first match wins), e.g.
        ``[('VOCdevkit/', '')]`` or ``[('benchmark_RELEASE', 'VOCaug')]``. When given, members that match
        no pair are skipped.
    progress : bool
        Show a tqdm counter of extracted files.

    Returns
    -------
    int
        Number of files written.

    Raises
    ------
    UnsafeArchiveError
        A member is absolute, contains ``..``, or is a link/device; extraction stops before that member.
    """
    dest = os.path.abspath(os.path.expanduser(dest))
    os.makedirs(dest, exist_ok=True)
    if zipfile.is_zipfile(path):
        members = _zip_members(path)
    elif tarfile.is_tarfile(path):
        members = _tar_members(path)
    else:
        raise ValueError(f'{path} is neither a zip nor a tar archive')
    written = 0
    with tqdm(desc=f'extract {os.path.basename(path)}', unit=' files', disable=not progress, leave=False) as bar:
        for name, src in members:
            name = _remap(_clean_name(path, name), remap)
            if not name:
                continue
            _clean_name(path, name)
            target = os.path.join(dest, *name.split('/'))
            if src is None:
                os.makedirs(target, exist_ok=True)
                continue
            _write(src, target)
            written += 1
            bar.update(1)
    return written
