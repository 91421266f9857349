"""Composer's DeepLabV3(+) against the real Composer 0.17.2 (fixtures from tests/fixtures/composer/make_fixtures.py,
made with the oracle in ../shared/tools/composer_oracle.py): logits, loss, metric and one SGD step, without torch."""
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

import segzoo
from segzoo.loss import MixSoftmaxCrossEntropyLoss
from segzoo.models import get_segmentor
from segzoo.models.torch_weights import load_torch_state_dict, segzoo_key
from segzoo.models.weights import load_weights
from segzoo.optimizer import make_optimizer
from segzoo.utils.metrics import SegmentationMetric

from helpers import composer_synthetic_state_dict

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'composer')
SEED = 7  # the fixtures' --synthetic-weights seed
MODELS = {  # fixture name -> (backbone_arch, use_plus, num_classes)
    'resnet50_plus': ('resnet50', True, 3), 'resnet50_v3': ('resnet50', False, 3),
    'resnet101_plus': ('resnet101', True, 5), 'resnet101_v3': ('resnet101', False, 5),
}


def _fixture(name):
    return np.load(os.path.join(FIXTURES, name))


def _state_dict(model):
    return composer_synthetic_state_dict(os.path.join(FIXTURES, f'keys_{model}.tsv'), SEED)


def _composer_structure(arch, use_plus, num_classes):
    """Structure only (no random init: every parameter comes from the state_dict)."""
    method = 'deeplabplus' if use_plus else 'deeplabv3_composer'
    return get_segmentor(method, f'{arch}_v1b', num_classes)


@pytest.mark.parametrize('model', sorted(MODELS))
@pytest.mark.slow
def test_logits_equal_composer_on_the_same_weights(model):
    arch, use_plus, num_classes = MODELS[model]
    net = load_torch_state_dict(_composer_structure(arch, use_plus, num_classes), _state_dict(model))
    data = _fixture('forward.npz')
    expected = data[f'logits_{model}']
    (logits,) = net(mx.nd.array(data['x']))
    got = logits.asnumpy()
    assert got.shape == expected.shape == (2, num_classes, 65, 77)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() <= 1e-4 * scale
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.999


def test_composer_deeplabv3_signature_defaults_and_loss():
    net = segzoo.composer_deeplabv3(4, backbone_arch='resnet50', use_plus=False, dice_weight=0.5,
                                    cross_entropy_weight=0.25, ignore_index=-1)
    assert net.aux_head is None and net.align_corners is False
    assert type(net.head).__name__ == 'ASPPHead'
    assert (net.loss.cross_entropy_weight, net.loss.dice_weight, net.loss.aux) == (0.25, 0.5, False)
    (logits,) = net(mx.nd.zeros((1, 3, 33, 41)))
    assert logits.shape == (1, 4, 33, 41)
    with pytest.raises(ValueError, match='backbone_weights'):
        segzoo.composer_deeplabv3(4, backbone_weights='IMAGENET1K_V3')
    with pytest.raises(ValueError, match='backbone_arch'):
        segzoo.composer_deeplabv3(4, backbone_arch='resnet18')


@pytest.mark.slow
def test_sync_bn_over_several_devices():
    net = segzoo.composer_deeplabv3(3, backbone_arch='resnet50', ctx=[mx.cpu(0), mx.cpu(1)])
    assert type(net.backbone.bn1).__name__ == 'SyncBatchNorm'
    assert set(net.head.conv_seg.weight.list_ctx()) == {mx.cpu(0), mx.cpu(1)}
    single = segzoo.composer_deeplabv3(3, backbone_arch='resnet50', sync_bn=True)
    assert type(single.backbone.bn1).__name__ == 'BatchNorm'  # Composer: SyncBN only when world_size > 1


@pytest.mark.slow
def test_initializers_follow_composer():
    mx.random.seed(0)
    width = 128  # a narrower head than Composer's 512 keeps this fast; the rules do not depend on it
    default = load_weights(get_segmentor('deeplabplus', 'resnet_tiny_v1b', 3, channels=width), mx.cpu(),
                           scheme='torch')
    kaiming = load_weights(get_segmentor('deeplabplus', 'resnet_tiny_v1b', 3, channels=width), mx.cpu(),
                           scheme='torch', initializers=('kaiming_normal', 'bn_ones'))
    # torchvision / mmcv default: N(0, 2 / fan_out); Composer's kaiming_normal: torch's default mode, N(0, 2 / fan_in)
    project = (default.head.aspp.project[0].weight, kaiming.head.aspp.project[0].weight)  # (128, 640, 3, 3)
    assert project[0].data().asnumpy().std() == pytest.approx(np.sqrt(2 / (width * 9)), rel=0.01)
    assert project[1].data().asnumpy().std() == pytest.approx(np.sqrt(2 / (5 * width * 9)), rel=0.01)
    # the classifier keeps torch's Conv2d default, U(+-1/sqrt(fan_in)), on weight and bias
    bound = 1 / np.sqrt(width)
    for param in (default.head.conv_seg.weight, default.head.conv_seg.bias):
        values = param.data().asnumpy()
        assert np.abs(values).max() <= bound and np.abs(values).max() > 0.5 * bound
    # kaiming_normal leaves biases as torch initialised them
    assert 0 < np.abs(kaiming.head.conv_seg.bias.data().asnumpy()).max() <= bound
    with pytest.raises(ValueError, match='unknown initializers'):
        load_weights(get_segmentor('deeplabplus', 'resnet_tiny_v1b', 3), mx.cpu(), initializers=('xavier',))


@pytest.mark.slow
def test_state_dict_errors_name_the_keys():
    state = _state_dict('resnet50_plus')
    net = _composer_structure('resnet50', True, 3)
    broken = {f'module.{k}': v for k, v in state.items() if k != 'classifier.conv_seg.bias'}
    broken['classifier.extra.weight'] = np.zeros((1,), np.float32)
    broken['module.backbone.conv1.weight'] = np.zeros((64, 3, 3, 3), np.float32)
    with pytest.raises(ValueError) as error:
        load_torch_state_dict(net, broken)
    message = str(error.value)
    assert 'classifier.extra.weight' in message                       # no place in the network
    assert 'head.conv_seg.bias' in message                            # not set by the state_dict
    assert 'backbone.conv1.weight' in message and '(64, 3, 3, 3)' in message   # shape mismatch
    assert net.head.conv_seg.weight._data is None                     # nothing loaded


@pytest.mark.slow
def test_torchvision_state_dict_loads_into_the_backbone():
    state = _state_dict('resnet50_plus')
    torchvision = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    torchvision['fc.weight'] = np.zeros((1000, 2048), np.float32)   # torchvision's classifier is dropped
    torchvision['fc.bias'] = np.zeros((1000,), np.float32)
    net = segzoo.composer_deeplabv3(3, backbone_arch='resnet50')
    load_torch_state_dict(net, torchvision)
    np.testing.assert_array_equal(net.backbone.bn1.gamma.data().asnumpy(), torchvision['bn1.weight'])
    np.testing.assert_array_equal(net.backbone.layer4[2].bn3.running_var.data().asnumpy(),
                                  torchvision['layer4.2.bn3.running_var'])
    with pytest.raises(ValueError, match='layer1.0.conv1.weight'):
        load_torch_state_dict(net.backbone, {k: v for k, v in torchvision.items() if k != 'layer1.0.conv1.weight'})


@pytest.mark.slow
def test_loss_and_metric_equal_composer():
    data = _fixture('loss.npz')
    logits, labels = mx.nd.array(data['logits']), mx.nd.array(data['labels'])
    loss = MixSoftmaxCrossEntropyLoss(aux=False, cross_entropy_weight=0.375, dice_weight=1.125)
    assert loss(logits, labels).sum().asscalar() == pytest.approx(float(data['total']), rel=1e-5)
    ce_only = MixSoftmaxCrossEntropyLoss(aux=False)
    assert ce_only(logits, labels).sum().asscalar() == pytest.approx(float(data['cross_entropy']), rel=1e-5)
    metric = SegmentationMetric(5, present_only=True)  # Composer's MIoU: classes with union 0 left out
    metric.update(data['labels'], data['logits'].argmax(1))
    assert 100 * metric.get()[1] == pytest.approx(float(data['miou_percent']), rel=1e-6)


def _step_param(net, torch_name):
    params = net._collect_params_with_prefix()
    key = segzoo_key(torch_name)
    if key not in params:
        key = key.rsplit('.', 1)[0] + {'weight': '.gamma', 'bias': '.beta'}[key.rsplit('.', 1)[1]]
    return params[key]


def _sliced(value, shape):
    return value[:shape[0], :shape[1]] if len(shape) == 4 and value.shape != shape else value


# elements per channel each fixture BN normalised over (batch 2, input 33x33): the stem at 17x17, layer4 at 5x5,
# the decoder at c1's 9x9, the image-pool branch at 1x1
BN_COUNTS = {'backbone.bn1': 2 * 17 * 17, 'backbone.layer4.2.bn3': 2 * 5 * 5,
             'classifier.sep_bottleneck.1.pointwise_conv.bn': 2 * 9 * 9, 'classifier.image_pool.1.bn': 2}


@pytest.mark.parametrize('optimizer', ['sgd', 'sgdw'])
@pytest.mark.slow
def test_one_train_step_equals_composer(optimizer):
    """One step with Composer's gradient normalisation (mean over the device's valid pixels; one device):
    train-mode BN, dropout off in both (as in the fixture), SGD(0.01, momentum 0.9, wd 5e-4) or SGDW(wd 2e-5).

    In float64 on both sides: in float32 the train-mode gradients of this random ResNet-50 differ from float64 by
    1-10 % in either framework (make_fixtures.py says why), which would hide a real difference."""
    data = _fixture('sgd_step.npz')
    net = load_torch_state_dict(_composer_structure('resnet50', True, 3), _state_dict('resnet50_plus'))
    net.head.dropout._rate = 0.0
    net.cast('float64')
    names = sorted(key[len('grad:'):] for key in data.files if key.startswith('grad:'))
    for name in names:
        before = _sliced(_step_param(net, name).data().asnumpy(), data[f'before:{name}'].shape)
        np.testing.assert_array_equal(before, data[f'before:{name}'])
    running_before = {bn: _step_param(net, f'{bn}.running_var').data().asnumpy().copy() for bn in BN_COUNTS}
    wd = {'sgd': 5e-4, 'sgdw': 2e-5}[optimizer]
    trainer = mx.gluon.Trainer(net.collect_params(), make_optimizer(optimizer, 0.01, momentum=0.9, wd=wd))
    x, labels = mx.nd.array(data['x'], dtype='float64'), mx.nd.array(data['labels'])
    with autograd.record():
        outputs = net(x)
        loss = MixSoftmaxCrossEntropyLoss(aux=False)(*outputs, labels).sum()
    loss.backward()
    assert loss.asscalar() == pytest.approx(float(data['loss']), rel=1e-6)
    np.testing.assert_allclose(outputs[0].asnumpy(), data['logits'], atol=1e-5 * np.abs(data['logits']).max())
    trainer.step(1)  # Composer's normalisation: the per-device mean loss, averaged over 1 device
    for name in names:
        grad = _sliced(_step_param(net, name).grad().asnumpy(), data[f'grad:{name}'].shape)
        expected_grad = data[f'grad:{name}']
        np.testing.assert_allclose(grad, expected_grad, atol=1e-5 * np.abs(expected_grad).max())
        after = _sliced(_step_param(net, name).data().asnumpy(), data[f'{optimizer}:{name}'].shape)
        # the update differs by at most lr x the gradient tolerance
        np.testing.assert_allclose(after, data[f'{optimizer}:{name}'], atol=0.01 * 1e-5 * np.abs(expected_grad).max())
    for bn, count in BN_COUNTS.items():
        np.testing.assert_allclose(_step_param(net, f'{bn}.running_mean').data().asnumpy(),
                                   data[f'after:{bn}.running_mean'], rtol=1e-5, atol=1e-7)
        # MXNet updates running_var with the biased batch variance, torch with the unbiased one (n / (n - 1))
        unbiased = (data[f'after:{bn}.running_var'] - 0.9 * running_before[bn]) / 0.1
        expected = 0.9 * running_before[bn] + 0.1 * unbiased * (count - 1) / count
        np.testing.assert_allclose(_step_param(net, f'{bn}.running_var').data().asnumpy(), expected, rtol=1e-5)


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_backbone_weights_imagenet1k_download_into_composer_model(monkeypatch, tmp_path):
    """backbone_weights='IMAGENET1K_V1': torchvision's file (here a synthetic stand-in served on 127.0.0.1 under a name
    carrying its SHA-256 prefix) is downloaded, verified, converted into the backbone; the head is initialised."""
    import hashlib

    from helpers import write_torch_file
    from http_server import LoopbackServer
    from segzoo import torch_io

    state = _state_dict('resnet50_plus')
    torchvision = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    torchvision.update({'fc.weight': np.zeros((1000, 2048), np.float32), 'fc.bias': np.zeros((1000,), np.float32)})
    staging = tmp_path / 'resnet50.pth'
    write_torch_file(str(staging), torchvision)
    payload = staging.read_bytes()
    name = f'resnet50-{hashlib.sha256(payload).hexdigest()[:8]}.pth'
    monkeypatch.setitem(torch_io.TORCHVISION_WEIGHTS, ('resnet50', 'IMAGENET1K_V1'), name)
    with LoopbackServer({f'/models/{name}': payload}) as server:
        monkeypatch.setenv('SEGZOO_TORCHVISION_REPO', server.url('/models'))
        net = segzoo.composer_deeplabv3(3, backbone_arch='resnet50', backbone_weights='IMAGENET1K_V1',
                                        initializers=('kaiming_normal', 'bn_ones'), root=str(tmp_path / 'cache'))
    np.testing.assert_array_equal(net.backbone.layer4[2].conv3.weight.data().asnumpy(),
                                  torchvision['layer4.2.conv3.weight'])
    np.testing.assert_array_equal(net.backbone.bn1.beta.data().asnumpy(), torchvision['bn1.bias'])
    # kaiming_normal reached the head only (Composer: initializers apply to the classifier with ImageNet weights)
    project = net.head.aspp.project[0].weight.data().asnumpy()
    assert project.std() == pytest.approx(np.sqrt(2 / (2560 * 9)), rel=0.01)
    with pytest.raises(ValueError, match='torchvision-layout backbone'):
        segzoo.get_segmentation_model('deeplab', backbone='resnet50', pretrained_base='IMAGENET1K_V1')


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize('recipe', ['typical', 'composer'])
def test_recipe_script_runs_scaled_down_on_ade20k(recipe, tmp_path, sample_data):
    """scripts/deeplabplus_resnet101_ade.sh exactly as published but for size: tiny torchvision-layout backbone, no
    ImageNet download, 64 px, 2 CPU devices with SyncBN, one step on the bundled ADE20K validation images."""
    import json
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, RECIPE=recipe, NGPUS='2', PATH=os.path.dirname(sys.executable) + os.pathsep
               + os.environ['PATH'])
    run_dir = tmp_path / 'run'
    args = ['--dataset-root', os.path.join(sample_data, 'ade_mini'), '--backbone', 'resnet_tiny_v1b',
            '--no-pretrained-base', '--no-cuda', '--base-size', '64', '--crop-size', '64', '--batch-size', '2',
            '--test-batch-size', '2', '--epochs', '1', '--workers', '0', '--train-split', 'val',
            '--save-dir', str(run_dir)]
    proc = subprocess.run(['bash', os.path.join(repo, 'scripts', 'deeplabplus_resnet101_ade.sh'), *args], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'mIoU(present classes, Composer)' in proc.stderr
    flags = json.load(open(run_dir / 'args.json'))
    expected = {'typical': dict(optimizer='sgd', weight_decay=5e-4, lr_scheduler='poly', alpha_f=0.01,
                                backbone_weights='IMAGENET1K_V1', epochs=1),
                'composer': dict(optimizer='sgdw', weight_decay=2e-5, lr_scheduler='cosine', alpha_f=0.0,
                                 backbone_weights='IMAGENET1K_V2', epochs=1)}[recipe]
    expected.update(model='deeplabplus', augment='composer', grad_norm='composer', lr_timing='composer',
                    head_lr_mult=1.0, initializers=['kaiming_normal', 'bn_ones'], syncbn=True, miou='present')
    assert {key: flags[key] for key in expected} == expected
    assert os.path.isfile(run_dir / 'checkpoint.params')


@pytest.mark.slow
def test_test_script_evaluates_with_composers_protocol(tmp_path, sample_data):
    """test.py --mode val --augment composer: image (bilinear) and label (nearest) resized to the crop size squared,
    then single-scale, as Composer evaluates ADE20K; --miou present is Composer's MIoU."""
    from helpers import load_script
    from segzoo.data import get_segmentation_dataset

    mx.random.seed(0)
    net = segzoo.get_segmentation_model('deeplabplus', dataset='ade20k', backbone='resnet_tiny_v1b')
    weights = str(tmp_path / 'tiny.params')
    net.save_parameters(weights)
    root = os.path.join(sample_data, 'ade_mini')
    script = load_script('test.py')
    result = script.main(script.parse_args(
        ['--model', 'deeplabplus', '--backbone', 'resnet_tiny_v1b', '--dataset', 'ade20k', '--dataset-root', root,
         '--resume', weights, '--mode', 'val', '--augment', 'composer', '--miou', 'present', '--crop-size', '48',
         '--no-cuda',
         '--workers', '0', '--out-dir', str(tmp_path / 'out')]))
    dataset = get_segmentation_dataset('ade20k', split='val', mode='val', root=root, transforms='composer',
                                       crop_size=48)
    metric = SegmentationMetric(150, present_only=True)
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert image.shape == (3, 48, 48) and label.shape == (48, 48)
        metric.update(label, net(mx.nd.array(image[None]))[0][0].argmax(axis=0).asnumpy().astype(np.int64))
    assert result['num_images'] == 3
    assert result['pixAcc'] == pytest.approx(metric.get()[0], abs=1e-12)
    assert result['mIoU'] == pytest.approx(metric.get()[1], abs=1e-12)
