"""Shared steps of the dataset preparation scripts in ``scripts/datasets/``.

Each script: obtain its published archives (a verified copy in ``--download-dir``, else a resumable,
checksum-verified download), extract them safely into ``--root`` once, check the resulting layout and
print per-split counts. Nothing outside ``--root`` and ``--download-dir`` is touched, and nothing is
ever deleted, except the optional ``--link`` symlink when ``--replace-link`` is given.
"""
import collections
import os
import sys

from ..model_store import mxnet_home
from .archives import extract_archive
from .download import DownloadError, check_sha1, download, sha1sum
from .fileio import write_lines

__all__ = ['Archive', 'PrepareError', 'dataset_root', 'add_common_args', 'resolve_dirs', 'archive_url',
           'obtain_archive', 'extract_once', 'link_root', 'require_dirs', 'write_lines',
           'fetch_archives', 'finish', 'run']

Archive = collections.namedtuple('Archive', ['filename', 'url', 'sha1'])
Archive.__doc__ = 'A published archive: file name, official URL and SHA-1.'


class PrepareError(RuntimeError):
    """A dataset could not be prepared; the message says which file and what to do."""


def dataset_root(name):
    """Default dataset folder: ``$MXNET_HOME/datasets/<name>`` or ``~/.mxnet/datasets/<name>``."""
    return os.path.abspath(os.path.join(mxnet_home(), 'datasets', name))


def add_common_args(parser, name, download_help=None):
    """Add ``--root --download-dir --mirror --no-download --overwrite --link --replace-link --retries
    --timeout --quiet`` to ``parser``; ``name`` is the dataset folder under ``~/.mxnet/datasets``."""
    parser.add_argument('--root', default=None,
                        help=f'dataset folder (default: $MXNET_HOME/datasets/{name} if MXNET_HOME is set, '
                             f'else ~/.mxnet/datasets/{name})')
    parser.add_argument('--download-dir', default=None,
                        help=download_help or 'folder holding the archives: verified copies there are used '
                                              'offline, missing ones are downloaded into it '
                                              '(default: <root>/downloads)')
    parser.add_argument('--mirror', default=None,
                        help='base URL to download the archives from instead of the official servers '
                             '(<mirror>/<archive file name>)')
    parser.add_argument('--no-download', action='store_true',
                        help='never use the network: the archives must be in --download-dir')
    parser.add_argument('--overwrite', action='store_true',
                        help='extract again even if a previous run already extracted an archive')
    parser.add_argument('--link', default=None,
                        help='also create a symlink at this path pointing to --root')
    parser.add_argument('--replace-link', action='store_true',
                        help='with --link: replace an existing symlink there (real folders are never replaced)')
    parser.add_argument('--retries', type=int, default=5, help='download attempts per archive')
    parser.add_argument('--timeout', type=float, default=60.0, help='network timeout in seconds')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')
    return parser


def resolve_dirs(args, name):
    """Fill ``args.root`` and ``args.download_dir`` with absolute paths (defaults applied) and create them."""
    args.root = os.path.abspath(os.path.expanduser(args.root)) if args.root else dataset_root(name)
    args.download_dir = (os.path.abspath(os.path.expanduser(args.download_dir)) if args.download_dir
                         else os.path.join(args.root, 'downloads'))
    os.makedirs(args.root, exist_ok=True)
    return args


def archive_url(archive, mirror=None):
    """The official URL of ``archive``, or ``<mirror>/<filename>``."""
    return f'{mirror.rstrip("/")}/{archive.filename}' if mirror else archive.url


def obtain_archive(archive, download_dir, mirror=None, no_download=False, retries=5, timeout=60.0,
                   progress=True):
    """Path of a verified copy of ``archive`` in ``download_dir``, downloading it when needed.

    A file already in ``download_dir`` whose SHA-1 matches is used without touching the network.

    Raises
    ------
    PrepareError
        The archive is missing or corrupt and cannot be downloaded (``no_download`` or a failed
        download); the message names the file, the expected SHA-1 and the URL.
    """
    path = os.path.join(download_dir, archive.filename)
    url = archive_url(archive, mirror)
    if os.path.isfile(path):
        print(f'verifying {path} ...', flush=True)
        if check_sha1(path, archive.sha1):
            return path
        problem = f'{path} is corrupt or incomplete (SHA-1 {sha1sum(path)}, expected {archive.sha1})'
    else:
        problem = f'{path} is missing'
    if no_download:
        raise PrepareError(f'{problem}. Download it from {url} (SHA-1 {archive.sha1}) into {download_dir}, '
                           'or run without --no-download.')
    print(f'{problem}: downloading {url}', flush=True)
    try:
        return download(url, path, sha1_hash=archive.sha1, retries=retries, timeout=timeout, progress=progress)
    except DownloadError as exc:
        raise PrepareError(f'Could not download {archive.filename} (SHA-1 {archive.sha1}) from {url}: {exc}\n'
                           f'You can download it by other means and put it at {path}.') from exc


def _stamp_path(dest, archive):
    return os.path.join(dest, f'.extracted-{archive.filename}')


def extract_once(path, archive, dest, remap=None, overwrite=False, progress=True):
    """Extract ``path`` (a verified ``archive``) into ``dest`` unless a previous run finished doing so.

    A stamp file ``dest/.extracted-<filename>`` holding the archive's SHA-1 is written after a complete
    extraction; ``overwrite`` ignores it. Returns True if the archive was extracted now.
    """
    stamp = _stamp_path(dest, archive)
    if not overwrite and os.path.isfile(stamp):
        with open(stamp) as f:
            if f.read().strip() == archive.sha1:
                print(f'{archive.filename}: already extracted into {dest} (use --overwrite to redo)', flush=True)
                return False
    print(f'extracting {path} into {dest} ...', flush=True)
    extract_archive(path, dest, remap=remap, progress=progress)
    with open(stamp, 'w') as f:
        f.write(archive.sha1 + '\n')
    return True


def link_root(link, root, replace=False):
    """Make ``link`` a symlink to ``root``.

    An existing symlink to ``root`` is kept; one pointing elsewhere is replaced only with ``replace``;
    a real file or folder at ``link`` is never touched (``PrepareError``).
    """
    link = os.path.abspath(os.path.expanduser(link))
    if os.path.islink(link):
        if os.path.realpath(link) == os.path.realpath(root):
            return link
        if not replace:
            raise PrepareError(f'{link} is a symlink to {os.readlink(link)}, not to {root}; '
                               'pass --replace-link to replace it')
        os.unlink(link)
    elif os.path.exists(link):
        if os.path.realpath(link) == os.path.realpath(root):
            return link
        raise PrepareError(f'{link} exists and is not a symlink; refusing to replace it with a link to {root}')
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(root, link, target_is_directory=True)
    print(f'linked {link} -> {root}', flush=True)
    return link


def require_dirs(root, rel_dirs, hint):
    """Raise ``PrepareError`` listing every folder of ``rel_dirs`` missing under ``root``."""
    missing = [d for d in rel_dirs if not os.path.isdir(os.path.join(root, d))]
    if missing:
        raise PrepareError(f'{root} lacks {", ".join(missing)}: {hint}')


def fetch_archives(args, archives, obtain=None, remap=None):
    """Obtain each of ``archives`` (``{key: Archive}``) and extract it once into ``args.root``.

    ``obtain(archive, args) -> path`` replaces the default (a verified copy in ``--download-dir``, else a
    download); ``remap`` maps a key to the ``extract_once`` remapping of that archive's members.
    """
    for key, archive in archives.items():
        if obtain is None:
            path = obtain_archive(archive, args.download_dir, args.mirror, args.no_download, args.retries,
                                  args.timeout, progress=not args.quiet)
        else:
            path = obtain(archive, args)
        extract_once(path, archive, args.root, remap=(remap or {}).get(key), overwrite=args.overwrite,
                     progress=not args.quiet)


def finish(args, title, counts):
    """Make the optional ``--link``, print ``counts`` (``{group: {split: n}}``) and return them."""
    if args.link:
        link_root(args.link, args.root, replace=args.replace_link)
    print(f'{title} ready in {args.root}')
    for group, splits in counts.items():
        print(f'  {group}: ' + ', '.join(f'{split} {n}' for split, n in splits.items()))
    return counts


def run(main, parse_args):
    """Command-line entry point of a preparation script: a ``PrepareError`` exits with its message."""
    try:
        main(parse_args())
    except PrepareError as exc:
        sys.exit(f'error: {exc}')
