"""Small helpers shared by several test modules (test modules never import each other)."""
import collections
import importlib.util
import io
import os
import pickle
import shutil
import zipfile
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relpath):
    """Import the script ``ROOT/relpath`` (train.py, test.py, scripts/...) as a module, without putting it on sys.path.

    A unique module name keeps ``test.py`` from clashing with the standard library's ``test`` package.
    """
    name = 'segzoo_script_' + os.path.splitext(relpath)[0].replace(os.sep, '_').replace('/', '_')
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_voc_root(sample_data, dest, num_train=4, num_val=2):
    """A VOC root in ``dest`` with the first ``num_train`` (train/trainval) and next ``num_val`` (val) images."""
    src = os.path.join(sample_data, 'voc_mini', 'VOC2012')
    ids = sorted(f[:-4] for f in os.listdir(os.path.join(src, 'SegmentationClass')))[:num_train + num_val]
    voc = os.path.join(dest, 'VOC2012')
    for sub, ext in (('JPEGImages', '.jpg'), ('SegmentationClass', '.png')):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
        for i in ids:
            shutil.copy(os.path.join(src, sub, i + ext), os.path.join(voc, sub, i + ext))
    lists = os.path.join(voc, 'ImageSets', 'Segmentation')
    os.makedirs(lists, exist_ok=True)
    for name, chosen in (('train', ids[:num_train]), ('trainval', ids[:num_train]), ('val', ids[num_train:])):
        with open(os.path.join(lists, name + '.txt'), 'w') as f:
            f.write('\n'.join(chosen) + '\n')
    return str(dest)


def composer_synthetic_array(name, shape, seed):
    """The Composer oracle's ``--synthetic-weights`` value of state_dict entry ``name``, rebuilt without torch.

    One generator per name, ``default_rng([seed, crc32(name)])``, so the order of names does not matter. By the
    name's last component: a 4-D ``weight`` (conv, OIHW) is N(0, 1/fan_in), fan_in = I*H*W; any other ``weight``
    (BN gamma) and ``running_var`` are U(0.5, 1.5); ``bias`` and ``running_mean`` are N(0, 0.01);
    ``num_batches_tracked`` is 0 (int64). Draws are float64, scaled (the conv std as ``sqrt(1 / fan_in)``, so the
    float64 products are the oracle's bit for bit), then cast to float32.
    """
    rng = np.random.default_rng([seed, zlib.crc32(name.encode('utf-8'))])
    shape = tuple(int(n) for n in shape)
    leaf = name.split('.')[-1]
    if leaf == 'num_batches_tracked':
        return np.zeros(shape, dtype=np.int64)
    if leaf == 'weight' and len(shape) == 4:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)).astype(np.float32)
    if leaf in ('weight', 'running_var'):
        return (rng.random(shape) + 0.5).astype(np.float32)
    if leaf in ('bias', 'running_mean'):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)
    raise ValueError(f'composer_synthetic_array: no rule for {name!r} of shape {shape}')


def read_composer_keys(path):
    """``[(name, shape, dtype)]`` from a keys file the Composer oracle wrote (``name<TAB>(d0, d1)<TAB>dtype``)."""
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                name, shape, dtype = line.rstrip('\n').split('\t')
                rows.append((name, tuple(int(n) for n in shape.strip('()').split(',') if n.strip()), dtype))
    return rows


def composer_synthetic_state_dict(keys_path, seed):
    """``{name: array}`` of every entry of a Composer keys file, with the oracle's synthetic weights."""
    return {name: composer_synthetic_array(name, shape, seed) for name, shape, _ in read_composer_keys(keys_path)}


class _TorchGlobal:
    """Pickles as a reference to ``module.name`` (e.g. ``torch._utils._rebuild_tensor_v2``) without importing it."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle requires a reduce callable to be callable
        raise TypeError('only a stand-in for pickling')


class _TorchStorage:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _TorchTensor:
    def __init__(self, key, array):
        self.storage = _TorchStorage(key, array)

    def __reduce__(self):
        array = self.storage.array
        strides = tuple(s // array.itemsize for s in array.strides)
        return (_TorchGlobal('torch._utils', '_rebuild_tensor_v2'),
                (self.storage, 0, array.shape, strides, False, collections.OrderedDict()))


_TORCH_STORAGES = {np.dtype(np.float32): 'FloatStorage', np.dtype(np.int64): 'LongStorage',
                   np.dtype(np.float16): 'HalfStorage', np.dtype(np.float64): 'DoubleStorage'}


class _TorchPickler(pickle._Pickler):
    """Protocol-2 pickler writing what ``torch.save`` writes for a dict of tensors."""

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _TorchGlobal):
            self.write(pickle.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode('ascii'))
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if isinstance(obj, _TorchStorage):
            return ('storage', _TorchGlobal('torch', _TORCH_STORAGES[obj.array.dtype]), obj.key, 'cpu',
                    obj.array.size)
        return None


def write_torch_file(path, state_dict, wrap=None):
    """Write ``state_dict`` (name -> float32/float16/float64/int64 array) as a ``torch.save`` zip file, numpy only.

    ``wrap(tensors)`` may put the OrderedDict of tensors into a larger object (e.g. a Composer checkpoint
    ``{'state': {'model': tensors}}``) before it is pickled. For tests that need files too large to commit.
    """
    arrays = {name: np.asarray(value).copy(order='C') for name, value in state_dict.items()}
    tensors = collections.OrderedDict((name, _TorchTensor(str(i), a)) for i, (name, a) in enumerate(arrays.items()))
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(wrap(tensors) if wrap else tensors)
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as zf:
        zf.writestr('archive/data.pkl', buf.getvalue())
        zf.writestr('archive/byteorder', 'little')
        for tensor in tensors.values():
            zf.writestr(f'archive/data/{tensor.storage.key}', tensor.storage.array.tobytes())
        zf.writestr('archive/version', '3\n')


def nested_items(obj, prefix=''):
    """``{path: leaf}`` for every non-container value in nested dicts, lists and tuples, paths joined by '/'
    (how tests/fixtures/composer/make_torch_files.py names the tensors of ``tensors_expected.npz``)."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return {prefix: obj}
    out = {}
    for key, value in items:
        out.update(nested_items(value, f'{prefix}/{key}' if prefix else str(key)))
    return out
