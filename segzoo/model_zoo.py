"""Model zoo: GluonCV's ResNet FCN / PSPNet / DeepLabV3 names (and segzoo's DeepLabV3+ names) -> networks.

``get_model(name)`` builds the network, initialises it and optionally loads weights: GluonCV's published
file (``pretrained=True``, downloaded and verified by ``segzoo.model_store``) or a ``.params`` file
(``pretrained=PATH``) with GluonCV's structural keys.
"""
import os

import mxnet as mx
from mxnet.gluon import nn

from .data import NUM_CLASS as NUM_CLASSES
from .model_store import get_model_file, has_pretrained
from .models import IMAGENET_WEIGHTS, METHODS, get_segmentor

# None: $MXNET_HOME/models when MXNET_HOME is set, else ~/.mxnet/models (segzoo.model_store.default_root)
DEFAULT_ROOT = None
# dataset -> the short name used in zoo names (GluonCV's acronyms)
DATASET_ACRONYMS = {'pascal_voc': 'voc', 'pascal_aug': 'voc', 'coco': 'coco', 'ade20k': 'ade', 'citys': 'citys'}

# name -> (method, backbone, dataset); whether GluonCV published weights is segzoo.model_store's business
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
    'deeplabplus_resnet50_ade': ('deeplabplus', 'resnet50', 'ade20k'),
    'deeplabplus_resnet101_ade': ('deeplabplus', 'resnet101', 'ade20k'),
    'deeplabplus_resnet101_voc': ('deeplabplus', 'resnet101', 'pascal_voc'),
}

# data sizes stored on the model (test.py defaults): GluonCV's 520/480; V3+ uses GluonCV's V3+ 576/512
_SIZES = {'deeplabplus': (576, 512)}
_DEFAULT_SIZES = (520, 480)


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
        ``aux`` (default True, like GluonCV's zoo), ``pretrained_base`` (default True unless weights are
        loaded), ``norm_layer``, ``norm_kwargs``, ``base_size``, ``crop_size``, and head arguments.

    Returns
    -------
    Segmentor
        ``net(x)`` maps ``(B, 3, H, W)`` to a tuple of ``(B, num_classes, H, W)`` logits.

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid names); ``pretrained=True`` for a name without published
        weights; a parameter file that does not match the network.
    """
    method, backbone, dataset = _zoo_entry(name)
    kwargs.setdefault('aux', True)
    return _build(method, backbone, dataset, name, pretrained, root, ctx, **kwargs)


def get_segmentation_model(model, dataset='pascal_voc', backbone='resnet50', aux=False, pretrained=False,
                           pretrained_base=None, root=DEFAULT_ROOT, ctx=mx.cpu(), norm_layer=nn.BatchNorm,
                           norm_kwargs=None, **kwargs):
    """Build `model` ('fcn', 'psp', 'deeplab', 'deeplabplus') on `backbone` for `dataset`, initialised.

    Parameters
    ----------
    model : str
        Method name.
    dataset : str
        'pascal_voc', 'pascal_aug', 'coco', 'ade20k' or 'citys' (sets the number of classes).
    backbone : str
        'resnet50', 'resnet101', 'resnet152' or 'resnet_tiny'.
    aux : bool
        Add the auxiliary FCN head on c3.
    pretrained : bool or str
        True: GluonCV's published weights of ``{model}_{backbone}_{acronym}``; a path: that file.
    pretrained_base : bool or None
        Load ImageNet backbone weights; None means "when they exist and no weights are loaded"
        (so 'resnet_tiny' builds offline).
    root, ctx, norm_layer, norm_kwargs, **kwargs
        As for ``get_model``.

    Returns
    -------
    Segmentor
    """
    if model not in METHODS:
        raise ValueError(f'unknown model {model!r}; valid models: {", ".join(METHODS)}')
    if dataset not in NUM_CLASSES:
        raise ValueError(f'unknown dataset {dataset!r}; valid datasets: {", ".join(sorted(NUM_CLASSES))}')
    name = f'{model}_{backbone}_{DATASET_ACRONYMS[dataset]}'
    return _build(model, backbone, dataset, name, pretrained, root, ctx, aux=aux,
                  pretrained_base=pretrained_base, norm_layer=norm_layer, norm_kwargs=norm_kwargs, **kwargs)


def _build(method, backbone, dataset, name, pretrained, root, ctx, pretrained_base=None, **kwargs):
    weights = _weights_file(name, pretrained, root)
    if pretrained_base is None:
        pretrained_base = weights is None and backbone in IMAGENET_WEIGHTS
    elif weights is not None:
        pretrained_base = False  # the backbone is overwritten by the weights anyway
    base_size, crop_size = _SIZES.get(method, _DEFAULT_SIZES)
    kwargs.setdefault('base_size', base_size)
    kwargs.setdefault('crop_size', crop_size)
    net = get_segmentor(method, backbone, NUM_CLASSES[dataset], pretrained_base=pretrained_base, root=root,
                        **kwargs)
    ctx_list = ctx if isinstance(ctx, (list, tuple)) else [ctx]
    if weights is None:
        _initialize(net, ctx_list)
    else:
        net.load_parameters(weights, ctx=ctx_list)
    return net


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


def _initialize(net, ctx_list):
    """Initialise the parameters that are not loaded yet and place all of them on `ctx_list`.

    Heads get Gluon's default Uniform(0.07), as GluonCV's heads do; a randomly initialised backbone gets
    He (MSRA) initialisation, suited to its ReLUs.
    """
    parts = [(net.backbone, mx.init.MSRAPrelu()), (net.head, mx.init.Uniform())]
    if net.aux_head is not None:
        parts.append((net.aux_head, mx.init.Uniform()))
    for block, init in parts:
        for param in block.collect_params().values():
            if param._data is None:  # not loaded (a pretrained backbone already is)
                param.initialize(ctx=ctx_list, default_init=init)
    net.collect_params().reset_ctx(ctx_list)
