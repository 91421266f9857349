"""Segmentation networks: dilated ResNet backbones, FCN / PSPNet / DeepLabV3 / DeepLabV3+ heads, and
``get_segmentor``, the one function that wires them into a ``Segmentor``."""

from mxnet.gluon import nn

from ..model_store import get_model_file

from .deeplabv3 import ASPP, DeepLabV3Head
from .deeplabv3_plus import ALIGN_CORNERS as _PLUS_ALIGN_CORNERS
from .deeplabv3_plus import DeepLabV3PlusHead
from .fcn import FCNHead
from .pspnet import PSPHead
from .resnet import BACKBONES, IMAGENET_WEIGHTS, ResNetV1s, get_backbone
from .segmentor import Segmentor, gluoncv_key, load_params_strict

__all__ = ['ASPP', 'BACKBONES', 'DeepLabV3Head', 'DeepLabV3PlusHead', 'FCNHead', 'METHODS', 'PSPHead',
           'ResNetV1s', 'Segmentor', 'get_backbone', 'get_segmentor', 'gluoncv_key', 'load_backbone_params',
           'load_params_strict']

METHODS = ('fcn', 'psp', 'deeplab', 'deeplabplus')


def _build_head(method, in_channels, num_classes, norm, head_kwargs):
    if method == 'fcn':
        return FCNHead(in_channels[3], num_classes, in_index=3, **norm, **head_kwargs)
    if method == 'psp':
        return PSPHead(in_channels[3], num_classes, **norm, **head_kwargs)
    if method == 'deeplab':
        return DeepLabV3Head(in_channels[3], num_classes, **norm, **head_kwargs)
    if method == 'deeplabplus':
        return DeepLabV3PlusHead(in_channels[3], in_channels[0], num_classes, **norm, **head_kwargs)
    raise ValueError(f'unknown method {method!r}; valid methods: {", ".join(METHODS)}')


def load_backbone_params(backbone, filename, ctx=None):
    """Load a GluonCV ImageNet ResNet file (``resnet101_v1s-*.params``) into `backbone`.

    The file's classifier (``fc.*``) is ignored; any other missing, extra or mis-shaped key raises.
    """
    params = backbone._collect_params_with_prefix()
    load_params_strict(params, filename, ctx=ctx, ignore_extra=lambda key: key.startswith('fc.'))


def get_segmentor(method, backbone, num_classes, aux=False, norm_layer=nn.BatchNorm, norm_kwargs=None,
                  pretrained_base=False, root=None, base_size=520,
                  crop_size=480, **head_kwargs):
    """Build a ``Segmentor``: dilated `backbone` + `method` head (+ FCN aux head on c3).

    Nothing is initialised except the backbone when `pretrained_base` loads ImageNet weights; the
    caller (``segzoo.model_zoo.get_model``) initialises the rest, and train.py sets ``lr_mult``.

    Parameters
    ----------
    method : str
        'fcn', 'psp', 'deeplab' (V3) or 'deeplabplus' (V3+).
    backbone : str
        'resnet50', 'resnet101', 'resnet152' or 'resnet_tiny'.
    num_classes : int
        Number of classes.
    aux : bool
        Add the auxiliary FCN head on c3.
    norm_layer, norm_kwargs
        Normalisation layer for every norm of the network, e.g.
        ``mx.gluon.contrib.nn.SyncBatchNorm`` with ``{'num_devices': 4}``.
    pretrained_base : bool
        Load GluonCV's ImageNet weights for the backbone (``segzoo.model_store.get_model_file``).
    root : str, optional
        Model-file cache directory; None means ``segzoo.model_store``'s default
        (``$MXNET_HOME/models`` if set, else ``~/.mxnet/models``).
    base_size, crop_size : int
        Stored on the Segmentor as data defaults.
    **head_kwargs
        Extra arguments of the main head (e.g. ``separable=False`` for 'deeplabplus').

    Returns
    -------
    Segmentor
    """
    if method not in METHODS:
        raise ValueError(f'unknown method {method!r}; valid methods: {", ".join(METHODS)}')
    norm = dict(norm_layer=norm_layer, norm_kwargs=norm_kwargs)
    net_backbone = get_backbone(backbone, **norm)
    if pretrained_base:
        if backbone not in IMAGENET_WEIGHTS:
            raise ValueError(f'backbone {backbone!r} has no ImageNet weights (those exist for '
                             f'{", ".join(sorted(IMAGENET_WEIGHTS))}); use pretrained_base=False')
        load_backbone_params(net_backbone, get_model_file(IMAGENET_WEIGHTS[backbone], root=root))
    channels = net_backbone.out_channels
    head = _build_head(method, channels, num_classes, norm, head_kwargs)
    aux_head = FCNHead(channels[2], num_classes, in_index=2, **norm) if aux else None
    align_corners = _PLUS_ALIGN_CORNERS if method == 'deeplabplus' else True
    return Segmentor(net_backbone, head, aux_head, num_classes=num_classes, align_corners=align_corners,
                     base_size=base_size, crop_size=crop_size)
