"""Segmentation networks: dilated ResNet backbones, the FCN / PSPNet / DeepLabV3 / DeepLabV3+ heads, and the two
tables that say how they are put together.

``HEADS`` and ``BACKBONES`` (``segzoo.models.resnet``) are the only places that say which head class a method
uses, which backbone features it reads, how its logits are resized, and how each backbone is built and where its
ImageNet weights come from. ``get_segmentor`` builds structure from them; ``segzoo.models.weights`` decides and
loads the weights.
"""
from collections import namedtuple

import mxnet as mx
from mxnet.gluon import nn

from ..data.base import BASE_SIZE, CROP_SIZE
from .deeplabv3 import ASPP, ASPPHead, DeepLabV3Head
from .deeplabv3_plus import ALIGN_CORNERS as _PLUS_ALIGN_CORNERS
from .deeplabv3_plus import DeepLabV3PlusHead
from .fcn import FCNHead
from .pspnet import PSPHead
from .resnet import BACKBONES, DilatedResNet, get_backbone
from .segmentor import Segmentor, gluoncv_key, load_params_strict
from .weights import load_backbone_params

__all__ = ['ASPP', 'ASPPHead', 'AUX_FEATURES', 'BACKBONES', 'DeepLabV3Head', 'DeepLabV3PlusHead', 'DilatedResNet',
           'FAMILIES', 'FCNHead', 'HEADS', 'METHODS', 'PSPHead', 'Segmentor', 'check_method', 'family', 'get_backbone',
           'get_norm_layer', 'get_segmentor', 'gluoncv_key', 'load_backbone_params', 'load_params_strict']


class HeadSpec(namedtuple('HeadSpec', 'cls features align_corners family')):
    """One row of ``HEADS``.

    cls : the head class, called as ``cls(*channels of the features, num_classes, norm_layer=, norm_kwargs=)``.
    features : indices (0..3 for c1..c4) of the backbone features the head reads, in call order.
    align_corners : of the final bilinear resize of the logits to the input size.
    family : a key of ``FAMILIES``: whose conventions the method follows (initialisation, zoo aux head, sizes).
    """


# The one table of heads. GluonCV's methods resize with MXNet's align_corners=True (GluonCV's outputs on GluonCV's
# weights); Composer's with torch's align_corners=False.
HEADS = {
    'fcn': HeadSpec(FCNHead, (3,), True, 'gluoncv'),
    'psp': HeadSpec(PSPHead, (3,), True, 'gluoncv'),
    'deeplab': HeadSpec(DeepLabV3Head, (3,), True, 'gluoncv'),
    'deeplabplus': HeadSpec(DeepLabV3PlusHead, (0, 3), _PLUS_ALIGN_CORNERS, 'composer'),
    'deeplabv3_composer': HeadSpec(ASPPHead, (3,), False, 'composer'),
}
METHODS = tuple(HEADS)
AUX_FEATURES = (2,)  # every method's auxiliary head is an FCN head on c3


class Family(namedtuple('Family', 'init zoo_aux sizes')):
    """Conventions of a model family: the initialisation scheme of parameters no file sets
    (``segzoo.models.weights``), whether its zoo networks have the auxiliary head, and the data sizes
    ``(base_size, crop_size)`` stored on its networks (test.py's defaults)."""


FAMILIES = {
    # GluonCV: MSRA backbone, Uniform(0.07) heads; zoo networks carry the aux head; 520/480 (scripts/segmentation)
    'gluoncv': Family('gluoncv', True, (BASE_SIZE, CROP_SIZE)),
    # Composer: torchvision/mmcv constructor defaults; no aux head; ADE20K at 512x512 (composer/datasets/ade20k.py)
    'composer': Family('torch', False, (512, 512)),
}


def family(method):
    """The ``Family`` of `method`."""
    check_method(method)
    return FAMILIES[HEADS[method].family]


def check_method(method, what='method'):
    """ValueError listing the valid methods unless `method` is one; `what` names the argument in the message."""
    if method not in HEADS:
        raise ValueError(f'unknown {what} {method!r}; valid {what}s: {", ".join(METHODS)}')


def get_norm_layer(sync, num_devices):
    """``(norm_layer, norm_kwargs)`` for every norm of a network: SyncBatchNorm over ``num_devices`` when `sync`,
    else BatchNorm (per device)."""
    if sync:
        return mx.gluon.contrib.nn.SyncBatchNorm, {'num_devices': num_devices}
    return nn.BatchNorm, None


def get_segmentor(method, backbone, num_classes, aux=False, norm_layer=nn.BatchNorm, norm_kwargs=None,
                  base_size=BASE_SIZE, crop_size=CROP_SIZE, **head_kwargs):
    """Build the structure of a ``Segmentor``: dilated `backbone` + `method` head (+ FCN aux head on c3).

    Nothing is initialised or loaded (``segzoo.models.weights.load_weights`` does that) and no ``lr_mult`` is set
    (train.py does).

    Parameters
    ----------
    method : str
        A key of ``HEADS``.
    backbone : str
        A key of ``BACKBONES``.
    num_classes : int
    aux : bool
        Add the auxiliary FCN head on c3.
    norm_layer, norm_kwargs
        Normalisation layer for every norm of the network, e.g.
        ``mx.gluon.contrib.nn.SyncBatchNorm`` with ``{'num_devices': 4}``.
    base_size, crop_size : int
        Stored on the Segmentor as data defaults.
    **head_kwargs
        Extra arguments of the main head (e.g. ``channels=256``).
    """
    check_method(method)
    spec = HEADS[method]
    norm = dict(norm_layer=norm_layer, norm_kwargs=norm_kwargs)
    net_backbone = get_backbone(backbone, **norm)
    channels = net_backbone.out_channels
    head = spec.cls(*[channels[i] for i in spec.features], num_classes, **norm, **head_kwargs)
    aux_head = FCNHead(*[channels[i] for i in AUX_FEATURES], num_classes, **norm) if aux else None
    return Segmentor(net_backbone, head, aux_head, num_classes=num_classes, align_corners=spec.align_corners,
                     base_size=base_size, crop_size=crop_size, head_features=spec.features,
                     aux_features=AUX_FEATURES)
