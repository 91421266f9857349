"""Where a network's weights come from, decided and loaded in one place.

The rule, for every network segzoo builds: a weights file, when given, sets every parameter; otherwise the
backbone's ImageNet weights are loaded when a source is chosen, and the initialisation scheme of the model's
family sets what is left; otherwise the scheme sets everything.

ImageNet sources (``imagenet_source``): GluonCV's files in ``segzoo.model_store`` (``resnet101_v1s`` for the deep
stem, ``resnet101_v1b`` for torchvision's layout), or torchvision's own files, ``'IMAGENET1K_V1'`` /
``'IMAGENET1K_V2'`` (``segzoo.torch_io``), which fit the torchvision-layout ('*_v1b') backbones only.
"""
import math

import mxnet as mx
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


def load_weights(net, ctx, weights=None, backbone_weights=None, root=None, scheme='gluoncv', initializers=()):
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
    """
    ctx_list = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]
    unknown = sorted(set(initializers) - set(INITIALIZERS))
    if unknown:
        raise ValueError(f'unknown initializers {unknown}; valid: {", ".join(INITIALIZERS)}')
    if weights is not None:
        net.load_parameters(weights, ctx=ctx_list)
        return net
    if backbone_weights is not None:
        load_backbone_weights(net.backbone, backbone_weights, root)
    fresh = [block for block in (net.backbone, net.head, net.aux_head)
             if block is not None and not (block is net.backbone and backbone_weights is not None)]
    for block in fresh:
        _SCHEMES[scheme](block, is_backbone=block is net.backbone, ctx_list=ctx_list)
        _apply_initializers(block, initializers)
    net.collect_params().reset_ctx(ctx_list)
    return net


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


def _is_classifier(conv):
    # In these networks only the classifiers' convolutions have a bias: every other conv feeds a norm layer.
    return conv.bias is not None


def _init_gluoncv(block, is_backbone, ctx_list):
    """GluonCV: He (MSRA) for a random backbone (it has ReLUs), Gluon's Uniform(0.07) for heads; biases zero."""
    init = mx.init.MSRAPrelu() if is_backbone else mx.init.Uniform()
    block.initialize(init, ctx=ctx_list)


def _init_torch(block, is_backbone, ctx_list):
    """torchvision's and mmcv's constructor defaults (Composer calls no other init): every conv
    kaiming_normal_(mode='fan_out', relu), i.e. N(0, 2/fan_out); BatchNorm 1/0; the classifier keeps torch's
    Conv2d default, U(+-1/sqrt(fan_in)) on weight and bias."""
    del is_backbone
    block.initialize(mx.init.MSRAPrelu(factor_type='out', slope=0.0), ctx=ctx_list)
    for conv in _conv_layers(block):
        if _is_classifier(conv):
            out_channels, in_channels, kh, kw = conv.weight.shape
            bound = 1.0 / math.sqrt(in_channels * kh * kw)
            for param in (conv.weight, conv.bias):
                param.set_data(mx.nd.random.uniform(-bound, bound, shape=param.shape))


_SCHEMES = {'gluoncv': _init_gluoncv, 'torch': _init_torch}


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
