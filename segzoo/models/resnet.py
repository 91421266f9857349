"""Dilated ResNet backbones at output stride 8: GluonCV's "v1s" (deep stem) and torchvision's layout ("v1b").

Deep Residual Learning for Image Recognition (arXiv:1512.03385), with the "v1s" deep stem of
Bag of Tricks for Image Classification with Convolutional Neural Networks (arXiv:1812.01187) and the
dilation strategy of Multi-Scale Context Aggregation by Dilated Convolutions (arXiv:1511.07122).

Block attribute names mirror GluonCV's ``resnetv1b`` (which are torchvision's too) so that GluonCV's ImageNet files
(``resnet50_v1s``, ``resnet50_v1b`` ...), its segmentation files and torchvision's state_dicts map key for key:
``conv1.0.weight`` (deep stem) or ``conv1.weight`` (single stem), ``bn1.gamma``, ``layer1.0.conv1.weight``,
``layer1.0.downsample.0.weight`` ...
"""
from collections import namedtuple

from mxnet.gluon import nn
from mxnet.gluon.nn import HybridBlock

STEMS = ('deep', 'single')
_FULL_WIDTHS = (64, (64, 128, 256, 512))
_TINY_WIDTHS = (8, (4, 8, 16, 32))  # for tests: one block per stage, small widths


class BackboneSpec(namedtuple('BackboneSpec', 'layers widths stem imagenet')):
    """One row of ``BACKBONES``: blocks per stage, (stem width, bottleneck widths), stem, and the name of the
    GluonCV ImageNet weight file in ``segzoo.model_store`` (None: no published ImageNet weights)."""


# The one table of backbones. '*_v1b' are torchvision's layout (Composer's backbone); torchvision's own ImageNet
# files ('IMAGENET1K_V1' / 'IMAGENET1K_V2') load into them too (``segzoo.models.weights``).
BACKBONES = {
    'resnet50': BackboneSpec((3, 4, 6, 3), _FULL_WIDTHS, 'deep', 'resnet50_v1s'),
    'resnet101': BackboneSpec((3, 4, 23, 3), _FULL_WIDTHS, 'deep', 'resnet101_v1s'),
    'resnet152': BackboneSpec((3, 8, 36, 3), _FULL_WIDTHS, 'deep', 'resnet152_v1s'),
    'resnet_tiny': BackboneSpec((1, 1, 1, 1), _TINY_WIDTHS, 'deep', None),
    'resnet50_v1b': BackboneSpec((3, 4, 6, 3), _FULL_WIDTHS, 'single', 'resnet50_v1b'),
    'resnet101_v1b': BackboneSpec((3, 4, 23, 3), _FULL_WIDTHS, 'single', 'resnet101_v1b'),
    'resnet152_v1b': BackboneSpec((3, 8, 36, 3), _FULL_WIDTHS, 'single', 'resnet152_v1b'),
    'resnet_tiny_v1b': BackboneSpec((1, 1, 1, 1), _TINY_WIDTHS, 'single', None),
}

EXPANSION = 4


def _relu(F, x):
    # Activation(act_type='relu') rather than F.relu: MXNet's oneDNN (MKLDNN) build fuses and accelerates the
    # former only (measured 0.41 ms vs 1.42 ms on a 2x256x64x64 array; 3-4 % of a ResNet-50 forward).
    return F.Activation(x, act_type='relu')


def _norm(norm_layer, norm_kwargs, channels):
    return norm_layer(in_channels=channels, **(norm_kwargs or {}))


class Bottleneck(HybridBlock):
    """ResNet v1b bottleneck: 1x1 -> 3x3 (stride and dilation here) -> 1x1 (x4), ReLU after the residual add.

    Parameters
    ----------
    in_channels : int
        Input channels.
    planes : int
        Width of the 1x1 and 3x3 convolutions; the block outputs ``4 * planes`` channels.
    strides : int
        Stride of the 3x3 convolution (and of the projection shortcut).
    dilation : int
        Dilation of the 3x3 convolution; its padding equals the dilation, so the size is kept.
    norm_layer, norm_kwargs
        Normalisation layer class and its keyword arguments.
    """

    def __init__(self, in_channels, planes, strides=1, dilation=1,
                 norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        out_channels = planes * EXPANSION
        with self.name_scope():
            self.conv1 = nn.Conv2D(planes, 1, use_bias=False, in_channels=in_channels)
            self.bn1 = _norm(norm_layer, norm_kwargs, planes)
            self.conv2 = nn.Conv2D(planes, 3, strides=strides, padding=dilation, dilation=dilation,
                                   use_bias=False, in_channels=planes)
            self.bn2 = _norm(norm_layer, norm_kwargs, planes)
            self.conv3 = nn.Conv2D(out_channels, 1, use_bias=False, in_channels=planes)
            self.bn3 = _norm(norm_layer, norm_kwargs, out_channels)
            self.downsample = None
            if strides != 1 or in_channels != out_channels:
                self.downsample = nn.HybridSequential()
                self.downsample.add(nn.Conv2D(out_channels, 1, strides=strides, use_bias=False,
                                              in_channels=in_channels),
                                    _norm(norm_layer, norm_kwargs, out_channels))

    def hybrid_forward(self, F, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = _relu(F, self.bn1(self.conv1(x)))
        out = _relu(F, self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return _relu(F, out + shortcut)


class DilatedResNet(HybridBlock):
    """Dilated ResNet (v1b bottlenecks) with output stride 8, with either stem.

    ``stem='deep'`` is GluonCV's "v1s" stem (three 3x3 convolutions, the last to ``2 * stem_width``, then ``bn1``),
    the backbone of GluonCV's segmentation models. ``stem='single'`` is torchvision's (and GluonCV's "v1b") stem, one
    7x7/2 convolution to ``stem_width`` and ``bn1``, the backbone of Composer's DeepLabV3(+). Both are followed by a
    3x3/2 max-pool. layer3 and layer4 keep stride 1; layer3 uses dilation 2 except its first block (dilation 1),
    layer4 dilation 4 except its first block (dilation 2): GluonCV's ``dilated=True`` and torchvision's
    ``replace_stride_with_dilation=[False, True, True]`` are the same network.

    Parameters
    ----------
    layers : sequence of 4 int
        Bottleneck blocks per stage.
    stem_width : int
        Width of the stem convolutions.
    planes : sequence of 4 int
        Bottleneck width per stage (the stage outputs four times as many channels).
    stem : {'deep', 'single'}
    norm_layer, norm_kwargs
        Normalisation layer class and keyword arguments, applied to every norm in the network.

    Attributes
    ----------
    out_channels : tuple of 4 int
        Channels of (c1, c2, c3, c4).

    Shapes
    ------
    ``(B, 3, H, W) -> (c1, c2, c3, c4)``: c1 at ``ceil(H/4)``, c2, c3 and c4 at ``ceil(H/8)``.
    """

    output_stride = 8

    def __init__(self, layers, stem_width=64, planes=(64, 128, 256, 512), stem='deep',
                 norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        if len(layers) != 4 or len(planes) != 4:
            raise ValueError(f'DilatedResNet needs 4 stages, got layers={layers}, planes={planes}')
        if stem not in STEMS:
            raise ValueError(f'unknown stem {stem!r}; valid stems: {", ".join(STEMS)}')
        norm = dict(norm_layer=norm_layer, norm_kwargs=norm_kwargs)
        # (stride, dilation of the first block, dilation of the other blocks) per stage
        stage_specs = ((1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4))
        with self.name_scope():
            if stem == 'deep':
                self.conv1 = nn.HybridSequential()
                self.conv1.add(nn.Conv2D(stem_width, 3, strides=2, padding=1, use_bias=False, in_channels=3),
                               _norm(norm_layer, norm_kwargs, stem_width),
                               nn.Activation('relu'),
                               nn.Conv2D(stem_width, 3, padding=1, use_bias=False, in_channels=stem_width),
                               _norm(norm_layer, norm_kwargs, stem_width),
                               nn.Activation('relu'),
                               nn.Conv2D(2 * stem_width, 3, padding=1, use_bias=False, in_channels=stem_width))
                in_channels = 2 * stem_width
            else:
                self.conv1 = nn.Conv2D(stem_width, 7, strides=2, padding=3, use_bias=False, in_channels=3)
                in_channels = stem_width
            self.bn1 = _norm(norm_layer, norm_kwargs, in_channels)
            self.maxpool = nn.MaxPool2D(pool_size=3, strides=2, padding=1)
            for index, (blocks, width, spec) in enumerate(zip(layers, planes, stage_specs), start=1):
                stage = _make_stage(in_channels, width, blocks, *spec, **norm)
                setattr(self, f'layer{index}', stage)
                in_channels = width * EXPANSION
        self.out_channels = tuple(width * EXPANSION for width in planes)

    def hybrid_forward(self, F, x):
        x = self.maxpool(_relu(F, self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return c1, c2, c3, c4


def _make_stage(in_channels, planes, blocks, strides, first_dilation, dilation, norm_layer, norm_kwargs):
    stage = nn.HybridSequential()
    for index in range(blocks):
        stage.add(Bottleneck(in_channels if index == 0 else planes * EXPANSION, planes,
                             strides=strides if index == 0 else 1,
                             dilation=first_dilation if index == 0 else dilation,
                             norm_layer=norm_layer, norm_kwargs=norm_kwargs))
    return stage


def get_backbone(name, norm_layer=nn.BatchNorm, norm_kwargs=None):
    """Build the dilated backbone called `name` (a key of ``BACKBONES``), uninitialised.

    Raises
    ------
    ValueError
        If `name` is unknown; the message lists the valid names.
    """
    if name not in BACKBONES:
        raise ValueError(f'unknown backbone {name!r}; valid backbones: {", ".join(sorted(BACKBONES))}')
    spec = BACKBONES[name]
    stem_width, planes = spec.widths
    return DilatedResNet(spec.layers, stem_width, planes, stem=spec.stem, norm_layer=norm_layer,
                         norm_kwargs=norm_kwargs)
