"""Where a network's weights come from, decided and loaded in one place.

The rule, for every network segzoo builds: a weights file, when given, sets every parameter (with
``reset_classes``, every parameter but the classifiers, which the scheme initialises: fine-tuning to other classes);
otherwise the backbone's ImageNet weights are loaded when a source is chosen, and the initialisation scheme of the
model's family sets what is left; otherwise the scheme sets everything.

ImageNet sources (``imagenet_source``): GluonCV's files in ``segzoo.model_store`` (``resnet101_v1s`` for the deep
stem, ``resnet101_v1b`` for torchvision's layout), or torchvision's own files, ``'IMAGENET1K_V1'`` /
``'IMAGENET1K_V2'`` (``segzoo.torch_io``), which fit the torchvision-layout ('*_v1b') backbones only.
"""
import math

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from ..model_store import get_model_file
from .resnet import BACKBONES
from .segmentor import load_params_strict

TORCHVISION_WEIGHTS = ('IMAGENET1K_V1', 'IMAGENET1K_V2')
INITIALIZERS = ('kaiming_normal', 'bn_ones')  # Composer's Initializer names (composer/models/initializers.py)


def imagenet_source(backbone, pretrained_base=None):
    """The ImageNet weights to load into `backbone`, or None.

    `pretrained_base`: None means GluonCV's file when one exists (so 'resnet_tiny' builds offline); True requires
    it; False means none; a string names the source: 'IMAGENET1K_V1' / 'IMAGENET1K_V2' (torchvision) or a GluonCV
    model-store name.
    """
    if backbone not in BACKBONES:
        raise ValueError(f'unknown backbone {backbone!r}; valid backbones: {", ".join(sorted(BACKBONES))}')
    spec = BACKBONES[backbone]
    if pretrained_base is None or pretrained_base is False:
        return spec.imagenet if pretrained_base is None else None
    if pretrained_base is True:
        if spec.imagenet is None:
            with_weights = sorted(name for name, row in BACKBONES.items() if row.imagenet)
            raise ValueError(f'backbone {backbone!r} has no ImageNet weights (those exist for '
                             f'{", ".join(with_weights)}); use pretrained_base=False')
        return spec.imagenet
    if pretrained_base in TORCHVISION_WEIGHTS and spec.stem != 'single':
        raise ValueError(f'torchvision weights {pretrained_base} need a torchvision-layout backbone '
                         f'({", ".join(n for n, r in BACKBONES.items() if r.stem == "single")}), not {backbone!r}')
    return pretrained_base


class ClassCountError(ValueError):
    """A weights file predicts another number of classes than the network (``file_classes`` vs ``num_classes``)."""

    def __init__(self, filename, file_classes, num_classes):
        super().__init__(f'{filename} predicts {file_classes} classes, the network {num_classes}; load it with '
                         'reset_classes=True to keep every other weight and train new classifiers')
        self.filename, self.file_classes, self.num_classes = filename, file_classes, num_classes


def load_weights(net, ctx, weights=None, backbone_weights=None, root=None, scheme='gluoncv', initializers=(),
                 reset_classes=False):
    """Set every parameter of the Segmentor `net` on `ctx` (a Context or a list), following the module's rule.

    Parameters
    ----------
    weights : str or None
        A ``.params`` file with GluonCV's structural keys (published, or written by segzoo): all weights.
    backbone_weights : str or None
        An ``imagenet_source`` result; ignored when `weights` is given.
    root : str or None
        Model-file cache (``segzoo.model_store.default_root`` when None).
    scheme : {'gluoncv', 'torch'}
        Initialisation of what no file sets (``segzoo.models.FAMILIES``).
    initializers : sequence of str
        Composer's initializers (``INITIALIZERS``), applied after the scheme to every parameter no file set:
        the whole model without backbone weights, else the heads, as ``composer_deeplabv3`` does.
    reset_classes : bool
        With `weights`: load every weight but the classifiers (``net.classifier_keys()``), which keep the
        scheme's initialisation (fine-tuning to other classes).

    Raises
    ------
    ClassCountError
        `weights` predicts another number of classes and `reset_classes` is False.
    """
    ctx_list = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]
    unknown = sorted(set(initializers) - set(INITIALIZERS))
    if unknown:
        raise ValueError(f'unknown initializers {unknown}; valid: {", ".join(INITIALIZERS)}')
    if weights is not None and not reset_classes:
        _load_file(net, weights, ctx_list)
        return net
    imagenet = backbone_weights is not None and weights is None
    if imagenet:
        load_backbone_weights(net.backbone, backbone_weights, root)
    fresh = [block for block in (net.backbone, net.head, net.aux_head)
             if block is not None and not (block is net.backbone and imagenet)]
    backbone_init, head_init = _SCHEMES[scheme]
    for block in fresh:
        block.initialize(backbone_init if block is net.backbone else head_init, ctx=ctx_list)
    if scheme == 'torch':
        for conv in net.classifiers():   # torch's Conv2d default, U(+-1/sqrt(fan_in)) on weight and bias
            bound = 1.0 / math.sqrt(int(np.prod(conv.weight.shape[1:])))
            for param in (conv.weight, conv.bias):
                param.set_data(mx.nd.random.uniform(-bound, bound, shape=param.shape))
    for block in fresh:
        _apply_initializers(block, initializers)
    net.collect_params().reset_ctx(ctx_list)
    if weights is not None:
        _load_file(net, weights, ctx_list, skip=net.classifier_keys())
    return net


def _load_file(net, weights, ctx_list, skip=()):
    try:
        net.load_parameters(weights, ctx=ctx_list, skip=skip)
    except ValueError as err:
        try:
            stored = mx.nd.load(weights)
        except mx.base.MXNetError:     # not a parameter file at all: the loader's message names it
            raise err from None
        counts = {stored[key].shape[0] for key in net.classifier_keys() if key in stored and stored[key].ndim == 4}
        if not skip and counts and counts != {net.num_classes}:
            raise ClassCountError(weights, min(counts), net.num_classes) from err
        raise


def load_backbone_weights(backbone, source, root=None):
    """Load ImageNet weights `source` (GluonCV store name or torchvision 'IMAGENET1K_V*') into `backbone`."""
    if source in TORCHVISION_WEIGHTS:
        from ..torch_io import load_torch_file, state_dict_from, torchvision_weights_file
        from .torch_weights import load_torch_state_dict
        arch = _torchvision_arch(backbone)
        load_torch_state_dict(backbone, state_dict_from(load_torch_file(torchvision_weights_file(arch, source, root))))
        return
    load_backbone_params(backbone, get_model_file(source, root=root))


def load_backbone_params(backbone, filename, ctx=None):
    """Load a GluonCV ImageNet ResNet file (``resnet101_v1s-*.params``) into `backbone`, strictly; the file's
    classifier (``fc.*``) is not part of the backbone."""
    load_params_strict(backbone._collect_params_with_prefix(), filename, ctx=ctx,
                       ignore_extra=lambda key: key.startswith('fc.'))


def _torchvision_arch(backbone):
    layers = tuple(len(getattr(backbone, f'layer{i}')) for i in range(1, 5))
    archs = {(3, 4, 6, 3): 'resnet50', (3, 4, 23, 3): 'resnet101', (3, 8, 36, 3): 'resnet152'}
    if layers not in archs:
        raise ValueError(f'torchvision publishes no ImageNet weights for a ResNet with stages {layers}')
    return archs[layers]


def _conv_layers(block):
    """Every Conv2D inside `block`."""
    found = []
    block.apply(lambda child: found.append(child) if isinstance(child, nn.Conv2D) else None)
    return found


# What the family's scheme gives every parameter no file sets (the torch scheme then gives the classifiers torch's
# Conv2d default, see load_weights):
# gluoncv: He (MSRA) for a random backbone (it has ReLUs), Gluon's Uniform(0.07) for heads, as GluonCV; biases 0.
# torch: torchvision's and mmcv's constructor defaults (Composer calls no other init): every conv
#        kaiming_normal_(mode='fan_out', relu) = N(0, 2/fan_out); BatchNorm 1/0.
_TORCH_CONV = mx.init.MSRAPrelu(factor_type='out', slope=0.0)
_SCHEMES = {'gluoncv': (mx.init.MSRAPrelu(), mx.init.Uniform()), 'torch': (_TORCH_CONV, _TORCH_CONV)}  # backbone, heads


def _apply_initializers(block, initializers):
    """Composer's initializers: 'kaiming_normal' = torch.nn.init.kaiming_normal_ defaults on every conv weight
    (N(0, 2/fan_in); biases untouched); 'bn_ones' = BatchNorm gamma 1, beta 0 (running statistics untouched)."""
    if 'kaiming_normal' in initializers:
        kaiming = mx.init.MSRAPrelu(factor_type='in', slope=0.0)
        for conv in _conv_layers(block):
            conv.weight.initialize(kaiming, ctx=conv.weight.list_ctx(), force_reinit=True)
    if 'bn_ones' in initializers:
        norms = []
        block.apply(lambda child: norms.append(child) if isinstance(child, nn.BatchNorm) else None)
        for norm in norms:
            norm.gamma.set_data(mx.nd.ones(norm.gamma.shape))
            norm.beta.set_data(mx.nd.zeros(norm.beta.shape))
