"""MosaicML Composer's DeepLabV3(+) in Gluon: ``composer_deeplabv3`` with Composer 0.17's signature and defaults.

Composer 0.17.2 (``composer/models/deeplabv3/model.py``; removed in 0.18) builds torchvision's dilated ResNet and
mmsegmentation's ``DepthwiseSeparableASPPHead`` (``use_plus=True``) or ``ASPPHead`` (``use_plus=False``), and pairs
them with a cross-entropy + dice loss. Here they are segzoo's ``deeplabplus`` and ``deeplabv3_composer`` methods on
the '*_v1b' backbones; on the same weights (``segzoo.load_torch_state_dict``) the logits equal Composer's.
"""
import mxnet as mx

from .loss import MixSoftmaxCrossEntropyLoss
from .model_zoo import get_segmentation_model
from .models import get_norm_layer
from .models.weights import TORCHVISION_WEIGHTS

ARCHS = ('resnet50', 'resnet101')


def composer_deeplabv3(num_classes, backbone_arch='resnet101', backbone_weights=None, sync_bn=True, use_plus=True,
                       ignore_index=-1, cross_entropy_weight=1.0, dice_weight=0.0, initializers=(), ctx=mx.cpu(),
                       root=None):
    """Composer's DeepLabV3+ (``use_plus=True``) or DeepLabV3, initialised on `ctx`.

    Parameters
    ----------
    num_classes : int
    backbone_arch : {'resnet50', 'resnet101'}
    backbone_weights : None, 'IMAGENET1K_V1' or 'IMAGENET1K_V2'
        torchvision's ImageNet weights for the backbone (downloaded, verified and cached by ``segzoo.torch_io``).
    sync_bn : bool
        SyncBatchNorm over the devices of `ctx` when there are several (Composer: when world_size > 1).
    use_plus : bool
        DeepLabV3+ (mmseg ``DepthwiseSeparableASPPHead``) or DeepLabV3 (mmseg ``ASPPHead``).
    ignore_index, cross_entropy_weight, dice_weight
        Of the loss, ``net.loss``: ``cross_entropy_weight * CE + dice_weight * Dice`` (Composer's ``_combo_loss``).
    initializers : sequence of str
        'kaiming_normal' and/or 'bn_ones' (``composer.models.initializers``): applied to the whole model when
        `backbone_weights` is None, else to the head only. Without them: torchvision's and mmcv's defaults.
    ctx : Context or list of Context
        segzoo's addition: where the parameters live.
    root : str, optional
        segzoo's addition: the model-file cache (``segzoo.model_store.default_root``).

    Returns
    -------
    Segmentor
        ``net(x)`` gives ``(logits,)`` at the input size; ``net.loss(*net(x), label)`` is the paired loss.
    """
    if backbone_arch not in ARCHS:
        raise ValueError(f'backbone_arch must be one of {", ".join(ARCHS)}, got {backbone_arch!r}')
    if backbone_weights is not None and backbone_weights not in TORCHVISION_WEIGHTS:
        raise ValueError(f'backbone_weights must be None or one of {", ".join(TORCHVISION_WEIGHTS)}, '
                         f'got {backbone_weights!r}')
    ctx = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]
    norm_layer, norm_kwargs = get_norm_layer(sync_bn and len(ctx) > 1, len(ctx))
    method = 'deeplabplus' if use_plus else 'deeplabv3_composer'
    net = get_segmentation_model(method, backbone=f'{backbone_arch}_v1b', num_classes=num_classes,
                                 pretrained_base=backbone_weights or False, initializers=initializers, root=root,
                                 ctx=ctx, norm_layer=norm_layer, norm_kwargs=norm_kwargs)
    net.loss = MixSoftmaxCrossEntropyLoss(aux=False, ignore_label=ignore_index,
                                          cross_entropy_weight=cross_entropy_weight, dice_weight=dice_weight)
    return net
