"""scripts/convert_torch_weights.py: torch files (no torch installed) into segzoo .params, loaded strictly."""
import importlib.util
import os

import mxnet as mx
import numpy as np
import pytest

from helpers import composer_synthetic_state_dict, write_torch_file
from segzoo.models import get_backbone

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, 'fixtures', 'composer')


@pytest.fixture(scope='module')
def script():
    path = os.path.join(os.path.dirname(HERE), 'scripts', 'convert_torch_weights.py')
    spec = importlib.util.spec_from_file_location('segzoo_script_convert_torch_weights', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torchvision_names(backbone):
    """torchvision's state_dict of the (uninitialised, shapes known) tiny backbone: BN gamma/beta -> weight/bias,
    plus the num_batches_tracked and fc.* entries that torchvision files carry and segzoo drops."""
    rng = np.random.default_rng(0)
    state = {}
    for key, param in backbone._collect_params_with_prefix().items():
        stem, _, leaf = key.rpartition('.')
        name = f'{stem}.{ {"gamma": "weight", "beta": "bias"}.get(leaf, leaf)}'
        state[name] = rng.standard_normal(param.shape).astype(np.float32)
        if leaf == 'running_var':
            state[name] = np.abs(state[name]) + 0.5
            state[f'{stem}.num_batches_tracked'] = np.array(7, dtype=np.int64)
    state['fc.weight'] = rng.standard_normal((10, 128)).astype(np.float32)
    state['fc.bias'] = np.zeros(10, np.float32)
    return state


def test_torchvision_backbone_file(script, tmp_path, capsys):
    state = _torchvision_names(get_backbone('resnet_tiny_v1b'))
    src, out = tmp_path / 'tiny.pth', tmp_path / 'tiny.params'
    write_torch_file(src, state)
    assert script.main([str(src), str(out), '--arch', 'resnet_tiny', '--head', 'none']) == 0
    assert 'backbone' in capsys.readouterr().out
    net = get_backbone('resnet_tiny_v1b')
    net.load_parameters(str(out), ctx=mx.cpu())
    loaded = {k: v.data().asnumpy() for k, v in net._collect_params_with_prefix().items()}
    assert 'conv1.weight' in loaded and 'bn1.gamma' in loaded
    for key, value in loaded.items():
        stem, _, leaf = key.rpartition('.')
        np.testing.assert_array_equal(value, state[f'{stem}.{ {"gamma": "weight", "beta": "bias"}.get(leaf, leaf)}'])


def test_wrong_files_fail_naming_keys(script, tmp_path, capsys):
    state = _torchvision_names(get_backbone('resnet_tiny_v1b'))
    state['layer9.0.conv1.weight'] = state.pop('layer1.0.conv1.weight')
    state['bn1.running_mean'] = np.zeros(3, np.float32)
    src, out = tmp_path / 'bad.pth', tmp_path / 'bad.params'
    write_torch_file(src, state)
    assert script.main([str(src), str(out), '--arch', 'resnet_tiny', '--head', 'none']) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '\n' not in err and str(src) in err
    assert 'layer9.0.conv1.weight' in err and 'layer1.0.conv1.weight' in err and 'bn1.running_mean' in err
    assert not out.exists()
    # a backbone file cannot fill a DeepLab head
    assert script.main([str(src), str(out), '--arch', 'resnet50', '--head', 'deeplabplus']) == 1
    assert '--head none' in capsys.readouterr().err
    # a real torch-written Composer checkpoint of another network
    ckpt = os.path.join(FIXTURES, 'torch_files', 'composer_checkpoint.pt')
    assert script.main([ckpt, str(out), '--arch', 'resnet_tiny']) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: ') and ckpt in err and 'conv1.weight' in err
    assert script.main([str(tmp_path / 'missing.pt'), str(out), '--arch', 'resnet50']) == 1
    assert 'missing.pt: no such file' in capsys.readouterr().err


def test_num_classes_checked_against_file(script, tmp_path, capsys):
    state = {'module.classifier.c1_bottleneck.conv.weight': np.zeros((48, 256, 1, 1), np.float32),
             'module.classifier.conv_seg.weight': np.zeros((4, 512, 1, 1), np.float32)}
    src = tmp_path / 'head.pt'
    write_torch_file(src, state, wrap=lambda t: {'state': {'model': t}, 'rng': []})
    assert script.file_head(state) == 'deeplabplus' and script.file_num_classes(state) == 4
    assert script.main([str(src), str(tmp_path / 'x.params'), '--arch', 'resnet50', '--num-classes', '5']) == 1
    assert '--num-classes 5 but' in capsys.readouterr().err


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_composer_checkpoint_converts_to_composer_logits(script, tmp_path):
    """R50 DeepLabV3+ with the oracle's synthetic weights: .pt -> .params -> the real Composer model's logits."""
    import segzoo
    state = composer_synthetic_state_dict(os.path.join(FIXTURES, 'keys_resnet50_plus.tsv'), 7)
    src, out = tmp_path / 'ep1-ba2-rank0.pt', tmp_path / 'r50plus.params'
    write_torch_file(src, {f'module.{k}': v for k, v in state.items()},
                     wrap=lambda t: {'state': {'model': t, 'optimizers': {}}, 'rng': []})
    del state
    assert script.main([str(src), str(out), '--arch', 'resnet50']) == 0  # head and 3 classes from the file
    os.remove(src)
    net = segzoo.composer_deeplabv3(3, backbone_arch='resnet50', use_plus=True, sync_bn=False)
    net.load_parameters(str(out), ctx=mx.cpu())
    with np.load(os.path.join(FIXTURES, 'forward.npz')) as ref:
        x, expected = ref['x'], ref['logits_resnet50_plus']
    got = net(mx.nd.array(x))[0].asnumpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.999
