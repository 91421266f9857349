"""FCN head: Fully Convolutional Networks for Semantic Segmentation (arXiv:1411.4038).

The same head serves as FCN's main head on c4 and as the auxiliary head on c3 for every method.
"""
from mxnet.gluon import nn
from mxnet.gluon.nn import HybridBlock


def classifier_block(in_channels, channels, num_classes, norm_layer=nn.BatchNorm, norm_kwargs=None, dropout=0.1):
    """3x3 conv (no bias) to `channels`, norm, ReLU, dropout, 1x1 conv (with bias) to `num_classes`.

    The last stage of the FCN, PSPNet and DeepLabV3 heads; its indices 0 (conv), 1 (norm) and 4 (classifier) are
    GluonCV's ``block.{0,1,4}`` parameter keys.
    """
    block = nn.HybridSequential()
    block.add(nn.Conv2D(channels, 3, padding=1, use_bias=False, in_channels=in_channels),
              norm_layer(in_channels=channels, **(norm_kwargs or {})),
              nn.Activation('relu'),
              nn.Dropout(dropout),
              nn.Conv2D(num_classes, 1, in_channels=channels))
    return block


class FCNHead(HybridBlock):
    """3x3 conv to ``in_channels // 4``, norm, ReLU, dropout 0.1, 1x1 conv (with bias) to the classes.

    Parameters
    ----------
    in_channels : int
        Channels of the chosen backbone feature.
    num_classes : int
        Output channels (logits).
    norm_layer, norm_kwargs
        Normalisation layer class and its keyword arguments.

    Shapes
    ------
    ``(B, in_channels, h, w) -> (B, num_classes, h, w)``.
    """

    def __init__(self, in_channels, num_classes, norm_layer=nn.BatchNorm, norm_kwargs=None,
                 dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.block = classifier_block(in_channels, in_channels // 4, num_classes, norm_layer, norm_kwargs,
                                          dropout)

    def hybrid_forward(self, F, x):
        return self.block(x)
