"""Downloads and the weight store against a loopback HTTP server (127.0.0.1 only)."""
import hashlib
import io
import multiprocessing
import os
import random
import zipfile

import pytest

from http_server import Corrupt, Cut, IgnoreRange, LoopbackServer, Stall, Status, running_servers
from segzoo import model_store
from segzoo.utils.download import DownloadError, FileLock, check_sha1, download

@pytest.fixture(autouse=True)
def _no_leaked_servers():
    yield
    assert running_servers() == []


pytestmark = pytest.mark.timeout(60)

PAYLOAD = random.Random(0).randbytes(300_000)   # deterministic, so every run tests the same bytes
SHA1 = hashlib.sha1(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    with LoopbackServer({'/data.bin': PAYLOAD}) as srv:
        yield srv


def _fast(**kw):
    return dict(dict(retries=3, timeout=5, backoff=0.01, progress=False), **kw)


def test_check_sha1_prefix(tmp_path):
    path = tmp_path / 'f'
    path.write_bytes(b'segzoo')
    digest = hashlib.sha1(b'segzoo').hexdigest()
    assert check_sha1(str(path), digest)
    assert check_sha1(str(path), digest[:8].upper())
    assert not check_sha1(str(path), ('0' if digest[0] != '0' else '1') + digest[1:8])
    with pytest.raises(ValueError):
        check_sha1(str(path), '')


@pytest.mark.network
def test_download_verifies_and_leaves_no_part(server, tmp_path):
    dest = tmp_path / 'sub' / 'data.bin'
    out = download(server.url('/data.bin'), str(dest), sha1_hash=SHA1, **_fast())
    assert out == str(dest)
    assert dest.read_bytes() == PAYLOAD
    assert not os.path.exists(str(dest) + '.part')
    # a directory destination appends the URL's file name
    out = download(server.url('/data.bin'), str(tmp_path), sha1_hash=SHA1, **_fast())
    assert out == str(tmp_path / 'data.bin')


@pytest.mark.network
def test_resume_after_cut_uses_range(server, tmp_path):
    server.fault('/data.bin', Cut(100_000))
    dest = tmp_path / 'data.bin'
    download(server.url('/data.bin'), str(dest), sha1_hash=SHA1, **_fast())
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 2
    assert server.requests[0][1] is None
    # the second request continued where the first stopped (at least what the client wrote to disk)
    start = int(server.requests[1][1][len('bytes='):-1])
    assert 0 < start <= 100_000


@pytest.mark.network
def test_resume_of_existing_part_file(server, tmp_path):
    dest = tmp_path / 'data.bin'
    (tmp_path / 'data.bin.part').write_bytes(PAYLOAD[:12345])
    download(server.url('/data.bin'), str(dest), sha1_hash=SHA1, **_fast())
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [('/data.bin', 'bytes=12345-')]


@pytest.mark.network
def test_server_ignoring_range_restarts(server, tmp_path):
    dest = tmp_path / 'data.bin'
    (tmp_path / 'data.bin.part').write_bytes(PAYLOAD[:5000])
    server.fault('/data.bin', IgnoreRange())
    download(server.url('/data.bin'), str(dest), sha1_hash=SHA1, **_fast())
    assert dest.read_bytes() == PAYLOAD  # not 5000 bytes + the whole file
    assert server.requests == [('/data.bin', 'bytes=5000-')]


@pytest.mark.network
def test_corrupt_resumed_part_is_redownloaded(server, tmp_path):
    dest = tmp_path / 'data.bin'
    (tmp_path / 'data.bin.part').write_bytes(b'\0' * 1000)  # wrong bytes from an earlier run
    download(server.url('/data.bin'), str(dest), sha1_hash=SHA1, **_fast())
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [('/data.bin', 'bytes=1000-'), ('/data.bin', None)]


@pytest.mark.network
def test_corrupt_download_rejected(server, tmp_path):
    server.fault('/data.bin', Corrupt())
    dest = tmp_path / 'data.bin'
    with pytest.raises(DownloadError) as info:
        download(server.url('/data.bin'), str(dest), sha1_hash=SHA1, **_fast())
    msg = str(info.value)
    assert server.url('/data.bin') in msg and str(dest) in msg and SHA1 in msg
    assert not dest.exists() and not os.path.exists(str(dest) + '.part')


@pytest.mark.network
def test_transient_errors_retried_then_give_up(server, tmp_path):
    server.fault('/data.bin', Status(503), Status(500))
    dest = tmp_path / 'data.bin'
    download(server.url('/data.bin'), str(dest), sha1_hash=SHA1, **_fast())
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 3
    server.fault('/data.bin', *[Status(503)] * 3)
    with pytest.raises(DownloadError) as info:
        download(server.url('/data.bin'), str(tmp_path / 'again.bin'), sha1_hash=SHA1, **_fast())
    assert '3 attempt' in str(info.value) and str(tmp_path / 'again.bin') in str(info.value)


@pytest.mark.network
def test_missing_file_fails_at_once(server, tmp_path):
    with pytest.raises(DownloadError) as info:
        download(server.url('/nope.zip'), str(tmp_path / 'nope.zip'), **_fast())
    assert '404' in str(info.value) and server.url('/nope.zip') in str(info.value)
    assert len(server.requests) == 1  # a 404 is not retried


@pytest.mark.network
def test_read_timeout_retried(server, tmp_path):
    server.fault('/data.bin', Stall(1.5))
    dest = tmp_path / 'data.bin'
    download(server.url('/data.bin'), str(dest), sha1_hash=SHA1, **_fast(timeout=0.5))
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 2


@pytest.mark.network
def test_cached_verified_file_needs_no_network(tmp_path):
    dest = tmp_path / 'data.bin'
    dest.write_bytes(PAYLOAD)
    with LoopbackServer({'/data.bin': PAYLOAD}) as srv:
        url = srv.url('/data.bin')
    # the server is stopped: any network access would fail
    assert download(url, str(dest), sha1_hash=SHA1, **_fast(retries=1)) == str(dest)
    dest.write_bytes(PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 0xFF]))  # corrupt cache: must try the (dead) server
    with pytest.raises(DownloadError):
        download(url, str(dest), sha1_hash=SHA1, **_fast(retries=1))


# ---------------------------------------------------------------------------------------------- model_store

PARAMS = b'fake .params bytes ' + random.Random(1).randbytes(5000)
PARAMS_SHA1 = hashlib.sha1(PARAMS).hexdigest()
NAME = 'deeplab_resnet101_coco'


def _zip_bytes(member, data):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as zf:
        zf.writestr(member, data)
    return buf.getvalue()


@pytest.fixture
def store(monkeypatch):
    monkeypatch.setitem(model_store.MODEL_SHA1, NAME, PARAMS_SHA1)
    stem = f'{NAME}-{PARAMS_SHA1[:8]}'
    with LoopbackServer({f'/gluon/models/{stem}.zip': _zip_bytes(stem + '.params', PARAMS)}) as srv:
        monkeypatch.setenv('MXNET_GLUON_REPO', srv.url('/'))
        srv.zip_path = f'/gluon/models/{stem}.zip'
        yield srv


@pytest.mark.network
def test_get_model_file_downloads_verifies_and_caches(store, tmp_path):
    path = model_store.get_model_file(NAME, root=str(tmp_path), progress=False)
    assert path == str(tmp_path / f'{NAME}-{PARAMS_SHA1[:8]}.params')
    assert open(path, 'rb').read() == PARAMS
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(path), os.path.basename(path)[:-7] + '.lock'])
    store.stop()  # a verified cached file needs no network
    assert model_store.get_model_file(NAME, root=str(tmp_path), progress=False) == path
    assert len(store.requests) == 1


@pytest.mark.network
def test_get_model_file_replaces_corrupt_cache(store, tmp_path):
    path = tmp_path / f'{NAME}-{PARAMS_SHA1[:8]}.params'
    path.write_bytes(b'truncated')
    assert model_store.get_model_file(NAME, root=str(tmp_path), progress=False) == str(path)
    assert path.read_bytes() == PARAMS


@pytest.mark.network
def test_get_model_file_recovers_from_stale_partial_zip(store, tmp_path):
    stem = f'{NAME}-{PARAMS_SHA1[:8]}'
    (tmp_path / (stem + '.zip.part')).write_bytes(b'\0' * 3000)  # wrong bytes left by a killed run
    path = model_store.get_model_file(NAME, root=str(tmp_path), progress=False)
    assert open(path, 'rb').read() == PARAMS
    assert [r[1] for r in store.requests] == ['bytes=3000-', None]  # resumed, unreadable zip, fresh download
    assert sorted(os.listdir(tmp_path)) == [stem + '.lock', stem + '.params']


def _fetch_in_child(root, repo, result):
    os.environ['MXNET_GLUON_REPO'] = repo
    try:
        result.put(model_store.get_model_file(NAME, root=root, progress=False))
    except Exception as exc:  # report to the parent
        result.put(repr(exc))


@pytest.mark.network
def test_get_model_file_concurrent_processes_download_once(store, tmp_path):
    store.fault(store.zip_path, Stall(1.0))  # the first download is slow, so the second process must wait
    ctx = multiprocessing.get_context('fork')
    result = ctx.Queue()
    procs = [ctx.Process(target=_fetch_in_child, args=(str(tmp_path), store.url('/'), result)) for _ in range(2)]
    for proc in procs:
        proc.start()
    paths = [result.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(10)
    expected = str(tmp_path / f'{NAME}-{PARAMS_SHA1[:8]}.params')
    assert paths == [expected, expected]
    assert len(store.requests) == 1


@pytest.mark.network
def test_get_model_file_rejects_wrong_content(store, tmp_path):
    stem = f'{NAME}-{PARAMS_SHA1[:8]}'
    store.files[store.zip_path] = _zip_bytes(stem + '.params', b'other weights')
    with pytest.raises(model_store.ModelFileError) as info:
        model_store.get_model_file(NAME, root=str(tmp_path), progress=False)
    msg = str(info.value)
    assert store.url(store.zip_path) in msg and str(tmp_path / (stem + '.params')) in msg
    assert len(store.requests) == 2  # downloaded twice before giving up
    assert not (tmp_path / (stem + '.params')).exists() and not (tmp_path / (stem + '.zip')).exists()


@pytest.mark.network
def test_get_model_file_failure_names_url_and_path(store, tmp_path):
    store.files.clear()
    with pytest.raises(model_store.ModelFileError) as info:
        model_store.get_model_file(NAME, root=str(tmp_path), progress=False)
    msg = str(info.value)
    assert store.url(f'/gluon/models/{NAME}-{PARAMS_SHA1[:8]}.zip') in msg
    assert str(tmp_path / f'{NAME}-{PARAMS_SHA1[:8]}.params') in msg
    assert len(store.requests) == 1  # a 404 is final


def test_root_defaults_and_repo_url(monkeypatch, tmp_path):
    monkeypatch.delenv('MXNET_GLUON_REPO', raising=False)
    assert model_store.model_url('deeplab_resnet101_coco') == (
        'https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/gluon/models/deeplab_resnet101_coco-ed817f76.zip')
    monkeypatch.setenv('MXNET_GLUON_REPO', 'http://mirror.example/x')  # trailing slash added
    assert model_store.model_url('resnet50_v1s') == 'http://mirror.example/x/gluon/models/resnet50_v1s-25a187fa.zip'
    monkeypatch.setenv('MXNET_HOME', str(tmp_path / 'home'))
    file_name = 'resnet101_v1s-bd93a83c.params'
    assert model_store.model_file_path('resnet101_v1s') == str(tmp_path / 'home' / 'models' / file_name)
    # an explicit root wins over MXNET_HOME (GluonCV ignores it)
    assert model_store.model_file_path('resnet101_v1s', str(tmp_path / 'r')) == str(tmp_path / 'r' / file_name)
    monkeypatch.delenv('MXNET_HOME')
    assert model_store.default_root() == os.path.expanduser(os.path.join('~', '.mxnet', 'models'))


def test_sha1_table_matches_gluoncv(gluoncv):
    oracle = gluoncv.model_zoo.model_store
    for name, sha1 in model_store.MODEL_SHA1.items():
        assert oracle._model_sha1[name] == sha1, name
    for name in ('fcn_resnet101_voc', 'psp_resnet101_voc', 'deeplab_resnet152_voc', 'deeplab_resnet50_ade',
                 'resnet50_v1s', 'resnet101_v1s', 'resnet152_v1s'):
        assert model_store.has_pretrained(name)
    for name in model_store.UNPUBLISHED:
        assert name not in oracle._model_sha1 and not model_store.has_pretrained(name)


def test_unknown_and_unpublished_names(tmp_path):
    with pytest.raises(ValueError) as info:
        model_store.get_model_file('deeplab_resnet7_voc', root=str(tmp_path))
    assert 'deeplab_resnet101_coco' in str(info.value)  # lists the known names
    with pytest.raises(model_store.PretrainedUnavailableError) as info:
        model_store.get_model_file('fcn_resnet50_voc', root=str(tmp_path))
    assert 'fcn_resnet50_voc' in str(info.value) and 'No pretrained weights' in str(info.value)
    assert os.listdir(tmp_path) == []


def _hold_lock(path, ready, release):
    with FileLock(path, timeout=5):
        ready.set()
        release.wait(10)


def test_file_lock_excludes_other_processes(tmp_path):
    lock_path = str(tmp_path / 'x.lock')
    ctx = multiprocessing.get_context('fork')
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(lock_path, ready, release))
    proc.start()
    try:
        assert ready.wait(10)
        with pytest.raises(TimeoutError) as info:
            FileLock(lock_path, timeout=0.3, poll=0.05).acquire()
        assert lock_path in str(info.value)
    finally:
        release.set()
        proc.join(10)
    with FileLock(lock_path, timeout=2):
        pass
