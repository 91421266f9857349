"""DeepLabV3: Rethinking Atrous Convolution for Semantic Image Segmentation (arXiv:1706.05587).

``ASPP`` is the one atrous spatial pyramid pooling module of segzoo; DeepLabV3+ reuses it with
``separable=True``. The image-pooling branch is resized to the feature map it came from at run time,
so one network serves every input size.
"""
from mxnet.gluon import nn
from mxnet.gluon.contrib.nn import HybridConcurrent
from mxnet.gluon.nn import HybridBlock

from .fcn import classifier_block


def conv_norm_relu(in_channels, channels, kernel_size=1, dilation=1, separable=False,
                   norm_layer=nn.BatchNorm, norm_kwargs=None):
    """Conv (padding keeps the size) -> norm -> ReLU, or its depthwise-separable form.

    The separable form is a depthwise ``kernel_size`` conv -> norm -> ReLU followed by a pointwise
    1x1 conv -> norm -> ReLU (Xception / DeepLabV3+, arXiv:1802.02611).
    """
    norm_kwargs = norm_kwargs or {}
    padding = dilation * (kernel_size - 1) // 2
    block = nn.HybridSequential()
    if separable:
        block.add(nn.Conv2D(in_channels, kernel_size, padding=padding, dilation=dilation, groups=in_channels,
                            use_bias=False, in_channels=in_channels),
                  norm_layer(in_channels=in_channels, **norm_kwargs),
                  nn.Activation('relu'))
        kernel_size, padding, dilation = 1, 0, 1  # the pointwise conv follows
    block.add(nn.Conv2D(channels, kernel_size, padding=padding, dilation=dilation, use_bias=False,
                        in_channels=in_channels),
              norm_layer(in_channels=channels, **norm_kwargs),
              nn.Activation('relu'))
    return block


class ASPPPooling(HybridBlock):
    """Image-level branch: global average pool -> 1x1 conv -> norm -> ReLU, resized back to the input.

    Shapes
    ------
    ``(B, in_channels, h, w) -> (B, channels, h, w)``.
    """

    def __init__(self, in_channels, channels, norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            # `gap.1` / `gap.2` are GluonCV's keys for the conv and the norm
            self.gap = nn.HybridSequential()
            self.gap.add(nn.GlobalAvgPool2D(),
                         nn.Conv2D(channels, 1, use_bias=False, in_channels=in_channels),
                         norm_layer(in_channels=channels, **(norm_kwargs or {})),
                         nn.Activation('relu'))

    def hybrid_forward(self, F, x):
        # resizing a 1x1 map is a broadcast; align_corners does not change the result
        return F.contrib.BilinearResize2D(self.gap(x), like=x, mode='like', align_corners=True)


class ASPP(HybridBlock):
    """Atrous spatial pyramid pooling: a 1x1 branch, three atrous 3x3 branches and an image-pool branch,
    concatenated and projected by 1x1 conv -> norm -> ReLU -> dropout.

    Parameters
    ----------
    in_channels : int
        Channels of the input feature map (c4).
    atrous_rates : tuple of 3 int
        Dilations of the three 3x3 branches; (12, 24, 36) at output stride 8.
    channels : int
        Channels of every branch and of the output.
    separable : bool
        Use depthwise-separable 3x3 branches (DeepLabV3+); False gives GluonCV's DeepLabV3 ASPP.
    dropout : float
        Dropout after the projection.
    norm_layer, norm_kwargs
        Normalisation layer class and its keyword arguments.

    Shapes
    ------
    ``(B, in_channels, h, w) -> (B, channels, h, w)``.
    """

    def __init__(self, in_channels, atrous_rates=(12, 24, 36), channels=256, separable=False, dropout=0.5,
                 norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        norm = dict(norm_layer=norm_layer, norm_kwargs=norm_kwargs)
        with self.name_scope():
            self.branches = HybridConcurrent(axis=1)
            self.branches.add(conv_norm_relu(in_channels, channels, 1, **norm))
            for rate in atrous_rates:
                self.branches.add(conv_norm_relu(in_channels, channels, 3, dilation=rate, separable=separable,
                                                 **norm))
            self.branches.add(ASPPPooling(in_channels, channels, **norm))
            self.project = nn.HybridSequential()
            self.project.add(nn.Conv2D(channels, 1, use_bias=False, in_channels=(len(atrous_rates) + 2) * channels),
                             norm_layer(in_channels=channels, **(norm_kwargs or {})),
                             nn.Activation('relu'),
                             nn.Dropout(dropout))

    def hybrid_forward(self, F, x):
        return self.project(self.branches(x))


class DeepLabV3Head(HybridBlock):
    """ASPP -> 3x3 conv -> norm -> ReLU -> dropout 0.1 -> 1x1 conv (with bias) to the classes.

    Parameters
    ----------
    in_channels : int
        Channels of c4.
    num_classes : int
        Output channels (logits).
    atrous_rates : tuple of 3 int
        ASPP dilations.
    channels : int
        ASPP and head width (256).
    norm_layer, norm_kwargs
        Normalisation layer class and its keyword arguments.

    Shapes
    ------
    ``(B, in_channels, h, w) -> (B, num_classes, h, w)``.
    """

    def __init__(self, in_channels, num_classes, atrous_rates=(12, 24, 36), channels=256,
                 norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        self.in_index = (3,)
        with self.name_scope():
            self.aspp = ASPP(in_channels, atrous_rates, channels, norm_layer=norm_layer, norm_kwargs=norm_kwargs)
            self.block = classifier_block(channels, channels, num_classes, norm_layer, norm_kwargs)

    def hybrid_forward(self, F, x):
        return self.block(self.aspp(x))
