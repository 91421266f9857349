"""Dataset preparation scripts on tiny archives with the real internal layout, served from 127.0.0.1
or read offline from --download-dir. Archive contents are the bundled real sample files."""
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

from helpers import ROOT, load_script
from http_server import Cut, LoopbackServer, running_servers
from segzoo.utils.archives import UnsafeArchiveError, extract_archive
from segzoo.utils.prepare import Archive, PrepareError, dataset_root, link_root

@pytest.fixture(autouse=True)
def _no_leaked_servers():
    yield
    assert running_servers() == []


pytestmark = pytest.mark.timeout(120)

DEAD_MIRROR = 'http://127.0.0.1:9/unreachable'  # port 9 (discard) is closed on loopback: any access fails


def _script(name):
    return load_script(os.path.join('scripts', 'datasets', f'{name}.py'))


def _tar(members, gz=False):
    """members: {archive name: bytes}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:gz' if gz else 'w') as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _read(*parts):
    with open(os.path.join(*parts), 'rb') as f:
        return f.read()


def _ids(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _install(monkeypatch, module, archives):
    """Point module.ARCHIVES at the tiny archives {key: (filename, bytes)}; return {url path: bytes}."""
    served = {}
    for key, (filename, data) in archives.items():
        monkeypatch.setitem(module.ARCHIVES, key, Archive(filename, module.ARCHIVES[key].url,
                                                          hashlib.sha1(data).hexdigest()))
        served['/' + filename] = data
    return served


def _write_archives(folder, served):
    os.makedirs(folder, exist_ok=True)
    for path, data in served.items():
        with open(os.path.join(folder, path.lstrip('/')), 'wb') as f:
            f.write(data)


# ------------------------------------------------------------------------------------------------ VOC + SBD

@pytest.fixture(scope='module')
def voc_archives(sample_data):
    voc = os.path.join(sample_data, 'voc_mini', 'VOC2012')
    seg = os.path.join(voc, 'ImageSets', 'Segmentation')
    train, val = _ids(os.path.join(seg, 'train.txt'))[:4], _ids(os.path.join(seg, 'val.txt'))[:3]
    members = {'VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt': ''.join(i + '\n' for i in train).encode(),
               'VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt': ''.join(i + '\n' for i in val).encode(),
               'VOCdevkit/VOC2012/ImageSets/Segmentation/trainval.txt':
                   ''.join(i + '\n' for i in train + val).encode()}
    for i in train + val:
        members[f'VOCdevkit/VOC2012/JPEGImages/{i}.jpg'] = _read(voc, 'JPEGImages', i + '.jpg')
        members[f'VOCdevkit/VOC2012/SegmentationClass/{i}.png'] = _read(voc, 'SegmentationClass', i + '.png')
    # SBD lists overlap VOC train and VOC val, like the real ones; 'rider' is the bundled real SBD sample.
    sbd_train, sbd_val = [train[0], val[0], 'rider'], [train[1], val[1], '2008_000002']
    sbd = os.path.join(sample_data, 'sbd_mini', 'benchmark_RELEASE', 'dataset')
    members_sbd = {'benchmark_RELEASE/dataset/train.txt': ''.join(i + '\n' for i in sbd_train).encode(),
                   'benchmark_RELEASE/dataset/val.txt': ''.join(i + '\n' for i in sbd_val).encode(),
                   'benchmark_RELEASE/benchmark_code_RELEASE/README': b'not needed by segzoo\n'}
    for i in sbd_train + sbd_val:
        members_sbd[f'benchmark_RELEASE/dataset/img/{i}.jpg'] = _read(sbd, 'img', 'rider.jpg')
        members_sbd[f'benchmark_RELEASE/dataset/cls/{i}.mat'] = _read(sbd, 'cls', 'rider.mat')
        members_sbd[f'benchmark_RELEASE/dataset/inst/{i}.mat'] = _read(sbd, 'cls', 'rider.mat')
    # standard train_aug = (SBD train + SBD val + VOC train) - VOC val, derived by hand from the lists above
    expected_aug = sorted({train[0], train[1], train[2], train[3], 'rider', '2008_000002'})
    return dict(archives={'voc2012': ('VOCtrainval_11-May-2012.tar', _tar(members)),
                          'sbd': ('benchmark.tgz', _tar(members_sbd, gz=True))},
                train=train, val=val, sbd_train=sbd_train, sbd_val=sbd_val, train_aug=expected_aug)


def _check_voc_layout(root, data, counts):
    assert _ids(os.path.join(root, 'VOCaug', 'dataset', 'train_aug.txt')) == data['train_aug']
    assert _ids(os.path.join(root, 'VOCaug', 'dataset', 'trainval.txt')) == data['sbd_train'] + data['sbd_val']
    for i in data['train'] + data['val']:
        assert os.path.isfile(os.path.join(root, 'VOC2012', 'JPEGImages', i + '.jpg'))
        assert os.path.isfile(os.path.join(root, 'VOC2012', 'SegmentationClass', i + '.png'))
    for sub in ('img', 'cls', 'inst'):
        assert os.path.isdir(os.path.join(root, 'VOCaug', 'dataset', sub))
    assert not os.path.exists(os.path.join(root, 'VOCdevkit'))
    assert not os.path.exists(os.path.join(root, 'benchmark_RELEASE'))
    assert counts == {'VOC2012': {'train': 4, 'val': 3, 'trainval': 7},
                      'VOCaug': {'train': 3, 'val': 3, 'trainval': 6, 'train_aug': len(data['train_aug'])}}


@pytest.mark.network
def test_pascal_voc_download_resume_and_rerun_offline(monkeypatch, tmp_path, voc_archives, capsys):
    voc = _script('pascal_voc')
    served = _install(monkeypatch, voc, voc_archives['archives'])
    root = str(tmp_path / 'voc')
    with LoopbackServer(served) as server:
        server.fault('/benchmark.tgz', Cut(200_000))  # the SBD transfer breaks once and is resumed
        counts = voc.main(voc.parse_args(['--root', root, '--mirror', server.url('/'), '--quiet']))
        assert [r for r in server.requests if r[0] == '/benchmark.tgz'][1][1].startswith('bytes=')
    _check_voc_layout(root, voc_archives, counts)
    out = capsys.readouterr().out
    assert 'train_aug 6' in out and 'VOC2012: train 4, val 3, trainval 7' in out
    assert sorted(os.listdir(os.path.join(root, 'downloads'))) == ['VOCtrainval_11-May-2012.tar', 'benchmark.tgz']
    # second run: verified archives and finished extractions are reused; the network is never touched
    counts = voc.main(voc.parse_args(['--root', root, '--mirror', DEAD_MIRROR, '--quiet', '--retries', '1']))
    _check_voc_layout(root, voc_archives, counts)
    assert 'already extracted' in capsys.readouterr().out


def test_pascal_voc_offline_download_dir(monkeypatch, tmp_path, voc_archives):
    voc = _script('pascal_voc')
    served = _install(monkeypatch, voc, voc_archives['archives'])
    archives = str(tmp_path / 'archives')
    _write_archives(archives, served)
    root = str(tmp_path / 'voc')
    counts = voc.main(voc.parse_args(['--root', root, '--download-dir', archives, '--mirror', DEAD_MIRROR,
                                      '--quiet', '--retries', '1']))
    _check_voc_layout(root, voc_archives, counts)
    assert not os.path.exists(os.path.join(root, 'downloads'))


def test_pascal_voc_uses_mxnet_home(monkeypatch, tmp_path, voc_archives):
    voc = _script('pascal_voc')
    served = _install(monkeypatch, voc, voc_archives['archives'])
    archives = str(tmp_path / 'archives')
    _write_archives(archives, served)
    monkeypatch.setenv('MXNET_HOME', str(tmp_path / 'mxhome'))
    assert dataset_root('voc') == str(tmp_path / 'mxhome' / 'datasets' / 'voc')
    counts = voc.main(voc.parse_args(['--download-dir', archives, '--no-download', '--quiet']))
    _check_voc_layout(str(tmp_path / 'mxhome' / 'datasets' / 'voc'), voc_archives, counts)


@pytest.mark.network
def test_corrupt_or_missing_archive_is_named(monkeypatch, tmp_path, voc_archives):
    voc = _script('pascal_voc')
    served = _install(monkeypatch, voc, voc_archives['archives'])
    archives = tmp_path / 'archives'
    _write_archives(str(archives), served)
    (archives / 'benchmark.tgz').write_bytes(served['/benchmark.tgz'][:-10])  # truncated
    args = ['--root', str(tmp_path / 'voc'), '--download-dir', str(archives), '--no-download', '--quiet']
    with pytest.raises(PrepareError) as info:
        voc.main(voc.parse_args(args))
    msg = str(info.value)
    assert 'benchmark.tgz' in msg and voc.ARCHIVES['sbd'].sha1 in msg and 'corrupt' in msg
    assert 'http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz' in msg
    (archives / 'benchmark.tgz').unlink()
    with pytest.raises(PrepareError, match='benchmark.tgz is missing'):
        voc.main(voc.parse_args(args))
    # with a mirror, the corrupt copy is replaced by a verified download
    (archives / 'benchmark.tgz').write_bytes(b'garbage')
    with LoopbackServer(served) as server:
        voc.main(voc.parse_args(args[:-2] + ['--mirror', server.url(), '--quiet']))
    assert (archives / 'benchmark.tgz').read_bytes() == served['/benchmark.tgz']


@pytest.mark.slow
def test_pascal_voc_runs_as_script(monkeypatch, tmp_path, voc_archives):
    # the real checksums are in the script, so a subprocess run is checked through its error path
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'datasets', 'pascal_voc.py'),
                           '--root', str(tmp_path / 'voc'), '--download-dir', str(tmp_path / 'none'),
                           '--no-download', '--quiet'], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert 'VOCtrainval_11-May-2012.tar is missing' in proc.stderr
    assert '4e443f8a2eca6b1dac8a6c57641b67dd40621a49' in proc.stderr
    assert 'Traceback' not in proc.stderr


# ------------------------------------------------------------------------------------------------ COCO

@pytest.fixture(scope='module')
def coco_archives(sample_data):
    coco = os.path.join(sample_data, 'coco_mini')
    zips = {}
    for split in ('train2017', 'val2017'):
        zips[split] = (f'{split}.zip', _zip({f'{split}/{n}': _read(coco, split, n)
                                             for n in os.listdir(os.path.join(coco, split))}))
    zips['annotations'] = ('annotations_trainval2017.zip', _zip(
        {f'annotations/{n}': _read(coco, 'annotations', n) for n in os.listdir(os.path.join(coco, 'annotations'))}))
    return zips


@pytest.mark.network
def test_mscoco_download_and_layout(monkeypatch, tmp_path, coco_archives, capsys):
    coco = _script('mscoco')
    served = _install(monkeypatch, coco, coco_archives)
    root = str(tmp_path / 'coco')
    with LoopbackServer(served) as server:
        counts = coco.main(coco.parse_args(['--root', root, '--mirror', server.url(), '--quiet', '--no-cache']))
        assert sorted(p for p, _ in server.requests) == sorted(served)
    assert counts == {'images': {'train': 1, 'val': 1}}
    for rel in ('train2017/000000391895.jpg', 'val2017/000000397133.jpg', 'annotations/instances_train2017.json',
                'annotations/instances_val2017.json'):
        assert os.path.isfile(os.path.join(root, rel)), rel
    assert 'train 1, val 1' in capsys.readouterr().out


def test_mscoco_builds_id_cache(monkeypatch, tmp_path, coco_archives):
    pytest.importorskip('segzoo.data.coco')
    from segzoo.data.coco import COCOSegmentation
    coco = _script('mscoco')
    served = _install(monkeypatch, coco, coco_archives)
    archives = str(tmp_path / 'archives')
    _write_archives(archives, served)
    root = str(tmp_path / 'coco')
    counts = coco.main(coco.parse_args(['--root', root, '--download-dir', archives, '--no-download', '--quiet']))
    assert counts['segmentation'] == {split: len(COCOSegmentation(root=root, split=split))
                                      for split in ('train', 'val')}


# ------------------------------------------------------------------------------------------------ ADE20K

@pytest.fixture(scope='module')
def ade_archives(sample_data):
    ade = os.path.join(sample_data, 'ade_mini')
    members = {}
    for dirpath, _, files in os.walk(os.path.join(ade, 'ADEChallengeData2016')):
        for n in files:
            full = os.path.join(dirpath, n)
            members[os.path.relpath(full, ade).replace(os.sep, '/')] = _read(full)
    test = {'release_test/testing/ADE_test_00000001.jpg':
            _read(ade, 'ADEChallengeData2016', 'images', 'validation', 'ADE_val_00000001.jpg'),
            'release_test/list.txt': b'ADE_test_00000001.jpg\n'}
    return {'trainval': ('ADEChallengeData2016.zip', _zip(members)), 'test': ('release_test.zip', _zip(test))}


@pytest.mark.network
def test_ade20k_download_with_test_images(monkeypatch, tmp_path, ade_archives, capsys):
    ade = _script('ade20k')
    served = _install(monkeypatch, ade, ade_archives)
    root = str(tmp_path / 'ade')
    with LoopbackServer(served) as server:
        counts = ade.main(ade.parse_args(['--root', root, '--mirror', server.url(), '--quiet', '--test']))
    assert counts == {'training': 1, 'validation': 3, 'testing': 1}
    assert os.path.isfile(os.path.join(root, 'ADEChallengeData2016', 'annotations', 'validation',
                                       'ADE_val_00000003.png'))
    assert 'training 1, validation 3, testing 1' in capsys.readouterr().out


def test_ade20k_unpaired_files_reported(monkeypatch, tmp_path, ade_archives):
    ade = _script('ade20k')
    served = _install(monkeypatch, ade, ade_archives)
    archives = str(tmp_path / 'archives')
    _write_archives(archives, served)
    root = tmp_path / 'ade'
    args = ade.parse_args(['--root', str(root), '--download-dir', archives, '--no-download', '--quiet'])
    ade.main(args)
    (root / 'ADEChallengeData2016' / 'annotations' / 'validation' / 'ADE_val_00000002.png').unlink()
    with pytest.raises(PrepareError, match='ADE_val_00000002'):
        ade.main(args)
    ade.main(ade.parse_args(['--root', str(root), '--download-dir', archives, '--no-download', '--quiet',
                             '--overwrite']))  # extracting again repairs the tree


@pytest.mark.slow
def test_ade20k_runs_as_script_offline(tmp_path, ade_archives):
    # ARCHIVES cannot be patched in a subprocess: give it an archive whose checksum is wrong and check the
    # error, which must name the file, the published checksum and the official URL, without a traceback.
    archives = tmp_path / 'archives'
    archives.mkdir()
    (archives / 'ADEChallengeData2016.zip').write_bytes(ade_archives['trainval'][1])
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'datasets', 'ade20k.py'),
                           '--root', str(tmp_path / 'ade'), '--download-dir', str(archives), '--no-download'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    for part in ('ADEChallengeData2016.zip', '219e1696abb36c8ba3a3afe7fb2f4b4606a897c7',
                 'http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip'):
        assert part in proc.stderr


# ------------------------------------------------------------------------------------------------ Cityscapes

@pytest.fixture(scope='module')
def citys_archives(sample_data):
    voc = os.path.join(sample_data, 'voc_mini', 'VOC2012', 'SegmentationClass')
    pngs = sorted(os.listdir(voc))
    layout = {'train': [('aachen', 'aachen_000000_000019'), ('bremen', 'bremen_000000_000019')],
              'val': [('frankfurt', 'frankfurt_000000_000294')], 'test': [('berlin', 'berlin_000000_000019')]}
    gt = {'README': b'gtFine\n', 'license.txt': b'licence\n'}
    left = {'README': b'leftImg8bit\n', 'license.txt': b'licence\n'}
    for k, (split, items) in enumerate(layout.items()):
        for city, stem in items:
            png = _read(voc, pngs[k])  # real PNG files stand in for the street scenes
            left[f'leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png'] = png
            for kind in ('labelIds', 'instanceIds', 'color'):
                gt[f'gtFine/{split}/{city}/{stem}_gtFine_{kind}.png'] = png
            gt[f'gtFine/{split}/{city}/{stem}_gtFine_polygons.json'] = b'{}'
    return {'gtFine': ('gtFine_trainvaltest.zip', _zip(gt)),
            'leftImg8bit': ('leftImg8bit_trainvaltest.zip', _zip(left))}


def test_cityscapes_from_download_dir(monkeypatch, tmp_path, citys_archives, capsys):
    citys = _script('cityscapes')
    served = _install(monkeypatch, citys, citys_archives)
    archives = str(tmp_path / 'dl')
    _write_archives(archives, served)
    root = str(tmp_path / 'citys')
    counts = citys.main(citys.parse_args(['--root', root, '--download-dir', archives, '--quiet']))
    assert counts == {'train': 2, 'val': 1, 'test': 1}
    assert os.path.isfile(os.path.join(root, 'gtFine', 'val', 'frankfurt',
                                       'frankfurt_000000_000294_gtFine_labelIds.png'))
    assert 'train 2, val 1, test 1' in capsys.readouterr().out


def test_cityscapes_missing_zip_explains_login(monkeypatch, tmp_path, citys_archives):
    citys = _script('cityscapes')
    _install(monkeypatch, citys, citys_archives)
    monkeypatch.chdir(tmp_path)  # default --download-dir is the current folder, like GluonCV
    with pytest.raises(PrepareError) as info:
        citys.main(citys.parse_args(['--root', str(tmp_path / 'citys'), '--quiet']))
    msg = str(info.value)
    assert 'gtFine_trainvaltest.zip is not in ' + str(tmp_path) in msg
    assert 'https://www.cityscapes-dataset.com/downloads/' in msg and citys.ARCHIVES['gtFine'].sha1 in msg


@pytest.mark.network
def test_cityscapes_from_own_mirror(monkeypatch, tmp_path, citys_archives):
    citys = _script('cityscapes')
    served = _install(monkeypatch, citys, citys_archives)
    with LoopbackServer(served) as server:
        counts = citys.main(citys.parse_args(['--root', str(tmp_path / 'citys'), '--download-dir',
                                              str(tmp_path / 'dl'), '--mirror', server.url(), '--quiet']))
    assert counts == {'train': 2, 'val': 1, 'test': 1}


# ------------------------------------------------------------------------------------------------ safety

def test_path_traversal_and_links_refused(tmp_path):
    dest = tmp_path / 'dest'
    for name in ('../evil.txt', '/tmp/evil-abs.txt', 'ok/../../evil.txt'):
        bad = tmp_path / 'bad.tar'
        bad.write_bytes(_tar({name: b'x'}))
        with pytest.raises(UnsafeArchiveError, match='outside'):
            extract_archive(str(bad), str(dest), progress=False)
        badzip = tmp_path / 'bad.zip'
        badzip.write_bytes(_zip({name: b'x'}))
        with pytest.raises(UnsafeArchiveError, match='outside'):
            extract_archive(str(badzip), str(dest), progress=False)
    assert not (tmp_path / 'evil.txt').exists() and not os.path.exists('/tmp/evil-abs.txt')
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tf:
        link = tarfile.TarInfo('data')
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
        tf.addfile(link)
        evil = tarfile.TarInfo('data/evil.txt')
        evil.size = 1
        tf.addfile(evil, io.BytesIO(b'x'))
    (tmp_path / 'link.tar').write_bytes(buf.getvalue())
    with pytest.raises(UnsafeArchiveError, match='link'):
        extract_archive(str(tmp_path / 'link.tar'), str(dest), progress=False)
    assert not (tmp_path / 'evil.txt').exists() and not (dest / 'data').exists()


def test_link_root_never_replaces_real_folders(tmp_path):
    root, other = tmp_path / 'root', tmp_path / 'other'
    root.mkdir()
    other.mkdir()
    link = tmp_path / 'link'
    link_root(str(link), str(root))
    assert os.path.realpath(link) == str(root)
    link_root(str(link), str(root))  # idempotent
    with pytest.raises(PrepareError, match='--replace-link'):
        link_root(str(link), str(other))
    link_root(str(link), str(other), replace=True)
    assert os.path.realpath(link) == str(other)
    real = tmp_path / 'real'
    real.mkdir()
    (real / 'keep.txt').write_text('user data')
    with pytest.raises(PrepareError, match='not a symlink'):
        link_root(str(real), str(root))
    assert (real / 'keep.txt').read_text() == 'user data'
