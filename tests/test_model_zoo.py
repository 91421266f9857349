"""Model zoo: names, construction of every entry, kwargs, and the pretrained / pretrained_base paths."""
import gc
import hashlib

import mxnet as mx
import numpy as np
import pytest

from segzoo import model_zoo
from segzoo.data import NUM_CLASS
from segzoo.model_zoo import get_model, get_segmentation_model, list_models
from segzoo.models import get_backbone

GLUONCV_NAMES = [  # GluonCV 0.10.5 model_zoo/model_zoo.py: its ResNet FCN / PSP / DeepLab names
    'fcn_resnet50_voc', 'fcn_resnet101_voc', 'fcn_resnet101_coco', 'fcn_resnet50_ade', 'fcn_resnet101_ade',
    'psp_resnet101_coco', 'psp_resnet101_voc', 'psp_resnet50_ade', 'psp_resnet101_ade', 'psp_resnet101_citys',
    'deeplab_resnet101_coco', 'deeplab_resnet101_voc', 'deeplab_resnet152_coco', 'deeplab_resnet152_voc',
    'deeplab_resnet50_ade', 'deeplab_resnet101_ade', 'deeplab_resnet50_citys', 'deeplab_resnet101_citys']
PLUS_NAMES = ['deeplabplus_resnet50_ade', 'deeplabplus_resnet101_ade', 'deeplabplus_resnet101_voc',
              'deeplabv3_composer_resnet50_ade', 'deeplabv3_composer_resnet101_ade']  # Composer's networks
CLASSES = {'voc': 21, 'coco': 21, 'ade': 150, 'citys': 19}


@pytest.fixture(autouse=True)
def _free_networks():
    """Let each test's full-size networks finish and be collected before the next test builds more."""
    yield
    mx.nd.waitall()
    gc.collect()


def test_list_models_holds_exactly_the_names():
    assert list_models() == sorted(GLUONCV_NAMES + PLUS_NAMES)


def _one_name_per_network():
    """One zoo name per distinct (method, backbone): names that differ only in the dataset build the same network
    but for the class count, which test_every_name_predicts_its_datasets_classes checks for all of them."""
    chosen = {}
    for name in sorted(GLUONCV_NAMES + PLUS_NAMES):
        method, backbone, _ = model_zoo._zoo_entry(name)
        chosen.setdefault((method, backbone), name)
    return sorted(chosen.values())


def test_every_name_predicts_its_datasets_classes():
    for name in GLUONCV_NAMES + PLUS_NAMES:
        method, backbone, dataset = model_zoo._zoo_entry(name)
        assert name.startswith(f'{method}_{backbone.replace("_v1b", "")}_')
        assert NUM_CLASS[dataset] == CLASSES[name.rsplit('_', 1)[1]]


@pytest.mark.parametrize('name', _one_name_per_network())
@pytest.mark.slow
def test_every_network_builds_and_runs(name):
    net = get_model(name, pretrained_base=False)
    num_classes = CLASSES[name.rsplit('_', 1)[1]]
    # GluonCV's zoo networks carry the aux head; Composer's have none
    assert net.num_classes == num_classes and net.aux == (name in GLUONCV_NAMES)
    outputs = net(mx.nd.random.uniform(shape=(1, 3, 32, 32)))
    assert [o.shape for o in outputs] == [(1, num_classes, 32, 32)] * (2 if net.aux else 1)
    assert all(np.isfinite(o.asnumpy()).all() for o in outputs)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as error:
        get_model('deeplab_resnet18_voc')
    assert 'deeplab_resnet18_voc' in str(error.value) and 'deeplab_resnet101_coco' in str(error.value)


@pytest.mark.parametrize('name', ['fcn_resnet50_voc'] + PLUS_NAMES)
def test_pretrained_true_without_published_weights_says_so(name):
    with pytest.raises(ValueError, match='no published weights'):
        get_model(name, pretrained=True)


def test_missing_pretrained_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere.params'):
        get_segmentation_model('fcn', backbone='resnet_tiny', pretrained=str(tmp_path / 'nowhere.params'))


def test_segmentation_model_on_tiny_backbone_and_kwargs():
    net = get_segmentation_model(model='deeplab', backbone='resnet_tiny', dataset='pascal_voc')
    assert not net.aux and (net.base_size, net.crop_size) == (520, 480)
    assert [o.shape for o in net(mx.nd.zeros((1, 3, 33, 33)))] == [(1, 21, 33, 33)]

    net = get_segmentation_model('psp', dataset='ade20k', backbone='resnet_tiny', aux=True, base_size=72,
                                 crop_size=64, ctx=[mx.cpu(0), mx.cpu(1)])
    assert (net.num_classes, net.base_size, net.crop_size) == (150, 72, 64)
    assert set(net.head.block[0].weight.list_ctx()) == {mx.cpu(0), mx.cpu(1)}

    with pytest.raises(ValueError, match='no ImageNet weights'):
        get_segmentation_model('fcn', backbone='resnet_tiny', pretrained_base=True)
    with pytest.raises(ValueError, match='valid datasets'):
        get_segmentation_model('fcn', dataset='voc', backbone='resnet_tiny')
    with pytest.raises(ValueError, match='valid models'):
        get_segmentation_model('unet', backbone='resnet_tiny')


@pytest.fixture
def published_files(monkeypatch, tmp_path):
    """Make files "published": register their sha1 in segzoo.model_store and place them in a cache root.

    The real ``get_model_file`` then finds a verified cached file and must not touch the network
    (MXNET_GLUON_REPO points at a closed port to prove it).
    """
    from segzoo import model_store
    root = tmp_path / 'models'
    root.mkdir()
    monkeypatch.setenv('MXNET_GLUON_REPO', 'http://127.0.0.1:9/')

    def publish(name, save):
        staging = tmp_path / f'{name}.staging'
        save(str(staging))
        sha1 = hashlib.sha1(staging.read_bytes()).hexdigest()
        monkeypatch.setitem(model_store.MODEL_SHA1, name, sha1)
        staging.rename(root / f'{name}-{sha1[:8]}.params')

    return str(root), publish


@pytest.mark.slow
def test_pretrained_true_loads_the_store_file_without_imagenet_download(published_files):
    root, publish = published_files
    source = get_model('deeplab_resnet50_ade', pretrained_base=False)
    publish('deeplab_resnet50_ade', source.save_parameters)

    # resnet50_v1s is not in the cache: building must not ask for it (the weights replace the backbone)
    net = get_model('deeplab_resnet50_ade', pretrained=True, root=root)
    x = mx.nd.random.uniform(shape=(1, 3, 32, 32))
    np.testing.assert_array_equal(net(x)[0].asnumpy(), source(x)[0].asnumpy())

    no_aux = get_model('deeplab_resnet50_ade', pretrained=True, root=root, aux=False)
    assert len(no_aux(x)) == 1  # the file's auxlayer keys are ignored


def _imagenet_classifier(backbone):
    """A random `backbone` and the arrays of a GluonCV ImageNet file for it (backbone keys + its ``fc``)."""
    imagenet = get_backbone(backbone)
    imagenet.initialize(mx.init.Xavier())
    arrays = {key: param.data() for key, param in imagenet._collect_params_with_prefix().items()}
    arrays.update({'fc.weight': mx.nd.zeros((1000, 2048)), 'fc.bias': mx.nd.zeros((1000,))})
    return imagenet, arrays


@pytest.mark.slow
def test_pretrained_base_loads_gluoncv_imagenet_file(published_files):
    root, publish = published_files
    imagenet, arrays = _imagenet_classifier('resnet50')
    publish('resnet50_v1s', lambda path: mx.nd.save(path, arrays))

    net = get_segmentation_model('fcn', backbone='resnet50', pretrained_base=True, root=root)
    np.testing.assert_array_equal(net.backbone.layer4[2].conv3.weight.data().asnumpy(),
                                  imagenet.layer4[2].conv3.weight.data().asnumpy())

    del arrays['layer1.0.bn1.gamma']
    publish('resnet50_v1s', lambda path: mx.nd.save(path, arrays))
    with pytest.raises(ValueError, match=r'missing from the file: layer1\.0\.bn1\.gamma'):
        get_segmentation_model('fcn', backbone='resnet50', pretrained_base=True, root=root)


@pytest.mark.slow
def test_composer_names_start_from_gluoncv_v1b_imagenet_file(published_files):
    """Composer's zoo networks use torchvision's layout, whose GluonCV ImageNet file is resnet50_v1b."""
    root, publish = published_files
    imagenet, arrays = _imagenet_classifier('resnet50_v1b')
    publish('resnet50_v1b', lambda path: mx.nd.save(path, arrays))
    net = get_model('deeplabplus_resnet50_ade', root=root)
    assert not net.aux and (net.base_size, net.crop_size) == (512, 512)
    np.testing.assert_array_equal(net.backbone.conv1.weight.data().asnumpy(), imagenet.conv1.weight.data().asnumpy())


def test_published_weights_fine_tune_to_other_classes(published_files):
    """reset_classes=True loads a published file into a network for another class count, all but the classifiers;
    without it the mismatch is a ClassCountError naming both counts."""
    from segzoo.models.weights import ClassCountError

    root, publish = published_files
    source = get_model('fcn_resnet50_ade', pretrained_base=False)
    publish('fcn_resnet50_ade', source.save_parameters)
    with pytest.raises(ClassCountError, match='150 classes, the network 3'):
        get_model('fcn_resnet50_ade', pretrained=True, root=root, num_classes=3)
    net = get_model('fcn_resnet50_ade', pretrained=True, root=root, num_classes=3, reset_classes=True)
    assert net.classifier_keys() == ['auxlayer.block.4.bias', 'auxlayer.block.4.weight', 'head.block.4.bias',
                                     'head.block.4.weight']
    assert net.head.block[4].weight.shape == (3, 512, 1, 1)
    np.testing.assert_array_equal(net.head.block[0].weight.data().asnumpy(),
                                  source.head.block[0].weight.data().asnumpy())
    np.testing.assert_array_equal(net.backbone.layer4[2].conv3.weight.data().asnumpy(),
                                  source.backbone.layer4[2].conv3.weight.data().asnumpy())
