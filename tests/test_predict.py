"""scripts/predict.py over a folder with a corrupt file, and the truth panels of predict.py and scripts/demo.py."""
import csv
import os
import runpy
import shutil
import sys

import mxnet as mx
import numpy as np
import pytest
from helpers import ROOT, load_script
from PIL import Image

from segzoo.data.transforms import ImageNormalize
from segzoo.inference import predict_whole
from segzoo.model_zoo import get_segmentation_model

SCRIPTS = os.path.join(ROOT, 'scripts')
demo = load_script(os.path.join('scripts', 'demo.py'))
predict = load_script(os.path.join('scripts', 'predict.py'))


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """A 3-class tiny DeepLabV3 (random weights: the test checks the plumbing, not the accuracy)."""
    mx.random.seed(3)
    net = get_segmentation_model('deeplab', dataset='folder', backbone='resnet_tiny', aux=True, num_classes=3)
    path = str(tmp_path_factory.mktemp('weights') / 'tiny3.params')
    net.save_parameters(path)
    return path, net


def _model_args(weights_path, folder):
    return ['--model', 'deeplab', '--backbone', 'resnet_tiny', '--aux', '--no-cuda', '--resume', weights_path,
            '--classes', os.path.join(folder, 'classes.txt')]


@pytest.mark.slow
def test_folder_with_a_corrupt_file(folder_dataset, weights, tmp_path, capsys):
    inputs = tmp_path / 'in'
    shutil.copytree(os.path.join(folder_dataset, 'images', 'val'), inputs)
    good = sorted(os.listdir(inputs))
    (inputs / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not a JPEG')
    out = tmp_path / 'out'
    labels = os.path.join(folder_dataset, 'masks', 'val')
    result = predict.main(predict.parse_args([str(inputs), str(tmp_path / 'missing*.png'), '--out', str(out),
                                              '--labels', labels, '--batch-size', '3',
                                              *_model_args(weights[0], folder_dataset)]))
    assert result['skipped'] == [str(tmp_path / 'missing*.png'), str(inputs / 'corrupt.jpg')]
    assert 'corrupt.jpg' in capsys.readouterr().err
    with open(out / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    assert [os.path.basename(r['image']) for r in rows] == good
    net = weights[1]
    for row, name in zip(rows, good):
        stem = name[:-4]
        rgb = np.asarray(Image.open(inputs / name).convert('RGB'))
        expected = predict_whole(net, mx.nd.array(ImageNormalize()(rgb)[None])).argmax(axis=1)[0].asnumpy()
        mask = np.array(Image.open(out / f'{stem}_mask.png'))
        np.testing.assert_array_equal(mask, expected)                       # the network's own argmax
        shares = [float(row[c]) for c in ('background', 'person', 'other')]
        np.testing.assert_allclose(shares, np.bincount(mask.ravel(), minlength=3) / mask.size, atol=1e-4)
        truth = np.array(Image.open(os.path.join(labels, stem + '.png'))).astype(int)
        valid = truth != 255
        assert float(row['pixel_accuracy']) == pytest.approx((mask[valid] == truth[valid]).mean(), abs=1e-4)
        panels = Image.open(out / f'{stem}_panels.png')
        assert panels.width > 2 * rgb.shape[1] * 0.5 and os.path.isfile(out / f'{stem}_overlay.png')


def _exit_status(argv, monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['predict.py', *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(SCRIPTS, 'predict.py'), run_name='__main__')
    return exit_info.value.code


@pytest.mark.slow
def test_exit_status_and_demo_panels(folder_dataset, weights, tmp_path, monkeypatch):
    good = os.path.join(folder_dataset, 'images', 'val')
    corrupt = tmp_path / 'corrupt.png'
    corrupt.write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    model = _model_args(weights[0], folder_dataset)
    assert _exit_status([good, '--out', str(tmp_path / 'ok'), *model], monkeypatch) == 0
    assert _exit_status([good, '--out', str(tmp_path / 'fused'), '--precision', 'fused', *model], monkeypatch) == 0
    for name in os.listdir(good):      # oneDNN's conv+BN+ReLU fusion: the plain network's classes (rounding aside)
        mask = f'{name[:-4]}_mask.png'
        same = np.array(Image.open(tmp_path / 'ok' / mask)) == np.array(Image.open(tmp_path / 'fused' / mask))
        assert same.mean() > 0.999
    assert _exit_status([good, str(corrupt), '--out', str(tmp_path / 'bad'), *model], monkeypatch) == 1
    with pytest.raises(SystemExit):
        predict.parse_args([good, '--out', str(tmp_path / 'x'), '--model', 'deeplab'])   # no weights named

    name = sorted(os.listdir(good))[0][:-4]
    result = demo.main(demo.parse_args([
        os.path.join(good, name + '.jpg'), '--dataset', 'folder', '--dataset-root', folder_dataset,
        '--model', 'deeplab', '--backbone', 'resnet_tiny', '--aux', '--no-cuda', '--resume', weights[0],
        '--base-size', '48', '--label', os.path.join(folder_dataset, 'masks', 'val', name + '.png'),
        '--caption', 'held-out image', '--out', str(tmp_path / 'demo' / name)]))
    assert os.path.isfile(result['panels']) and set(result['classes']) <= {'background', 'person', 'other'}
    with pytest.raises(SystemExit, match='cannot read mask'):
        bad = tmp_path / 'bad.png'
        bad.write_bytes(b'not a png')
        demo.main(demo.parse_args([os.path.join(good, name + '.jpg'), '--dataset', 'folder', '--dataset-root',
                                   folder_dataset, '--model', 'deeplab', '--backbone', 'resnet_tiny', '--aux',
                                   '--no-cuda', '--resume', weights[0], '--label', str(bad)]))
