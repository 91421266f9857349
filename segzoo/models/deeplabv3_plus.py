"""DeepLabV3+: Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation
(arXiv:1802.02611), exactly as MosaicML Composer 0.17 trains it: mmsegmentation's ``DepthwiseSeparableASPPHead``
(``composer/models/deeplabv3/model.py``: channels 512, dilations 1/12/24/36, c1 48 channels) on a dilated
torchvision ResNet.

This is not a GluonCV model (GluonCV published no ResNet DeepLabV3+), so it resizes with ``align_corners=False``
as Composer does, both for the ASPP output -> c1 step here and for the logits -> input step in ``Segmentor``.
Composer's README describes a 1x1 ASPP projection; the code it runs (and that produced its published mIoU) uses a
3x3 one, which is what this head has.
"""
from mxnet.gluon import nn
from mxnet.gluon.nn import HybridBlock

from .deeplabv3 import ASPP, channel_dropout, conv_norm_relu
from .layers import resize_like

ALIGN_CORNERS = False


class DeepLabV3PlusHead(HybridBlock):
    """Separable ASPP on c4 + decoder on c1.

    The ASPP (pool branch first, separable atrous branches, 3x3 projection, no dropout) output is resized to c1's
    size and concatenated with c1 projected to `c1_channels` (1x1 conv, norm, ReLU); two depthwise-separable 3x3
    conv -> norm -> ReLU blocks, channel dropout and a 1x1 classifier follow. Attribute names follow
    mmsegmentation's (``c1_bottleneck``, ``sep_bottleneck``, ``conv_seg``), so Composer's state_dict maps by rule
    (``segzoo.models.torch_weights``).

    Parameters
    ----------
    c1_in_channels : int
        Channels of c1 (256 for ResNet-50/101).
    in_channels : int
        Channels of c4.
    num_classes : int
        Output channels (logits).
    atrous_rates : tuple of int
        ASPP dilations; (12, 24, 36) at output stride 8.
    channels : int
        ASPP and decoder width (Composer: 512).
    c1_channels : int
        Width of the projected c1 features (48).
    dropout : float
        Channel dropout before the classifier (0.1).
    norm_layer, norm_kwargs
        Normalisation layer class and its keyword arguments.

    Shapes
    ------
    ``(c1: (B, c1_in_channels, H/4, W/4), c4: (B, in_channels, H/8, W/8)) -> (B, num_classes, H/4, W/4)``.
    """

    def __init__(self, c1_in_channels, in_channels, num_classes, atrous_rates=(12, 24, 36), channels=512,
                 c1_channels=48, dropout=0.1, norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        norm = dict(norm_layer=norm_layer, norm_kwargs=norm_kwargs)
        with self.name_scope():
            self.aspp = ASPP(in_channels, atrous_rates, channels, separable=True, dropout=0, pool_first=True,
                             project_kernel=3, **norm)
            self.c1_bottleneck = conv_norm_relu(c1_in_channels, c1_channels, 1, **norm)
            self.sep_bottleneck = nn.HybridSequential()
            self.sep_bottleneck.add(conv_norm_relu(channels + c1_channels, channels, 3, separable=True, **norm),
                                    conv_norm_relu(channels, channels, 3, separable=True, **norm))
            self.dropout = channel_dropout(dropout)
            self.conv_seg = nn.Conv2D(num_classes, 1, in_channels=channels)

    def hybrid_forward(self, F, c1, c4):
        x = resize_like(F, self.aspp(c4), c1, ALIGN_CORNERS)
        x = self.sep_bottleneck(F.concat(x, self.c1_bottleneck(c1), dim=1))
        return self.conv_seg(self.dropout(x))
