"""segzoo.deploy: fused FP32, bf16 and INT8 graphs on a tiny random DeepLabV3, at several input sizes, saved and
loaded back; MXNet's own ``quantize_net_v2`` on the full network is the INT8 oracle."""
import json
import os
import warnings

import mxnet as mx
import numpy as np
import pytest

from helpers import load_script, make_voc_root
from segzoo import deploy
from segzoo.model_zoo import get_segmentation_model

SIZES = ((1, 3, 48, 48), (2, 3, 40, 72))   # the calibration size, then another


@pytest.fixture(scope='module')
def net():
    mx.random.seed(3)
    return get_segmentation_model('deeplab', backbone='resnet_tiny', aux=True, pretrained_base=False)


@pytest.fixture(scope='module')
def calib():
    rng = np.random.default_rng(0)
    return [mx.nd.array(rng.standard_normal((2, 3, 48, 48)).astype('float32')) for _ in range(2)]


@pytest.fixture(scope='module')
def inputs():
    rng = np.random.default_rng(1)
    return [mx.nd.array(rng.standard_normal(shape).astype('float32')) for shape in SIZES]


@pytest.fixture(scope='module')
def int8(net, calib):
    return deploy.quantize(net, calib, calib_mode='naive')


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _graph_ops(block):
    return {node['op'] for node in json.loads(block.symbol.tojson(remove_amp_cast=False))['nodes']}


def test_fused_equals_fp32_and_drops_aux(net, inputs):
    fused = deploy.fuse(net)
    assert '_sg_mkldnn_conv' in _graph_ops(fused) and 'BatchNorm' not in _graph_ops(fused)
    for x in inputs:
        out = fused(x)
        assert len(out) == 1 and out[0].shape == (x.shape[0], 21) + x.shape[2:]
        assert _rel(out[0].asnumpy(), net(x)[0].asnumpy()) < 1e-5


def test_int8_equals_mxnet_quantization_at_any_size(net, calib, inputs, int8):
    from mxnet.contrib.quantization import quantize_net_v2
    calib_iter = mx.io.NDArrayIter(mx.nd.concat(*calib, dim=0), batch_size=2, data_name='data')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        oracle = quantize_net_v2(net, quantized_dtype='auto', calib_mode='naive', calib_data=calib_iter,
                                 num_calib_examples=4, ctx=mx.cpu())
    oracle.hybridize(static_alloc=True, static_shape=True)
    ops = _graph_ops(int8)
    assert {'_sg_mkldnn_conv', '_contrib_quantize_v2'} <= ops and 'Convolution' not in ops
    assert int8.precision == 'int8' and int8.meta['num_calib_examples'] == 4
    for x in inputs:
        ours, theirs = int8(x)[0].asnumpy(), oracle(x)[0].asnumpy()
        assert ours.shape == theirs.shape == (x.shape[0], 21) + x.shape[2:]
        assert _rel(ours, theirs) < 1e-5
        fp32 = net(x)[0].asnumpy()
        assert _rel(ours, fp32) < 0.5   # quantization noise of a random net, not garbage


def test_int8_keeps_one_state_per_size(int8, inputs):
    first = [int8(x)[0].asnumpy() for x in inputs]
    blocks = dict(int8._by_shape.blocks)
    again = [int8(x)[0].asnumpy() for x in inputs]   # alternating sizes reuse their CachedOps
    assert dict(int8._by_shape.blocks) == blocks and int8.num_shapes == 2
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_shape_cache_is_bounded(net, inputs):
    fp32 = deploy.convert(net, 'fp32', max_shapes=1)
    for x in inputs:
        fp32(x)
    assert fp32.num_shapes == 1 and list(fp32._by_shape.blocks)[0][0] == inputs[-1].shape


def test_exclude_keeps_layers_fp32(net, calib, inputs):
    block = deploy.quantize(net, calib[:1], exclude=['aspppooling'])
    nodes = json.loads(block.symbol.tojson())['nodes']
    fp32_convs = [n for n in nodes if n['op'] == '_sg_mkldnn_conv' and n.get('attrs', {}).get('quantized') != 'true']
    assert len(fp32_convs) == 1   # the excluded image-pool branch: its pooling and its conv stay FP32
    pool_ops = {n['op'] for n in nodes if 'aspppooling' in n['name']}
    assert 'Pooling' in pool_ops and '_contrib_quantized_pooling' not in pool_ops
    assert block(inputs[1])[0].shape == (2, 21, 40, 72)


@pytest.mark.slow
def test_entropy_calibration():
    """Entropy (KL) thresholds on a 2-conv net (the KL search costs ~0.4 s per layer)."""
    small = mx.gluon.nn.HybridSequential()
    small.add(mx.gluon.nn.Conv2D(8, 3, padding=1), mx.gluon.nn.BatchNorm(), mx.gluon.nn.Activation('relu'),
              mx.gluon.nn.Conv2D(4, 1))
    small.initialize(mx.init.Xavier())
    rng = np.random.default_rng(2)
    calib = [mx.nd.array(rng.standard_normal((2, 3, 16, 16)).astype('float32')) for _ in range(3)]
    naive = deploy.quantize(small, calib, calib_mode='naive')
    entropy = deploy.quantize(small, calib, calib_mode='entropy')
    assert entropy.meta['calib_mode'] == 'entropy'

    def ranges(block):
        return [n['attrs']['max_calib_range'] for n in json.loads(block.symbol.tojson())['nodes']
                if 'max_calib_range' in n.get('attrs', {})]
    assert ranges(naive) and ranges(entropy) != ranges(naive)   # KL clips the min/max thresholds
    x = mx.nd.array(rng.standard_normal((1, 3, 20, 12)).astype('float32'))
    ours, fp32 = entropy(x)[0].asnumpy(), small(x).asnumpy()
    assert np.abs(ours - fp32).mean() < 0.05 * np.abs(fp32).mean()   # clipped outliers, small mean error
    assert (ours.argmax(1) == fp32.argmax(1)).mean() > 0.9


def test_bf16_close_to_fp32(net, inputs):
    bf16 = deploy.to_bf16(net)
    assert 'amp_cast' in _graph_ops(bf16)
    for x in inputs:
        assert _rel(bf16(x)[0].asnumpy(), net(x)[0].asnumpy()) < 0.05


@pytest.mark.parametrize('precision', ['fused', 'bf16', 'int8'])
def test_saved_forms_load_back(net, calib, inputs, int8, precision, tmp_path):
    block = int8 if precision == 'int8' else deploy.convert(net, precision)
    prefix = deploy.save(block, str(tmp_path / precision))
    loaded = deploy.load(prefix)
    assert loaded.precision == precision and _graph_ops(loaded) == _graph_ops(block)
    gluoncv_style = mx.gluon.SymbolBlock.imports(f'{prefix}-symbol.json', ['data'], f'{prefix}-0000.params')
    for x in reversed(inputs):
        expected = block(x)[0].asnumpy()
        np.testing.assert_allclose(loaded(x)[0].asnumpy(), expected, rtol=0, atol=1e-6 * np.abs(expected).max())
        if precision != 'bf16':   # imports() strips nothing, but GluonCV's route has no bf16 casts to keep
            np.testing.assert_allclose(gluoncv_style(x).asnumpy(), expected, rtol=0,
                                       atol=1e-6 * np.abs(expected).max())


def test_calibration_batches_from_a_loader_with_labels():
    images = [mx.nd.ones((3, 8, 8)) * i for i in range(3)]
    loader = [(images[:2], ['mask', 'mask']), (images[2:], ['mask'])]
    batches = deploy.calibration_batches(loader)
    assert [b.shape for b in batches] == [(2, 3, 8, 8), (1, 3, 8, 8)]
    assert len(deploy.calibration_batches(loader, num_calib_batches=1)) == 1


def test_errors(net, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match='empty'):
        deploy.quantize(net, [])
    with pytest.raises(ValueError, match='several sizes'):
        deploy.calibration_batches([mx.nd.zeros((1, 3, 8, 8)), mx.nd.zeros((1, 3, 8, 16))])
    with pytest.raises(ValueError, match='calib_mode'):
        deploy.quantize(net, [mx.nd.zeros((1, 3, 8, 8))], calib_mode='minmax')
    with pytest.raises(ValueError, match='uint8'):
        deploy.quantize(net, [mx.nd.zeros((1, 3, 8, 8))], quantized_dtype='uint8')
    with pytest.raises(ValueError, match='calibration data'):
        deploy.convert(net, 'int8')
    with pytest.raises(ValueError, match='unknown precision'):
        deploy.convert(net, 'fp16')
    with pytest.raises(FileNotFoundError, match='symbol.json'):
        deploy.load(str(tmp_path / 'nothing'))
    monkeypatch.setattr(deploy, '_cpu_flags', lambda: {'sse2'})
    with pytest.raises(RuntimeError, match='avx512_bf16'):
        deploy.to_bf16(net)

    class NoOneDNN:
        def is_enabled(self, name):
            return False

    monkeypatch.setattr(mx.runtime, 'Features', NoOneDNN)
    with pytest.raises(RuntimeError, match='oneDNN'):
        deploy.fuse(net)


@pytest.fixture(scope='module')
def voc(sample_data, tmp_path_factory, net):
    """Four real VOC photographs to calibrate on (train), two to evaluate (val), and the tiny net's weights."""
    root = make_voc_root(sample_data, tmp_path_factory.mktemp('voc'), num_train=4, num_val=2)
    weights = str(tmp_path_factory.mktemp('weights') / 'tiny.params')
    net.save_parameters(weights)
    return root, weights


@pytest.mark.slow
def test_test_script_int8_export_then_quantized(net, voc, tmp_path, capsys):
    script = load_script('test.py')
    root, weights = voc
    data = ['--dataset', 'pascal_voc', '--dataset-root', root, '--no-cuda', '--workers', '0', '--eval']
    model = ['--model', 'deeplab', '--backbone', 'resnet_tiny', '--aux', '--resume', weights]
    prefix = str(tmp_path / 'tiny-int8')
    calibrated = script.main(script.parse_args(
        data + model + ['--precision', 'int8', '--calib-mode', 'naive', '--num-calib-batches', '2', '--batch-size',
                        '2', '--crop-size', '48', '--export', prefix, '--out-dir', str(tmp_path / 'a')]))
    assert 'int8 (naive calibration on 4 images [3, 48, 48])' in capsys.readouterr().out
    reloaded = script.main(script.parse_args(data + ['--quantized', prefix, '--out-dir', str(tmp_path / 'b')]))
    assert calibrated['precision'] == reloaded['precision'] == 'int8' and reloaded['weights'] == prefix
    assert (calibrated['pixAcc'], calibrated['mIoU']) == (reloaded['pixAcc'], reloaded['mIoU'])
    assert reloaded['crop_size'] == net.crop_size != 48   # the network's own sizes travel with the saved graph
    with pytest.raises(SystemExit, match='--calib-split nosuch'):
        script.main(script.parse_args(data + model + ['--precision', 'int8', '--calib-split', 'nosuch',
                                                      '--out-dir', str(tmp_path / 'c')]))
    for wrong, message in ((['--precision', 'fp16'], 'invalid choice'), (['--quantized'], 'needs a PREFIX'),
                           (['--quantized', prefix, '--precision', 'int8'], 'keeps the precision')):
        with pytest.raises(SystemExit):
            script.parse_args(data + wrong)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args([a for a in data if a != '--no-cuda'] + ['--precision', 'bf16'])
    assert 'add --no-cuda' in capsys.readouterr().err


@pytest.mark.slow
def test_demo_precision(voc, tmp_path, sample_data):
    script = load_script(os.path.join('scripts', 'demo.py'))
    root, weights = voc
    image = os.path.join(sample_data, 'voc_mini', 'VOC2012', 'JPEGImages', '2007_000129.jpg')
    argv = [image, '--model', 'deeplab', '--backbone', 'resnet_tiny', '--aux', '--resume', weights, '--no-cuda']
    fp32 = script.main(script.parse_args(argv + ['--out', str(tmp_path / 'fp32')]))
    fused = script.main(script.parse_args(argv + ['--out', str(tmp_path / 'fused'), '--precision', 'fused']))
    assert fused['classes'] == pytest.approx(fp32['classes'], abs=1e-4)
    multi = ['--scales', '0.75', '1.0', '--flip', '--base-size', '120', '--crop-size', '96']   # windows + flips
    fp32 = script.main(script.parse_args(argv + multi + ['--out', str(tmp_path / 'ms32')]))
    fused = script.main(script.parse_args(argv + multi + ['--out', str(tmp_path / 'msf'), '--precision', 'fused']))
    assert fused['classes'] == pytest.approx(fp32['classes'], abs=1e-4)
