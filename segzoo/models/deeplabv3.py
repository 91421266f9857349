"""DeepLabV3: Rethinking Atrous Convolution for Semantic Image Segmentation (arXiv:1706.05587).

``ASPP`` is the one atrous spatial pyramid pooling module of segzoo; DeepLabV3+ reuses it with
``separable=True``. The image-pooling branch is resized to the feature map it came from at run time,
so one network serves every input size.
"""
from mxnet.gluon import nn
from mxnet.gluon.contrib.nn import HybridConcurrent
from mxnet.gluon.nn import HybridBlock

from .fcn import classifier_block
from .layers import AtrousConv2D, resize_like


def conv_norm_relu(in_channels, channels, kernel_size=1, dilation=1, separable=False,
                   norm_layer=nn.BatchNorm, norm_kwargs=None):
    """Conv (padding keeps the size) -> norm -> ReLU, or its depthwise-separable form.

    The separable form is a depthwise ``kernel_size`` conv -> norm -> ReLU followed by a pointwise
    1x1 conv -> norm -> ReLU (Xception / DeepLabV3+, arXiv:1802.02611). The convs are ``AtrousConv2D``.
    """
    norm_kwargs = norm_kwargs or {}
    block = nn.HybridSequential()
    if separable:
        block.add(AtrousConv2D(in_channels, kernel_size, dilation=dilation, groups=in_channels, use_bias=False,
                               in_channels=in_channels),
                  norm_layer(in_channels=in_channels, **norm_kwargs),
                  nn.Activation('relu'))
        kernel_size, dilation = 1, 1  # the pointwise conv follows
    block.add(AtrousConv2D(channels, kernel_size, dilation=dilation, use_bias=False, in_channels=in_channels),
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
        return resize_like(F, self.gap(x), x, align_corners=True)


class ASPP(HybridBlock):
    """Atrous spatial pyramid pooling: a 1x1 branch, atrous 3x3 branches and an image-pool branch, concatenated
    and projected by conv -> norm -> ReLU (-> dropout).

    GluonCV's DeepLabV3 ASPP is the default: pool branch last, 1x1 projection, dropout 0.5. mmsegmentation's
    ``ASPPHead`` / ``DepthwiseSeparableASPPHead`` (Composer's DeepLabV3 / V3+) put the pool branch first and
    project with a 3x3 conv and no dropout: ``pool_first=True, project_kernel=3, dropout=0``.

    Parameters
    ----------
    in_channels : int
        Channels of the input feature map (c4).
    atrous_rates : tuple of int
        Dilations of the 3x3 branches; (12, 24, 36) at output stride 8.
    channels : int
        Channels of every branch and of the output.
    separable : bool
        Depthwise-separable 3x3 branches (DeepLabV3+).
    dropout : float
        Dropout after the projection; 0 leaves the layer out.
    pool_first : bool
        Concatenate the image-pool branch first instead of last.
    project_kernel : int
        Kernel of the projection conv (1 or 3).
    norm_layer, norm_kwargs
        Normalisation layer class and its keyword arguments.

    Shapes
    ------
    ``(B, in_channels, h, w) -> (B, channels, h, w)``.
    """

    def __init__(self, in_channels, atrous_rates=(12, 24, 36), channels=256, separable=False, dropout=0.5,
                 pool_first=False, project_kernel=1, norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        norm = dict(norm_layer=norm_layer, norm_kwargs=norm_kwargs)
        with self.name_scope():
            self.branches = HybridConcurrent(axis=1)
            pool = ASPPPooling(in_channels, channels, **norm)
            if pool_first:
                self.branches.add(pool)
            self.branches.add(conv_norm_relu(in_channels, channels, 1, **norm))
            for rate in atrous_rates:
                self.branches.add(conv_norm_relu(in_channels, channels, 3, dilation=rate, separable=separable,
                                                 **norm))
            if not pool_first:
                self.branches.add(pool)
            self.project = conv_norm_relu((len(atrous_rates) + 2) * channels, channels, project_kernel, **norm)
            if dropout:
                self.project.add(nn.Dropout(dropout))

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
        with self.name_scope():
            self.aspp = ASPP(in_channels, atrous_rates, channels, norm_layer=norm_layer, norm_kwargs=norm_kwargs)
            self.block = classifier_block(channels, channels, num_classes, norm_layer, norm_kwargs)

    def hybrid_forward(self, F, x):
        return self.block(self.aspp(x))


class ASPPHead(HybridBlock):
    """Composer's DeepLabV3 head (mmsegmentation's ``ASPPHead``): ASPP at width 512 with the pool branch first
    and a 3x3 projection, then channel dropout (``Dropout2d``) and a 1x1 classifier (with bias).

    Not GluonCV's DeepLabV3 head (``DeepLabV3Head``): no 1x1 projection with dropout 0.5 and no extra 3x3 block.
    ``conv_seg`` is mmsegmentation's name of the classifier.

    Shapes
    ------
    ``(B, in_channels, h, w) -> (B, num_classes, h, w)``.
    """

    def __init__(self, in_channels, num_classes, atrous_rates=(12, 24, 36), channels=512, dropout=0.1,
                 norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.aspp = ASPP(in_channels, atrous_rates, channels, dropout=0, pool_first=True, project_kernel=3,
                             norm_layer=norm_layer, norm_kwargs=norm_kwargs)
            self.dropout = channel_dropout(dropout)
            self.conv_seg = nn.Conv2D(num_classes, 1, in_channels=channels)

    def hybrid_forward(self, F, x):
        return self.conv_seg(self.dropout(self.aspp(x)))


def channel_dropout(rate):
    """torch's ``Dropout2d``: one mask per (sample, channel), shared over the spatial axes."""
    return nn.Dropout(rate, axes=(2, 3))
