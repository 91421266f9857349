"""GluonCV is the oracle: its saved files load into segzoo by name and give GluonCV's outputs, and back."""
import mxnet as mx
import numpy as np
import pytest

from segzoo.model_zoo import get_model
from segzoo.models import get_backbone, load_backbone_params

gluoncv_zoo = pytest.importorskip('gluoncv.model_zoo')

CROP = 64
OTHER_SIZE = 80
# zoo name -> (GluonCV constructor, dataset, backbone)
CASES = {
    'fcn_resnet101_voc': ('get_fcn', 'pascal_voc', 'resnet101'),
    'psp_resnet101_voc': ('get_psp', 'pascal_voc', 'resnet101'),
    'deeplab_resnet101_coco': ('get_deeplab', 'coco', 'resnet101'),
    'deeplab_resnet50_ade': ('get_deeplab', 'ade20k', 'resnet50'),
}


def _gluoncv_net(name, crop_size):
    constructor, dataset, backbone = CASES[name]
    return getattr(gluoncv_zoo, constructor)(dataset=dataset, backbone=backbone, pretrained=False,
                                             pretrained_base=False, crop_size=crop_size, aux=True)


def _randomize(net, seed, size):
    """Random weights everywhere, including BN statistics far from their (0, 1) defaults."""
    mx.random.seed(seed)
    rng = np.random.RandomState(seed)
    for param in net.collect_params().values():
        if param._data is None and not param._deferred_init:
            param.initialize(default_init=mx.init.MSRAPrelu())
    net(mx.nd.zeros((1, 3, size, size)))  # GluonCV's backbone convs infer their input channels
    for name, param in net.collect_params().items():
        shape = param.shape
        if name.endswith('running_mean') or name.endswith('beta') or name.endswith('bias'):
            param.set_data(mx.nd.array(rng.uniform(-0.2, 0.2, shape)))
        elif name.endswith('running_var') or name.endswith('gamma'):
            param.set_data(mx.nd.array(rng.uniform(0.5, 1.5, shape)))


def _assert_close(ours, theirs):
    ours, theirs = ours.asnumpy(), theirs.asnumpy()
    assert ours.shape == theirs.shape
    scale = float(theirs.max() - theirs.min())
    assert scale > 0
    assert np.abs(ours - theirs).max() <= 1e-4 * scale


@pytest.mark.parametrize('seed, name', list(enumerate(sorted(CASES))))
@pytest.mark.slow
def test_gluoncv_file_reproduces_gluoncv_outputs(seed, name, tmp_path):
    theirs = _gluoncv_net(name, CROP)
    _randomize(theirs, seed, CROP)
    gluoncv_file = str(tmp_path / f'{name}.params')
    theirs.save_parameters(gluoncv_file)

    ours = get_model(name, pretrained=gluoncv_file)
    ours.hybridize()
    x = mx.nd.random.uniform(-1, 1, shape=(1, 3, CROP, CROP))
    expected, got = theirs(x), ours(x)
    assert len(got) == len(expected) == 2  # main and aux
    for mine, reference in zip(got, expected):
        _assert_close(mine, reference)
    del theirs

    # ours saved -> GluonCV (built for another size, as it must be) loads it; the same hybridized
    # network of ours agrees at that size too
    our_file = str(tmp_path / 'ours.params')
    ours.save_parameters(our_file)
    reloaded = _gluoncv_net(name, OTHER_SIZE)
    reloaded.load_parameters(our_file)
    x = mx.nd.random.uniform(-1, 1, shape=(1, 3, OTHER_SIZE, OTHER_SIZE))
    for mine, reference in zip(ours(x), reloaded(x)):
        _assert_close(mine, reference)


@pytest.mark.slow
def test_gluoncv_imagenet_backbone_file_loads(tmp_path):
    """A GluonCV ImageNet ResNet-50-v1s file (with its fc classifier) loads into our dilated backbone."""
    imagenet = gluoncv_zoo.resnet50_v1s(pretrained=False, dilated=True)
    _randomize(imagenet, seed=7, size=32)
    path = str(tmp_path / 'resnet50_v1s.params')
    imagenet.save_parameters(path)
    assert any(key.startswith('fc.') for key in mx.nd.load(path))

    backbone = get_backbone('resnet50')
    load_backbone_params(backbone, path)
    x = mx.nd.random.uniform(-1, 1, shape=(1, 3, 48, 48))
    c4 = backbone(x)[3]
    stem = imagenet.maxpool(imagenet.relu(imagenet.bn1(imagenet.conv1(x))))
    expected = imagenet.layer4(imagenet.layer3(imagenet.layer2(imagenet.layer1(stem))))
    _assert_close(c4, expected)
