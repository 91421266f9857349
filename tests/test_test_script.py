"""test.py and scripts/demo.py end to end on bundled real VOC/ADE images with a tiny randomly initialised model
saved to a .params file.

Metrics are checked against SegmentationMetric computed here, independently, on the same network's predictions.
"""
import json
import os
import shutil
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, load_script, make_voc_root
from segzoo.data import DATASETS, get_segmentation_dataset
from segzoo.data.transforms import ImageNormalize
from segzoo.inference import predict
from segzoo.model_zoo import get_segmentation_model
from segzoo.utils.metrics import SegmentationMetric
from segzoo.utils.viz import get_color_pallete

MODEL = ['--model', 'deeplab', '--backbone', 'resnet_tiny', '--no-cuda', '--workers', '0']

script = load_script('test.py')


def _tiny_weights(tmp_path_factory, dataset, seed):
    mx.random.seed(seed)
    net = get_segmentation_model('deeplab', dataset=dataset, backbone='resnet_tiny', aux=False)
    path = str(tmp_path_factory.mktemp(f'weights_{dataset}') / 'tiny.params')
    net.save_parameters(path)
    return path


@pytest.fixture(scope='module')
def voc_weights(tmp_path_factory):
    return _tiny_weights(tmp_path_factory, 'pascal_voc', 0)


@pytest.fixture(scope='module')
def voc_root(sample_data, tmp_path_factory):
    """Four real VOC photographs (full size) as the val split: batch 3 leaves a last batch of 1."""
    return make_voc_root(sample_data, tmp_path_factory.mktemp('voc'), num_train=0, num_val=4)


@pytest.fixture(scope='module')
def ade_root(sample_data, tmp_path_factory):
    """ade_mini with its three real validation pairs at a quarter of their size (150-class score maps of full-size
    photographs dominate the test's time otherwise): images bilinear, label maps nearest."""
    root = tmp_path_factory.mktemp('ade')
    shutil.copytree(os.path.join(sample_data, 'ade_mini', 'ADEChallengeData2016'), root / 'ADEChallengeData2016')
    for kind, resample in (('images', Image.BILINEAR), ('annotations', Image.NEAREST)):
        folder = root / 'ADEChallengeData2016' / kind / 'validation'
        for path in folder.iterdir():
            with Image.open(path) as image:
                small = image.resize((image.width // 4, image.height // 4), resample)
            small.save(path)
    return str(root)


def _net(path, dataset='pascal_voc'):
    return get_segmentation_model('deeplab', dataset=dataset, backbone='resnet_tiny', aux=False, pretrained=path)


def _run(argv):
    return script.main(script.parse_args(argv))


def _expected_metric(dataset, predict_fn):
    metric = SegmentationMetric(dataset.NUM_CLASS)
    preds = []
    for i in range(len(dataset)):
        image, mask = dataset[i]
        pred = predict_fn(mx.nd.array(image)).argmax(axis=0).asnumpy().astype(np.int64)
        metric.update(mask, pred)
        preds.append(pred)
    return metric, preds


def _assert_metrics(result, metric, dataset, out_dir):
    pix_acc, miou = metric.get()
    assert result['num_images'] == len(dataset)
    assert result['pixAcc'] == pytest.approx(pix_acc, abs=1e-12)
    assert result['mIoU'] == pytest.approx(miou, abs=1e-12)
    assert list(result['class_iou'].values()) == pytest.approx(metric.get_class_iou().tolist(), abs=1e-12)
    assert list(result['class_iou']) == list(dataset.CLASSES)
    with open(os.path.join(out_dir, 'metrics.json')) as f:
        assert json.load(f) == json.loads(json.dumps(result))


def test_testval_single_scale_batch_3_matches_independent_metric(voc_weights, voc_root, tmp_path, capsys):
    out = str(tmp_path / 'out')
    result = _run(MODEL + ['--resume', voc_weights, '--dataset-root', voc_root, '--eval', '--batch-size', '3',
                           '--out-dir', out, '--save-pred'])
    dataset = get_segmentation_dataset('pascal_voc', split='val', mode='testval', root=voc_root,
                                       transform=ImageNormalize())
    net = _net(voc_weights)
    metric, preds = _expected_metric(dataset, lambda x: net(x.expand_dims(0))[0][0])
    _assert_metrics(result, metric, dataset, out)
    assert result['mode'] == 'testval' and result['split'] == 'val' and not result['multi_scale']
    printed = capsys.readouterr().out
    assert 'IoU (%)' in printed and all(name in printed for name in dataset.CLASSES)
    # --save-pred: one palette PNG per image, named after the image, holding the predicted ids
    assert result['saved_predictions'] == len(dataset)
    for path, pred in zip(dataset.images, preds):
        name = os.path.splitext(os.path.basename(path))[0] + '.png'
        png = Image.open(os.path.join(out, 'predictions', name))
        assert png.mode == 'P'
        assert png.getpalette() == get_color_pallete(pred, 'pascal_voc').getpalette()
        np.testing.assert_array_equal(np.asarray(png), pred)


@pytest.mark.slow
def test_val_mode_centre_crops(voc_weights, voc_root, tmp_path):
    out = str(tmp_path / 'out')
    # batch 4 split 2 + 2 over two CPU contexts (whole-image path)
    result = _run(MODEL + ['--resume', voc_weights, '--dataset-root', voc_root, '--mode', 'val', '--batch-size', '4',
                           '--ngpus', '2', '--crop-size', '48', '--out-dir', out])
    assert result['mode'] == 'val' and result['crop_size'] == 48
    dataset = get_segmentation_dataset('pascal_voc', split='val', mode='val', root=voc_root,
                                       transform=ImageNormalize(), crop_size=48, base_size=520)
    assert dataset[0][0].shape == (3, 48, 48)
    net = _net(voc_weights)
    metric, _ = _expected_metric(dataset, lambda x: net(x.expand_dims(0))[0][0])
    _assert_metrics(result, metric, dataset, out)


@pytest.mark.slow
@pytest.mark.parametrize('devices', [['--ngpus', '2'], []], ids=['2_cpu_contexts_threads', '1_cpu_deploy_graph'])
def test_multi_scale_flip_equals_predict(devices, voc_weights, voc_root, tmp_path, monkeypatch):
    """Two contexts run the network in threads; one runs its FP32 deploy graph (main output, per-shape static
    graphs): both give predict()'s metrics with the plain network."""
    converted = []
    real_convert = script.deploy.convert
    monkeypatch.setattr(script.deploy, 'convert', lambda net, precision, **kw: converted.append(precision) or
                        real_convert(net, precision, **kw))
    out = str(tmp_path / 'out')
    scales = (0.75, 1.25)
    result = _run(MODEL + ['--resume', voc_weights, '--dataset-root', voc_root, '--eval', *devices,
                           '--scales', '0.75', '1.25', '--flip', '--base-size', '72', '--crop-size', '64',
                           '--out-dir', out])
    assert result['multi_scale'] and result['flip'] and result['scales'] == list(scales)
    assert converted == ([] if devices else ['fp32'])
    dataset = get_segmentation_dataset('pascal_voc', split='val', mode='testval', root=voc_root,
                                       transform=ImageNormalize())
    net = _net(voc_weights)
    metric, _ = _expected_metric(dataset, lambda x: predict(net, x, 21, base_size=72, crop_size=64, scales=scales,
                                                            flip=True))
    _assert_metrics(result, metric, dataset, out)


@pytest.mark.slow
def test_test_mode_writes_voc_server_layout(voc_weights, voc_root, tmp_path):
    root = tmp_path / 'voc'
    shutil.copytree(os.path.join(voc_root, 'VOC2012'), root / 'VOC2012')
    lists = root / 'VOC2012' / 'ImageSets' / 'Segmentation'
    ids = (lists / 'val.txt').read_text().split()[:3]
    (lists / 'test.txt').write_text('\n'.join(ids) + '\n')
    out = tmp_path / 'out'
    result = _run(MODEL + ['--resume', voc_weights, '--dataset-root', str(root), '--save-pred', '--batch-size', '2',
                           '--out-dir', str(out)])
    assert result['mode'] == 'test' and result['split'] == 'test' and 'mIoU' not in result
    folder = out / 'results' / 'VOC2012' / 'Segmentation' / 'comp6_test_cls'
    assert sorted(os.listdir(folder)) == sorted(i + '.png' for i in ids)
    net = _net(voc_weights)
    image = ImageNormalize()(np.asarray(Image.open(root / 'VOC2012' / 'JPEGImages' / f'{ids[0]}.jpg').convert('RGB')))
    expected = net(mx.nd.array(image).expand_dims(0))[0][0].argmax(axis=0).asnumpy()
    np.testing.assert_array_equal(np.asarray(Image.open(folder / f'{ids[0]}.png')), expected)


@pytest.mark.slow
def test_ade_predictions_are_saved_with_pred_offset(ade_root, tmp_path_factory, tmp_path):
    weights = _tiny_weights(tmp_path_factory, 'ade20k', 1)
    root = ade_root
    out = str(tmp_path / 'out')
    result = _run(MODEL + ['--resume', weights, '--dataset', 'ade20k', '--dataset-root', root, '--eval',
                           '--save-pred', '--out-dir', out])
    dataset = get_segmentation_dataset('ade20k', split='val', mode='testval', root=root, transform=ImageNormalize())
    assert dataset.pred_offset == 1
    net = _net(weights, 'ade20k')
    metric, preds = _expected_metric(dataset, lambda x: net(x.expand_dims(0))[0][0])
    _assert_metrics(result, metric, dataset, out)
    name = os.path.splitext(os.path.basename(dataset.images[0]))[0] + '.png'
    np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(out, 'predictions', name))),
                                  preds[0] + dataset.pred_offset)


def test_benchmark_runs(voc_weights, tmp_path, capsys):
    result = _run(MODEL + ['--resume', voc_weights, '--benchmark', '--image-shape', '32', '--num-iterations', '3',
                           '--warmup-iterations', '1', '--batch-size', '2', '--out-dir', str(tmp_path)])
    assert result['image_shape'] == [2, 3, 32, 32] and result['iterations'] == 3
    assert result['ms_per_img'] > 0
    assert result['img_per_sec'] == pytest.approx(1000.0 / result['ms_per_img'])
    assert 'ms/img' in capsys.readouterr().out
    # random weights are fine for a latency measurement
    assert _run(MODEL + ['--benchmark', '--image-shape', '32', '--num-iterations', '1', '--out-dir',
                         str(tmp_path)])['ms_per_img'] > 0


def test_class_count_mismatch_is_a_clear_error(voc_weights, sample_data, tmp_path):
    with pytest.raises(SystemExit, match='predicts 21 classes but --dataset ade20k has 150'):
        _run(MODEL + ['--resume', voc_weights, '--dataset', 'ade20k', '--eval',
                      '--dataset-root', os.path.join(sample_data, 'ade_mini'), '--out-dir', str(tmp_path)])


def test_zoo_model_for_another_dataset_is_a_clear_error(voc_weights, monkeypatch):
    # e.g. --model-zoo deeplab_resnet101_coco (21 classes) evaluated on ade20k (150 classes)
    monkeypatch.setattr(script.cli, 'build_model', lambda args, ctx_list, weights=None, **kw: _net(voc_weights))
    args = script.parse_args(['--model-zoo', 'deeplab_resnet101_coco', '--dataset', 'ade20k', '--eval', '--no-cuda'])
    with pytest.raises(SystemExit, match='predicts 21 classes but --dataset ade20k has 150'):
        script.cli.load_eval_model(args, [mx.cpu()], 150)


def test_flag_errors(voc_weights, voc_root, tmp_path):
    with pytest.raises(SystemExit, match='no weights'):
        _run(MODEL + ['--dataset-root', voc_root, '--eval', '--out-dir', str(tmp_path)])
    with pytest.raises(SystemExit):
        script.parse_args(MODEL + ['--eval', '--mode', 'test'])
    with pytest.raises(SystemExit):
        script.parse_args(MODEL + ['--scales', '0', '1'])


# ------------------------------------------------------------------------------------------------ scripts/demo.py
@pytest.fixture(scope='module')
def demo():
    return load_script(os.path.join('scripts', 'demo.py'))


def _voc_image(voc_root):
    folder = os.path.join(voc_root, 'VOC2012', 'JPEGImages')
    return os.path.join(folder, sorted(os.listdir(folder))[0])


def test_demo_writes_mask_and_overlay(demo, voc_weights, voc_root, tmp_path, capsys):
    image_path = _voc_image(voc_root)
    prefix = str(tmp_path / 'sub' / 'demo')
    result = demo.main(demo.parse_args([image_path, '--model', 'deeplab', '--backbone', 'resnet_tiny',
                                        '--dataset', 'pascal_voc', '--resume', voc_weights, '--no-cuda',
                                        '--out', prefix]))
    assert result['mask'] == prefix + '_mask.png' and result['overlay'] == prefix + '_overlay.png'
    rgb = np.asarray(Image.open(image_path).convert('RGB'))
    net = _net(voc_weights)
    expected = net(mx.nd.array(ImageNormalize()(rgb)).expand_dims(0))[0][0].argmax(axis=0).asnumpy().astype(int)
    mask = Image.open(result['mask'])
    assert mask.mode == 'P' and mask.getpalette() == get_color_pallete(expected, 'pascal_voc').getpalette()
    np.testing.assert_array_equal(np.asarray(mask), expected)
    overlay = Image.open(result['overlay'])
    assert overlay.mode == 'RGB' and overlay.size == (rgb.shape[1], rgb.shape[0])
    # the printed classes are those predicted, with their pixel shares
    ids, counts = np.unique(expected, return_counts=True)
    names = DATASETS['pascal_voc'].CLASSES
    assert result['classes'] == pytest.approx({names[i]: c / expected.size for i, c in zip(ids, counts)})
    printed = capsys.readouterr().out
    assert all(names[i] in printed for i in ids)


@pytest.mark.slow
def test_demo_command_line_and_errors(demo, voc_weights, voc_root, tmp_path):
    prefix = str(tmp_path / 'cli')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'demo.py'), _voc_image(voc_root),
                           '--model', 'deeplab', '--backbone', 'resnet_tiny', '--resume', voc_weights, '--no-cuda',
                           '--scales', '0.5', '1.0', '--flip', '--base-size', '72', '--crop-size', '64',
                           '--out', prefix], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert os.path.isfile(prefix + '_mask.png') and os.path.isfile(prefix + '_overlay.png')
    with pytest.raises(SystemExit):
        demo.parse_args([_voc_image(voc_root), '--model', 'deeplab', '--backbone', 'resnet_tiny'])  # no weights
    args = demo.parse_args([str(tmp_path / 'missing.jpg'), '--model', 'deeplab', '--backbone', 'resnet_tiny',
                            '--resume', voc_weights, '--no-cuda'])
    with pytest.raises(SystemExit, match='cannot read image'):
        demo.main(args)
    assert demo.parse_args(['x.jpg', '--model-zoo', 'psp_resnet101_ade']).dataset == 'ade20k'
