"""DeepLabV3+: Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation
(arXiv:1802.02611), in the form MosaicML Composer trains on a dilated ResNet-50/101 (output stride 8).

Upsampling choice: this is not a GluonCV model (GluonCV published no ResNet DeepLabV3+), so it follows
Composer (mmsegmentation's ``DepthwiseSeparableASPPHead``) and resizes with ``align_corners=False``,
both for the ASPP output -> c1 size step here and for the logits -> input size step in ``Segmentor``.
"""
from mxnet.gluon import nn
from mxnet.gluon.nn import HybridBlock

from .deeplabv3 import ASPP, conv_norm_relu

ALIGN_CORNERS = False


class DeepLabV3PlusHead(HybridBlock):
    """ASPP on c4 + decoder on c1.

    The decoder projects c1 to `c1_channels` (1x1 conv, norm, ReLU), concatenates it with the ASPP output
    resized to c1's size, then applies two 3x3 conv -> norm -> ReLU blocks (depthwise-separable when
    `separable`), dropout and a 1x1 classifier.

    Parameters
    ----------
    in_channels : int
        Channels of c4.
    c1_in_channels : int
        Channels of c1 (256 for ResNet-50/101).
    num_classes : int
        Output channels (logits).
    atrous_rates : tuple of 3 int
        ASPP dilations; (12, 24, 36) at output stride 8.
    channels : int
        ASPP and decoder width.
    c1_channels : int
        Width of the projected c1 features (48).
    separable : bool
        Depthwise-separable 3x3 convolutions in the ASPP and the decoder (default True, as in the paper).
    dropout : float
        Dropout before the classifier.
    norm_layer, norm_kwargs
        Normalisation layer class and its keyword arguments.

    Shapes
    ------
    ``(c1: (B, c1_in_channels, H/4, W/4), c4: (B, in_channels, H/8, W/8)) -> (B, num_classes, H/4, W/4)``.
    """

    def __init__(self, in_channels, c1_in_channels, num_classes, atrous_rates=(12, 24, 36), channels=256,
                 c1_channels=48, separable=True, dropout=0.1, norm_layer=nn.BatchNorm, norm_kwargs=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.in_index = (0, 3)
        norm = dict(norm_layer=norm_layer, norm_kwargs=norm_kwargs)
        with self.name_scope():
            self.aspp = ASPP(in_channels, atrous_rates, channels, separable=separable, **norm)
            self.c1_block = conv_norm_relu(c1_in_channels, c1_channels, 1, **norm)
            self.block = nn.HybridSequential()
            self.block.add(conv_norm_relu(channels + c1_channels, channels, 3, separable=separable, **norm),
                           conv_norm_relu(channels, channels, 3, separable=separable, **norm),
                           nn.Dropout(dropout),
                           nn.Conv2D(num_classes, 1, in_channels=channels))

    def hybrid_forward(self, F, c1, c4):
        x = F.contrib.BilinearResize2D(self.aspp(c4), like=c1, mode='like', align_corners=ALIGN_CORNERS)
        return self.block(F.concat(x, self.c1_block(c1), dim=1))
