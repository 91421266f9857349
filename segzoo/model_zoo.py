"""Model zoo: GluonCV's ResNet FCN / PSPNet / DeepLabV3 names, and Composer's DeepLabV3(+) -> networks.

``get_model(name)`` builds the network (``segzoo.models.get_segmentor``) and sets its weights
(``segzoo.models.weights.load_weights``): GluonCV's published file (``pretrained=True``, downloaded and verified
by ``segzoo.model_store``), a ``.params`` file (``pretrained=PATH``) with GluonCV's structural keys, or else the
backbone's ImageNet weights and the family's initialisation.
"""
import os

import mxnet as mx
from mxnet.gluon import nn

from .data import NUM_CLASS as NUM_CLASSES
from .model_store import get_model_file, has_pretrained
from .models import check_method, family, get_segmentor
from .models.weights import imagenet_source, load_weights

# None: $MXNET_HOME/models when MXNET_HOME is set, else ~/.mxnet/models (segzoo.model_store.default_root)
DEFAULT_ROOT = None
# dataset -> the short name used in zoo names (GluonCV's acronyms)
DATASET_ACRONYMS = {'pascal_voc': 'voc', 'pascal_aug': 'voc', 'coco': 'coco', 'ade20k': 'ade', 'citys': 'citys'}

# name -> (method, backbone, dataset); whether GluonCV published weights is segzoo.model_store's business.
# The deeplabplus / deeplabv3_composer names are Composer's composer_deeplabv3 (use_plus True / False) on
# torchvision's ResNet layout ('*_v1b'); nobody published weights for them.
_ZOO = {
    'fcn_resnet50_voc': ('fcn', 'resnet50', 'pascal_voc'),
    'fcn_resnet101_voc': ('fcn', 'resnet101', 'pascal_voc'),
    'fcn_resnet101_coco': ('fcn', 'resnet101', 'coco'),
    'fcn_resnet50_ade': ('fcn', 'resnet50', 'ade20k'),
    'fcn_resnet101_ade': ('fcn', 'resnet101', 'ade20k'),
    'psp_resnet101_coco': ('psp', 'resnet101', 'coco'),
    'psp_resnet101_voc': ('psp', 'resnet101', 'pascal_voc'),
    'psp_resnet50_ade': ('psp', 'resnet50', 'ade20k'),
    'psp_resnet101_ade': ('psp', 'resnet101', 'ade20k'),
    'psp_resnet101_citys': ('psp', 'resnet101', 'citys'),
    'deeplab_resnet101_coco': ('deeplab', 'resnet101', 'coco'),
    'deeplab_resnet101_voc': ('deeplab', 'resnet101', 'pascal_voc'),
    'deeplab_resnet152_coco': ('deeplab', 'resnet152', 'coco'),
    'deeplab_resnet152_voc': ('deeplab', 'resnet152', 'pascal_voc'),
    'deeplab_resnet50_ade': ('deeplab', 'resnet50', 'ade20k'),
    'deeplab_resnet101_ade': ('deeplab', 'resnet101', 'ade20k'),
    'deeplab_resnet50_citys': ('deeplab', 'resnet50', 'citys'),
    'deeplab_resnet101_citys': ('deeplab', 'resnet101', 'citys'),
    'deeplabplus_resnet50_ade': ('deeplabplus', 'resnet50_v1b', 'ade20k'),
    'deeplabplus_resnet101_ade': ('deeplabplus', 'resnet101_v1b', 'ade20k'),
    'deeplabplus_resnet101_voc': ('deeplabplus', 'resnet101_v1b', 'pascal_voc'),
    'deeplabv3_composer_resnet50_ade': ('deeplabv3_composer', 'resnet50_v1b', 'ade20k'),
    'deeplabv3_composer_resnet101_ade': ('deeplabv3_composer', 'resnet101_v1b', 'ade20k'),
}


def list_models():
    """Names accepted by ``get_model``, sorted."""
    return sorted(_ZOO)


def _zoo_entry(name):
    """(method, backbone, dataset) of zoo name `name`; ValueError listing the valid names otherwise."""
    if name not in _ZOO:
        raise ValueError(f'unknown model {name!r}; valid names:\n  ' + '\n  '.join(list_models()))
    return _ZOO[name]


def model_dataset(name):
    """The dataset whose classes zoo model `name` predicts, e.g. ``'psp_resnet101_ade'`` -> ``'ade20k'``."""
    return _zoo_entry(name)[2]


def get_model(name, pretrained=False, root=DEFAULT_ROOT, ctx=mx.cpu(), **kwargs):
    """Build the zoo network `name`, initialised on `ctx`.

    Parameters
    ----------
    name : str
        A name from ``list_models()``, e.g. 'deeplab_resnet101_coco'.
    pretrained : bool or str
        False: ImageNet backbone (``pretrained_base``) and randomly initialised heads. True: GluonCV's
        published weights for `name`, downloaded to `root` and sha1-verified. A path: load that ``.params``
        file (GluonCV's structural keys).
    root : str
        Model-file cache directory (``$MXNET_HOME`` handling is ``segzoo.model_store``'s).
    ctx : Context or list of Context
        Where the parameters live.
    **kwargs
        ``aux`` (default: True for GluonCV's names, like GluonCV's zoo; False for Composer's), ``pretrained_base``
        (see ``segzoo.models.weights.imagenet_source``), ``norm_layer``, ``norm_kwargs``, ``base_size``,
        ``crop_size``, ``num_classes`` (default: the dataset's; e.g. a folder dataset's classes.txt),
        ``reset_classes`` (load the weights but the classifiers, for another class count), ``initializers``
        (Composer's), and head arguments.

    Returns
    -------
    Segmentor
        ``net(x)`` maps ``(B, 3, H, W)`` to a tuple of ``(B, num_classes, H, W)`` logits.

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid names); ``pretrained=True`` for a name without published
        weights; a parameter file that does not match the network (``segzoo.models.weights.ClassCountError`` when
        it predicts another number of classes).
    """
    method, backbone, dataset = _zoo_entry(name)
    kwargs.setdefault('aux', family(method).zoo_aux)
    return _build(method, backbone, dataset, name, pretrained, root, ctx, **kwargs)


def get_segmentation_model(model, dataset='pascal_voc', backbone='resnet50', aux=False, pretrained=False,
                           pretrained_base=None, root=DEFAULT_ROOT, ctx=mx.cpu(), norm_layer=nn.BatchNorm,
                           norm_kwargs=None, **kwargs):
    """Build `model` ('fcn', 'psp', 'deeplab', 'deeplabplus') on `backbone` for `dataset`, initialised.

    Parameters
    ----------
    model : str
        Method name: a key of ``segzoo.models.HEADS``.
    dataset : str
        'pascal_voc', 'pascal_aug', 'coco', 'ade20k' or 'citys' (sets the number of classes).
    backbone : str
        A key of ``segzoo.models.BACKBONES``: 'resnet50', 'resnet101', 'resnet152' (GluonCV's deep stem),
        'resnet50_v1b', 'resnet101_v1b', 'resnet152_v1b' (torchvision's layout), 'resnet_tiny', 'resnet_tiny_v1b'.
    aux : bool
        Add the auxiliary FCN head on c3.
    pretrained : bool or str
        True: GluonCV's published weights of ``{model}_{backbone}_{acronym}``; a path: that file.
    pretrained_base : bool, str or None
        ImageNet backbone weights (``segzoo.models.weights.imagenet_source``); None means "when they exist and no
        weights are loaded" (so 'resnet_tiny' builds offline).
    root, ctx, norm_layer, norm_kwargs, **kwargs
        As for ``get_model``.

    Returns
    -------
    Segmentor
    """
    check_method(model, what='model')
    if dataset not in NUM_CLASSES and kwargs.get('num_classes') is None:   # folder: num_classes from classes.txt
        raise ValueError(f'unknown dataset {dataset!r}; valid datasets: {", ".join(sorted(NUM_CLASSES))}')
    name = f'{model}_{backbone}_{DATASET_ACRONYMS.get(dataset, dataset)}'
    return _build(model, backbone, dataset, name, pretrained, root, ctx, aux=aux,
                  pretrained_base=pretrained_base, norm_layer=norm_layer, norm_kwargs=norm_kwargs, **kwargs)


def _build(method, backbone, dataset, name, pretrained, root, ctx, pretrained_base=None, initializers=(),
           reset_classes=False, **kwargs):
    weights = _weights_file(name, pretrained, root)
    conventions = family(method)
    kwargs.setdefault('base_size', conventions.sizes[0])
    kwargs.setdefault('crop_size', conventions.sizes[1])
    num_classes = kwargs.pop('num_classes', None) or NUM_CLASSES[dataset]   # an explicit count wins (own data)
    net = get_segmentor(method, backbone, num_classes, **kwargs)
    backbone_weights = None if weights else imagenet_source(backbone, pretrained_base)
    return load_weights(net, ctx, weights=weights, backbone_weights=backbone_weights, root=root,
                        scheme=conventions.init, initializers=initializers, reset_classes=reset_classes)


def _weights_file(name, pretrained, root):
    """Path of the weights to load, or None."""
    if pretrained is False or pretrained is None:
        return None
    if pretrained is True:
        if not has_pretrained(name):
            published = ', '.join(sorted(key for key in _ZOO if has_pretrained(key)))
            raise ValueError(f'{name!r} has no published weights (GluonCV never released them), so '
                             f'pretrained=True cannot work; use pretrained=False or pretrained=PATH to a '
                             f'.params file. Names with published weights: {published}')
        return get_model_file(name, root=root)
    path = os.path.expanduser(str(pretrained))
    if not os.path.isfile(path):
        raise FileNotFoundError(f'pretrained={pretrained!r}: no such parameter file')
    return path
