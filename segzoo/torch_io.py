"""Read PyTorch ``torch.save`` files with pickle and numpy only, and fetch torchvision's ImageNet ResNet files.

segzoo never depends on torch. A torch file is either a zip archive (``torch.save``'s format since 1.6:
``<archive>/data.pkl`` holds the pickled object, ``<archive>/data/<key>`` the raw bytes of each storage,
``<archive>/byteorder`` optionally says ``little`` or ``big``) or the legacy stream (magic number, protocol,
system info, the pickled object, the list of storage keys, then each storage as an int64 element count and its
bytes). In both, tensors are pickled as calls to ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)`` on a persistent storage reference; :func:`load_torch_file` answers those calls with numpy arrays.
The unpickler resolves only a fixed list of harmless globals; every other class (Composer's ``Time``, enums,
optimizer state objects ...) becomes an inert :class:`Placeholder` that records what it was given, so no code
from the file runs and a checkpoint full of foreign objects still loads.
"""
import collections
import hashlib
import os
import pickle
import re
import struct
import sys
import zipfile

import numpy as np

__all__ = ['TorchFileError', 'Placeholder', 'load_torch_file', 'state_dict_from', 'TORCHVISION_WEIGHTS',
           'TORCHVISION_REPO', 'torchvision_url', 'torchvision_weights_file']

# torch storage class name -> numpy dtype of one element ('bfloat16' is read as uint16, then widened)
_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': 'bfloat16', 'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_, 'UntypedStorage': np.uint8,
    'ComplexFloatStorage': np.complex64, 'ComplexDoubleStorage': np.complex128,
}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001


class TorchFileError(ValueError):
    """A torch file could not be read; the message names the file."""


class Placeholder:
    """Inert stand-in for a pickled object of a class segzoo does not load (never calls the real class).

    ``torch_class`` is ``'module.name'``; ``args`` holds the constructor arguments, ``state`` what ``__setstate__``
    received, ``items`` / ``elements`` what was set as dict items / appended.
    """

    torch_class = '?'

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items, obj.elements = args, None, {}, []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.elements.append(value)

    def extend(self, values):
        self.elements.extend(values)

    def __repr__(self):
        return f'<Placeholder {self.torch_class}>'


def _placeholder_class(module, name):
    return type(name, (Placeholder,), {'torch_class': f'{module}.{name}', '__module__': 'segzoo.torch_io'})


class _StorageType:
    """What ``torch.FloatStorage`` & co. unpickle to: only their element dtype matters."""

    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _widen_bfloat16(raw):
    """uint16 bit patterns of bfloat16 -> float32 (bfloat16 is the top half of a float32)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """numpy copy of the tensor ``storage[offset:]`` viewed with ``size`` / ``stride`` (in elements)."""
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f'tensor size {size} and stride {stride} differ in length')
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or min(stride, default=0) < 0 or last >= storage.size:
        raise pickle.UnpicklingError(f'tensor of size {size}, stride {stride}, offset {offset} does not fit its '
                                     f'storage of {storage.size} elements')
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=tuple(s * storage.itemsize for s in stride), writeable=False)
    return np.array(view)


def _rebuild_parameter(data, *unused):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)  # tensor subclasses come back as plain arrays


# (module, name) -> what the unpickler returns; anything else becomes a Placeholder subclass
_SAFE_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('torch._tensor', '_rebuild_from_type_v2'): _rebuild_from_type_v2,
    ('builtins', 'set'): set, ('builtins', 'frozenset'): frozenset, ('builtins', 'slice'): slice,
    ('builtins', 'complex'): complex, ('builtins', 'bytearray'): bytearray,
}


class _Unpickler(pickle.Unpickler):
    """Resolves only ``_SAFE_GLOBALS`` and torch storage types; storages come from ``load_storage(key, dtype)``."""

    def __init__(self, file, load_storage):
        super().__init__(file, encoding='utf-8')
        self._load_storage = load_storage
        self._placeholders = {}

    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module in ('torch', 'torch.storage') and name in _STORAGE_DTYPES:
            return _StorageType(name)
        key = (module, name)
        if key not in self._placeholders:
            self._placeholders[key] = _placeholder_class(module, name)
        return self._placeholders[key]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == 'storage'):
            raise pickle.UnpicklingError(f'unsupported persistent id {pid!r:.80}')
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f'storage {key} has an unknown type {storage_type!r}')
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError('storage views (torch < 0.4 files) are not supported')
        return self._load_storage(key, storage_type.dtype)


def _as_array(raw, dtype, byteorder, what):
    """Element array of one storage's bytes."""
    np_dtype = np.dtype(np.uint16 if dtype == 'bfloat16' else dtype)
    if len(raw) % np_dtype.itemsize:
        raise pickle.UnpicklingError(f'{what} has {len(raw)} bytes, not a multiple of {np_dtype.itemsize}')
    if byteorder not in ('little', 'big'):
        raise pickle.UnpicklingError(f'unknown byteorder {byteorder!r}')
    array = np.frombuffer(raw, np_dtype.newbyteorder('<' if byteorder == 'little' else '>'))
    array = array.astype(np_dtype.newbyteorder('='), copy=False)
    return _widen_bfloat16(array) if dtype == 'bfloat16' else array


def _load_zip(path):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pickles = [n for n in names if n.endswith('data.pkl') and n.count('/') == 1]
        if len(pickles) != 1:
            raise TorchFileError(f'{path}: a torch zip file holds one <archive>/data.pkl; found {pickles or "none"}')
        prefix = pickles[0][:-len('data.pkl')]
        byteorder = 'little'
        if prefix + 'byteorder' in names:
            byteorder = zf.read(prefix + 'byteorder').decode('ascii').strip()
        storages = {}

        def load_storage(key, dtype):
            if key not in storages:
                member = f'{prefix}data/{key}'
                if member not in names:
                    raise pickle.UnpicklingError(f'storage {member} is missing')
                storages[key] = _as_array(zf.read(member), dtype, byteorder, member)
            return storages[key]

        with zf.open(pickles[0]) as f:
            return _Unpickler(f, load_storage).load()


class _DeferredTensor:
    """A legacy-stream tensor whose storage bytes come after the pickle; replaced by its array afterwards."""

    def __init__(self, storage_key, offset, size, stride, *unused):
        self.args = (storage_key, offset, size, stride)


def _load_legacy(path, f):
    """The pre-1.6 stream: the storages follow the pickled object, so tensors are built after it is read."""
    dtypes = {}  # storage key -> element dtype

    def load_storage(key, dtype):
        dtypes.setdefault(key, dtype)
        return key

    header = _Unpickler(f, load_storage)
    if header.load() != _LEGACY_MAGIC:
        raise TorchFileError(f'{path} is not a torch file (neither a zip archive nor a legacy torch stream)')
    if header.load() != _LEGACY_PROTOCOL:
        raise TorchFileError(f'{path}: unsupported legacy torch protocol; re-save it with '
                             'torch.save(..., _use_new_zipfile_serialization=True)')
    sys_info = header.load()
    order = 'little' if not isinstance(sys_info, dict) or sys_info.get('little_endian', True) else 'big'
    body = _Unpickler(f, load_storage)
    body.find_class = _deferring(body.find_class)
    obj = body.load()
    arrays = {}
    for key in pickle.load(f):
        key = str(key)
        if key not in dtypes:
            raise TorchFileError(f'{path}: storage {key} is listed but never used')
        numel = struct.unpack('<q' if order == 'little' else '>q', f.read(8))[0]
        itemsize = np.dtype(np.uint16 if dtypes[key] == 'bfloat16' else dtypes[key]).itemsize
        raw = f.read(numel * itemsize)
        if len(raw) != numel * itemsize:
            raise TorchFileError(f'{path} is truncated in storage {key}')
        arrays[key] = _as_array(raw, dtypes[key], order, f'storage {key}')
    return _substitute(obj, arrays)


def _deferring(find_class):
    def find(module, name):
        if module == 'torch._utils' and name in ('_rebuild_tensor_v2', '_rebuild_tensor'):
            return _DeferredTensor
        return find_class(module, name)
    return find


def _substitute(obj, arrays):
    """``obj`` with every :class:`_DeferredTensor` replaced by its array (dicts, lists, Placeholders in place)."""
    if isinstance(obj, _DeferredTensor):
        key, offset, size, stride = obj.args
        return _rebuild_tensor(arrays[key], offset, size, stride)
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = _substitute(v, arrays)
    elif isinstance(obj, list):
        obj[:] = [_substitute(v, arrays) for v in obj]
    elif type(obj) is tuple:
        return tuple(_substitute(v, arrays) for v in obj)
    elif isinstance(obj, Placeholder):
        for attr in ('args', 'state', 'items', 'elements'):
            setattr(obj, attr, _substitute(getattr(obj, attr), arrays))
    return obj


def load_torch_file(path):
    """The object stored by ``torch.save`` at ``path``, with every tensor as a numpy array (no torch needed).

    float32/float16/float64 and integer/bool tensors keep their dtype; bfloat16 becomes float32. Non-contiguous
    tensors (e.g. a saved transposed view) come back with the values they had, as contiguous arrays. Objects of
    classes outside a small safe list are :class:`Placeholder` instances.

    Raises
    ------
    TorchFileError
        The file is missing, not a torch file or damaged; the message names it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TorchFileError(f'{path}: no such file')
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with open(path, 'rb') as f:
            return _load_legacy(path, f)
    except TorchFileError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, KeyError, ValueError, TypeError,
            AttributeError, IndexError, struct.error, UnicodeDecodeError) as exc:
        raise TorchFileError(f'{path}: cannot read this torch file ({type(exc).__name__}: {exc}); if it was '
                             'written by an old torch, re-save it with '
                             'torch.save(..., _use_new_zipfile_serialization=True)') from exc


def state_dict_from(obj, path='<object>'):
    """The model state dict ``{name: ndarray}`` in a loaded torch file.

    A plain state dict (torchvision's ``.pth``) is returned as it is; a Composer checkpoint
    ``{'state': {'model': {...}, ...}, 'rng': ...}`` gives its ``state['model']``. Name prefixes such as
    ``module.`` are kept (``segzoo.load_torch_state_dict`` handles them). ``path`` only names the file in errors.
    """
    if isinstance(obj, dict) and isinstance(obj.get('state'), dict):
        if 'model' not in obj['state']:
            raise TorchFileError(f"{path}: holds no state dict: the Composer checkpoint's state has no 'model' "
                                 f'(it has {sorted(map(str, obj["state"]))})')
        obj = obj['state']['model']
    if not isinstance(obj, dict) or not obj:
        raise TorchFileError(f'{path}: holds no state dict (expected a dict of tensors or a Composer checkpoint '
                             f"with state.model), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise TorchFileError(f'{path}: state dict entries are not tensors: {bad[:5]}')
    return dict(obj)


# --------------------------------------------------------------------------------------------- torchvision files

TORCHVISION_REPO = 'https://download.pytorch.org/models/'
# torchvision.models.ResNet{50,101}_Weights; the hex in each name is the start of the file's SHA-256 (torch hub's rule)
TORCHVISION_WEIGHTS = {
    ('resnet50', 'IMAGENET1K_V1'): 'resnet50-0676ba61.pth',
    ('resnet50', 'IMAGENET1K_V2'): 'resnet50-11ad3fa6.pth',
    ('resnet101', 'IMAGENET1K_V1'): 'resnet101-63fe2227.pth',
    ('resnet101', 'IMAGENET1K_V2'): 'resnet101-cd907fc2.pth',
}
_HASH_IN_NAME = re.compile(r'-([a-f0-9]+)\.')


def torchvision_url(arch, weights):
    """Download URL of torchvision's ``arch`` ``weights`` file; ``$SEGZOO_TORCHVISION_REPO`` replaces the base."""
    if (arch, weights) not in TORCHVISION_WEIGHTS:
        known = ', '.join(f'{a}/{w}' for a, w in TORCHVISION_WEIGHTS)
        raise ValueError(f'no torchvision weights {arch}/{weights}; known: {known}')
    repo = os.environ.get('SEGZOO_TORCHVISION_REPO') or TORCHVISION_REPO
    return (repo if repo.endswith('/') else repo + '/') + TORCHVISION_WEIGHTS[(arch, weights)]


def _sha256_matches(path, prefix):
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest().startswith(prefix)


def torchvision_weights_file(arch, weights, root=None, retries=5, timeout=60.0, progress=True):
    """Path of a verified local copy of torchvision's ImageNet ``arch`` file (``'IMAGENET1K_V1'`` or ``_V2``).

    The file keeps torchvision's name (e.g. ``resnet50-0676ba61.pth``) in segzoo's model root (``root``, else
    ``$MXNET_HOME/models`` or ``~/.mxnet/models``, as for GluonCV files). It is downloaded through
    :func:`segzoo.utils.download.download` (resumable, retried) and accepted only if its SHA-256 starts with the
    hex in its name; a cached file is verified the same way and needs no network.

    Raises
    ------
    ValueError
        Unknown ``arch`` / ``weights``.
    segzoo.model_store.ModelFileError
        Download or verification failed; the message names the URL and the path where to put the file by hand.
    """
    from .model_store import ModelFileError, default_root
    from .utils.download import DownloadError, FileLock, download

    url = torchvision_url(arch, weights)
    name = TORCHVISION_WEIGHTS[(arch, weights)]
    prefix = _HASH_IN_NAME.search(name).group(1)
    root = default_root() if root is None else os.path.abspath(os.path.expanduser(root))
    path = os.path.join(root, name)
    os.makedirs(root, exist_ok=True)

    def by_hand(reason):
        return (f'Could not obtain torchvision {arch} {weights} from {url}: {reason}\n'
                f'To install it by hand, download that file and put it at\n    {path}\n'
                f'(its SHA-256 must start with {prefix}). Set SEGZOO_TORCHVISION_REPO to use another mirror.')

    with FileLock(path[:-len('.pth')] + '.lock', timeout=float(os.environ.get('GLUON_MODEL_LOCK_TIMEOUT', 300))):
        if os.path.exists(path):
            if _sha256_matches(path, prefix):
                return path
            os.remove(path)  # corrupt or foreign: fetch it again (a .part of an interrupted transfer is resumed)
        for attempt in (1, 2):  # a second, fresh download in case a resumed transfer was corrupt
            try:
                download(url, path, retries=retries, timeout=timeout, progress=progress)
            except DownloadError as exc:
                raise ModelFileError(by_hand(exc)) from exc
            if _sha256_matches(path, prefix):
                return path
            os.remove(path)
        raise ModelFileError(by_hand(f'the downloaded file\'s SHA-256 does not start with {prefix}'))


if __name__ == '__main__':  # python -m segzoo.torch_io FILE: list what a torch file holds
    for name, value in state_dict_from(load_torch_file(sys.argv[1]), sys.argv[1]).items():
        print(f'{name}\t{value.shape}\t{value.dtype}')
