"""ONNX export: one dynamic file per zoo family runs in onnxruntime at three input sizes with MXNet's outputs;
the two segzoo converters (BilinearResize2D, AdaptiveAvgPooling2D) against MXNet on odd sizes."""
import os

import mxnet as mx
import numpy as np
import pytest

from helpers import load_script
from segzoo import deploy
from segzoo.model_zoo import get_segmentation_model

ort = pytest.importorskip('onnxruntime')
SHAPES = ((1, 3, 64, 64), (2, 3, 50, 77), (1, 3, 96, 40))


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def _within_range(actual, expected, fraction):
    """max |actual - expected| <= fraction of expected's range (the export target is 1e-3)."""
    span = float(expected.max() - expected.min())
    assert actual.shape == expected.shape
    assert float(np.abs(actual - expected).max()) <= fraction * span


@pytest.mark.parametrize('method', ['fcn', 'psp', 'deeplab', 'deeplabplus'])
@pytest.mark.slow
def test_zoo_family_runs_at_any_size(method, tmp_path):
    mx.random.seed(5)
    net = get_segmentation_model(method, backbone='resnet_tiny', aux=True, pretrained_base=False)
    path = deploy.export_onnx(net, str(tmp_path / f'{method}.onnx'), input_shape=(1, 3, 64, 64))
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == ['data'] and len(session.get_outputs()) == 1
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        x = rng.standard_normal(shape).astype('float32')
        _within_range(session.run(None, {'data': x})[0], net(mx.nd.array(x))[0].asnumpy(), 1e-3)


@pytest.mark.parametrize('align_corners', [True, False])
@pytest.mark.parametrize('mode', ['like', 'size'])
def test_resize_converter(mode, align_corners, tmp_path):
    data = mx.sym.var('data')
    if mode == 'like':
        sym = mx.sym.contrib.BilinearResize2D(data, mx.sym.zeros_like(mx.sym.slice_axis(data, axis=3, begin=0, end=5)),
                                              mode='like', align_corners=align_corners)
    else:
        sym = mx.sym.contrib.BilinearResize2D(data, height=13, width=4, align_corners=align_corners)
    block = mx.gluon.SymbolBlock(sym, data)
    path = deploy.export_onnx(block, str(tmp_path / 'resize.onnx'), input_shape=(1, 2, 7, 9))
    session = _session(path)
    for shape in ((1, 2, 7, 9), (2, 2, 5, 11)):
        x = np.random.default_rng(1).standard_normal(shape).astype('float32')
        _within_range(session.run(None, {'data': x})[0], block(mx.nd.array(x)).asnumpy(), 1e-5)


def test_adaptive_pooling_converter(tmp_path):
    data = mx.sym.var('data')
    pools = [mx.sym.contrib.AdaptiveAvgPooling2D(data, output_size=size) for size in (1, 2, 3, 6, (2, 5))]
    sym = mx.sym.concat(*[mx.sym.flatten(p) for p in pools], dim=1)
    block = mx.gluon.SymbolBlock(sym, data)
    path = deploy.export_onnx(block, str(tmp_path / 'pool.onnx'), input_shape=(1, 2, 13, 7))
    session = _session(path)
    for shape in ((1, 2, 13, 7), (2, 2, 6, 17), (1, 2, 31, 9)):
        x = np.random.default_rng(2).standard_normal(shape).astype('float32')
        _within_range(session.run(None, {'data': x})[0], block(mx.nd.array(x)).asnumpy(), 1e-5)


def test_stock_converters_are_restored(tmp_path):
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
    before = {v: dict(t) for v, t in MXNetGraph.registry_.items()}
    data = mx.sym.var('data')
    block = mx.gluon.SymbolBlock(mx.sym.contrib.AdaptiveAvgPooling2D(data, output_size=2), data)
    deploy.export_onnx(block, str(tmp_path / 'p.onnx'), input_shape=(1, 1, 4, 4))
    assert {v: dict(t) for v, t in MXNetGraph.registry_.items()} == before


def test_refusals(monkeypatch, tmp_path):
    data = mx.sym.var('data')
    odd = mx.sym.contrib.BilinearResize2D(data, scale_height=0.5, scale_width=0.5, mode='odd_scale')
    odd = mx.gluon.SymbolBlock(odd, data)
    with pytest.raises(NotImplementedError, match="mode 'odd_scale'"):
        deploy.export_onnx(odd, str(tmp_path / 'odd.onnx'), input_shape=(1, 1, 4, 4))
    int8 = deploy.DeployedNet(data * 2, {}, {}, precision='int8')
    with pytest.raises(ValueError, match='int8 graph has no ONNX form'):
        deploy.export_onnx(int8, str(tmp_path / 'int8.onnx'))
    import onnx
    monkeypatch.delattr(onnx, 'mapping')
    from segzoo.deploy.onnx_export import check_onnx
    with pytest.raises(ImportError, match='onnx>=1.14,<1.19'):
        check_onnx()


@pytest.mark.slow
def test_export_script_checks_the_file(tmp_path, capsys):
    script = load_script(os.path.join('scripts', 'export_onnx.py'))
    net = get_segmentation_model('psp', backbone='resnet_tiny', pretrained_base=False)
    weights = str(tmp_path / 'psp.params')
    net.save_parameters(weights)
    out = str(tmp_path / 'psp.onnx')
    flags = ['--model', 'psp', '--backbone', 'resnet_tiny', '--dataset', 'pascal_voc', '--out', out]
    result = script.main(script.parse_args(flags + ['--resume', weights, '--check-sizes', '48', '40x56']))
    assert 'onnxruntime agrees with MXNet at 2 sizes' in capsys.readouterr().out
    assert result['path'] == out and max(err for _, err in result['errors']) <= script.TOLERANCE
    x = np.random.default_rng(3).standard_normal((1, 3, 40, 56)).astype('float32')
    _within_range(_session(out).run(None, {'data': x})[0], net(mx.nd.array(x))[0].asnumpy(), 1e-3)
    with pytest.raises(SystemExit):
        script.parse_args(flags)
    assert 'no weights' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(flags + ['--resume', weights, '--check-sizes', '4x'])
    assert '--check-sizes' in capsys.readouterr().err
