"""segzoo.torch_io: torch.save files read without torch, torchvision downloads on a loopback server."""
import hashlib
import os
import pickle
import zipfile

import numpy as np
import pytest

from helpers import composer_synthetic_array, nested_items
from http_server import LoopbackServer, running_servers
from segzoo import torch_io
from segzoo.model_store import ModelFileError
from segzoo.torch_io import Placeholder, TorchFileError, load_torch_file, state_dict_from

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'composer')
TORCH_FILES = os.path.join(FIXTURES, 'torch_files')


def _flat(obj):
    """name -> array for every array in a loaded object (the naming of make_torch_files.py)."""
    return {k: v for k, v in nested_items(obj).items() if isinstance(v, np.ndarray)}


@pytest.fixture(scope='module')
def expected():
    with np.load(os.path.join(TORCH_FILES, 'tensors_expected.npz')) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize('name', ['tensors.pt', 'tensors_legacy.pt'])
def test_tensors_of_every_dtype_and_layout(name, expected):
    obj = load_torch_file(os.path.join(TORCH_FILES, name))
    got = _flat(obj)
    wanted = {k: v for k, v in expected.items() if '/' not in k or k.startswith('nested/')}
    assert sorted(got) == sorted(wanted)
    for key, value in got.items():
        assert value.dtype == wanted[key].dtype and value.shape == wanted[key].shape, key
        np.testing.assert_array_equal(value, wanted[key], err_msg=key)
    assert got['bf16'].dtype == np.float32 and got['scalar'].shape == () and got['empty'].shape == (0, 3)
    assert {got[k].dtype for k in ('f16', 'f64', 'i64', 'i32', 'u8', 'bool')} == {
        np.dtype(t) for t in (np.float16, np.float64, np.int64, np.int32, np.uint8, np.bool_)}
    np.testing.assert_array_equal(got['transposed'], got['f32'].T)  # the non-contiguous view, as saved
    assert obj['nested']['list'][1:] == [3, 'text'] and obj['nested']['tuple'][0] == 1.5


def test_state_dict_file(expected):
    obj = load_torch_file(os.path.join(TORCH_FILES, 'state_dict.pth'))
    assert type(obj).__name__ == 'OrderedDict'
    state = state_dict_from(obj)
    assert list(state) == ['conv1.weight', 'bn1.weight', 'bn1.bias', 'bn1.running_mean', 'bn1.running_var',
                           'bn1.num_batches_tracked', 'fc.weight', 'fc.bias']
    for key, value in state.items():
        np.testing.assert_array_equal(value, expected[f'state_dict/{key}'], err_msg=key)
    assert state['bn1.num_batches_tracked'] == 1 and state['bn1.num_batches_tracked'].dtype == np.int64


def test_composer_checkpoint(expected):
    path = os.path.join(TORCH_FILES, 'composer_checkpoint.pt')
    checkpoint = load_torch_file(path)
    state = state_dict_from(checkpoint, path)
    assert list(state) == [k[len('checkpoint_model/'):] for k in expected if k.startswith('checkpoint_model/')]
    assert all(k.startswith('module.') for k in state)  # prefix kept: segzoo.load_torch_state_dict strips it
    for key, value in state.items():
        np.testing.assert_array_equal(value, expected[f'checkpoint_model/{key}'], err_msg=key)
    # foreign objects load as inert placeholders that keep what they were given
    timestamp = checkpoint['state']['timestamp']
    assert isinstance(timestamp, Placeholder) and timestamp.torch_class.endswith('Timestamp')
    epoch = timestamp.state['_epoch']
    assert isinstance(epoch, Placeholder) and epoch.state['_value'] == 2
    assert checkpoint['state']['run_name'] == 'tiny-run'
    sgd = checkpoint['state']['optimizers']['SGD']
    assert sgd['param_groups'][0]['lr'] == 0.01 and sgd['state'][0]['momentum_buffer'].shape == (4, 3, 3, 3)
    assert checkpoint['rng'][0]['torch'].dtype == np.uint8


def test_placeholders_run_no_code(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ('echo should-not-run',))

    path = tmp_path / 'evil.pt'
    with zipfile.ZipFile(path, 'w') as zf:
        zf.writestr('archive/data.pkl', pickle.dumps({'x': Boom()}, protocol=2))
    obj = load_torch_file(path)
    assert isinstance(obj['x'], Placeholder) and obj['x'].args == ('echo should-not-run',)
    assert obj['x'].torch_class in ('posix.system', 'os.system')


def test_errors_name_the_file(tmp_path):
    with pytest.raises(TorchFileError, match='no such file'):
        load_torch_file(tmp_path / 'missing.pt')
    junk = tmp_path / 'junk.pt'
    junk.write_bytes(b'not a torch file at all')
    with pytest.raises(TorchFileError) as info:
        load_torch_file(junk)
    assert str(junk) in str(info.value) and '_use_new_zipfile_serialization=True' in str(info.value)
    truncated = tmp_path / 'truncated.pt'
    with zipfile.ZipFile(os.path.join(TORCH_FILES, 'state_dict.pth')) as src, zipfile.ZipFile(truncated, 'w') as dst:
        for item in src.infolist():
            if not item.filename.endswith('/data/0'):  # drop one storage
                dst.writestr(item, src.read(item))
    with pytest.raises(TorchFileError) as info:
        load_torch_file(truncated)
    assert str(truncated) in str(info.value) and 'data/0' in str(info.value)
    with pytest.raises(TorchFileError, match='x.pt: holds no state dict'):
        state_dict_from({'state': {'optimizers': {}}}, 'x.pt')
    with pytest.raises(TorchFileError, match="entries are not tensors: \\['a'\\]"):
        state_dict_from({'a': 1.0, 'b': np.zeros(1)}, 'x.pt')


def test_synthetic_rule_matches_the_oracle():
    """tests/helpers.py rebuilds the oracle's --synthetic-weights 7 tensors bit for bit (values the oracle saved)."""
    with np.load(os.path.join(FIXTURES, 'sgd_step.npz')) as step:
        checked = 0
        for key in step.files:
            if key.startswith('before:'):
                name = key[len('before:'):]
                full = composer_synthetic_array(name, _shape(name), 7)
                value = full[:8, :16] if step[key].shape != full.shape else full
                np.testing.assert_array_equal(value, step[key], err_msg=name)
                checked += 1
    assert checked >= 10


def _shape(name):
    with open(os.path.join(FIXTURES, 'keys_resnet50_plus.tsv')) as f:
        for line in f:
            key, shape, _ = line.rstrip('\n').split('\t')
            if key == name:
                return tuple(int(n) for n in shape.strip('()').split(',') if n.strip())
    raise KeyError(name)


# ---------------------------------------------------------------------------------------- torchvision downloads

def test_torchvision_table_and_urls(monkeypatch):
    monkeypatch.delenv('SEGZOO_TORCHVISION_REPO', raising=False)
    assert torch_io.torchvision_url('resnet101', 'IMAGENET1K_V2') == (
        'https://download.pytorch.org/models/resnet101-cd907fc2.pth')
    assert sorted(torch_io.TORCHVISION_WEIGHTS.values()) == [
        'resnet101-63fe2227.pth', 'resnet101-cd907fc2.pth', 'resnet50-0676ba61.pth', 'resnet50-11ad3fa6.pth']
    monkeypatch.setenv('SEGZOO_TORCHVISION_REPO', 'http://mirror.example/tv')
    assert torch_io.torchvision_url('resnet50', 'IMAGENET1K_V1') == 'http://mirror.example/tv/resnet50-0676ba61.pth'
    with pytest.raises(ValueError, match='resnet50/IMAGENET1K_V1'):
        torch_io.torchvision_url('resnet18', 'IMAGENET1K_V1')


@pytest.fixture
def tv_server(monkeypatch):
    """Serves a stand-in for resnet50-0676ba61.pth whose SHA-256 starts with the hash in the (patched) name."""
    payload = open(os.path.join(TORCH_FILES, 'state_dict.pth'), 'rb').read()
    name = f'resnet50-{hashlib.sha256(payload).hexdigest()[:8]}.pth'
    monkeypatch.setitem(torch_io.TORCHVISION_WEIGHTS, ('resnet50', 'IMAGENET1K_V1'), name)
    with LoopbackServer({f'/models/{name}': payload}) as srv:
        monkeypatch.setenv('SEGZOO_TORCHVISION_REPO', srv.url('/models'))
        srv.name, srv.payload = name, payload
        yield srv
    assert running_servers() == []


@pytest.mark.timeout(60)
def test_torchvision_download_verifies_and_caches(tv_server, tmp_path):
    path = torch_io.torchvision_weights_file('resnet50', 'IMAGENET1K_V1', root=str(tmp_path), progress=False)
    assert path == str(tmp_path / tv_server.name) and open(path, 'rb').read() == tv_server.payload
    assert list(state_dict_from(load_torch_file(path)))[0] == 'conv1.weight'
    tv_server.stop()  # a verified cached file needs no network
    assert torch_io.torchvision_weights_file('resnet50', 'IMAGENET1K_V1', root=str(tmp_path)) == path
    assert len(tv_server.requests) == 1


@pytest.mark.timeout(60)
def test_torchvision_hash_mismatch_rejected(tv_server, tmp_path):
    tv_server.files[f'/models/{tv_server.name}'] = tv_server.payload[:-1] + bytes([tv_server.payload[-1] ^ 1])
    with pytest.raises(ModelFileError) as info:
        torch_io.torchvision_weights_file('resnet50', 'IMAGENET1K_V1', root=str(tmp_path), retries=1,
                                          progress=False)
    msg = str(info.value)
    assert tv_server.url(f'/models/{tv_server.name}') in msg and str(tmp_path / tv_server.name) in msg
    assert 'SHA-256' in msg and tv_server.name.split('-')[1][:8] in msg
    assert not (tmp_path / tv_server.name).exists()
    assert len(tv_server.requests) == 2  # a fresh second download before giving up


@pytest.mark.timeout(60)
def test_torchvision_corrupt_cache_replaced_and_missing_file_named(tv_server, tmp_path):
    cached = tmp_path / tv_server.name
    cached.write_bytes(b'truncated')
    assert torch_io.torchvision_weights_file('resnet50', 'IMAGENET1K_V1', root=str(tmp_path),
                                             progress=False) == str(cached)
    assert cached.read_bytes() == tv_server.payload
    tv_server.files.clear()
    with pytest.raises(ModelFileError) as info:
        torch_io.torchvision_weights_file('resnet50', 'IMAGENET1K_V1', root=str(tmp_path / 'other'), retries=1,
                                          progress=False)
    assert '404' in str(info.value) and str(tmp_path / 'other' / tv_server.name) in str(info.value)
