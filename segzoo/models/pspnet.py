"""PSPNet head: Pyramid Scene Parsing Network (arXiv:1612.01105)."""
from mxnet.gluon import nn
from mxnet.gluon.nn import HybridBlock

from .deeplabv3 import conv_norm_relu
from .fcn import classifier_block
from .layers import resize_like

BINS = (1, 2, 3, 6)


class PyramidPooling(HybridBlock):
    """Adaptive average pooling to 1/2/3/6 bins -> 1x1 conv -> norm -> ReLU per bin, each resized to the
    input (bilinear, align_corners=True) and concatenated after the input.

    Shapes
    ------
    ``(B, C, h, w) -> (B, 2 * C, h, w)`` (each of the four branches has ``C // 4`` channels).
    """

    def __init__(self, in_channels, norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            # attributes conv1..conv4 are GluonCV's `head.psp.conv{1..4}` keys
            for index in range(1, len(BINS) + 1):
                setattr(self, f'conv{index}', conv_norm_relu(in_channels, in_channels // 4, 1,
                                                             norm_layer=norm_layer, norm_kwargs=norm_kwargs))

    def hybrid_forward(self, F, x):
        features = [x]
        for index, bins in enumerate(BINS, start=1):
            pooled = F.contrib.AdaptiveAvgPooling2D(x, output_size=bins)
            branch = getattr(self, f'conv{index}')(pooled)
            features.append(resize_like(F, branch, x, align_corners=True))
        return F.concat(*features, dim=1)


class PSPHead(HybridBlock):
    """Pyramid pooling -> 3x3 conv to ``in_channels // 4`` -> norm -> ReLU -> dropout 0.1 -> 1x1 conv.

    Parameters
    ----------
    in_channels : int
        Channels of c4 (2048 for ResNet-50/101/152; the 3x3 conv then maps 4096 -> 512).
    num_classes : int
        Output channels (logits).
    norm_layer, norm_kwargs
        Normalisation layer class and its keyword arguments.

    Shapes
    ------
    ``(B, in_channels, h, w) -> (B, num_classes, h, w)``.
    """

    def __init__(self, in_channels, num_classes, norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.psp = PyramidPooling(in_channels, norm_layer=norm_layer, norm_kwargs=norm_kwargs)
            # the pooled features are concatenated with the input: 2 * in_channels
            self.block = classifier_block(2 * in_channels, in_channels // 4, num_classes, norm_layer, norm_kwargs)

    def hybrid_forward(self, F, x):
        return self.block(self.psp(x))
