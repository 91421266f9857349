"""Segmentation losses: per-pixel softmax cross-entropy with an auxiliary head, and softmax dice.

The dice loss follows V-Net: Fully Convolutional Neural Networks for Volumetric Medical Image
Segmentation (arXiv:1606.04797), in the form MosaicML Composer uses for its DeepLabV3+ ADE20K recipe:
softmax probabilities, one dice score per class computed over the whole batch, classes absent from
the batch's labels left out, ignored pixels left out.

Every loss here is a HybridBlock applied to the outputs of ONE device chunk and returns a (B,) array
whose sum is that chunk's loss. ``train.py`` calls ``backward`` per device and
``trainer.step(global_batch)``, which gives GluonCV's step gradient ``(1/B) * sum_d grad(loss_d)``.
"""
from mxnet import gluon

from .data import IGNORE_LABEL

DICE_EPS = 1e-5  # Composer's smoothing term, added to numerator and denominator


def _valid_mask(F, label, ignore_label):
    """(B, H, W) float32: 1 where the pixel has a label, 0 where it is `ignore_label`."""
    return F.cast(label != ignore_label, 'float32')


class SoftmaxCrossEntropy2D(gluon.HybridBlock):
    """Per-pixel softmax cross-entropy normalised by the chunk's count of labelled pixels.

    ``(logits (B, C, H, W), label (B, H, W)) -> (B,)``: sample b's cross-entropy summed over its labelled pixels,
    divided by the labelled pixels of the whole chunk, so the outputs sum to the chunk's mean. Pixels labelled
    `ignore_label` count nowhere; an all-ignored chunk gives 0 and zero gradients.
    """

    def __init__(self, ignore_label=IGNORE_LABEL, **kwargs):
        super().__init__(**kwargs)
        self._ignore_label = ignore_label

    def hybrid_forward(self, F, logits, label):
        valid = _valid_mask(F, label, self._ignore_label)
        log_prob = F.log_softmax(F.cast(logits, 'float32'), axis=1)
        # pick clips the ignore label to class 0; those pixels are zeroed by `valid`.
        nll = -F.pick(log_prob, label, axis=1) * valid
        num_valid = F.maximum(F.sum(valid), 1.0)
        return F.broadcast_div(F.sum(nll, axis=(1, 2)), num_valid)


class GluonCVSoftmaxCrossEntropy2D(gluon.HybridBlock):
    """GluonCV's segmentation cross-entropy (``gluoncv/loss.py``, ``SoftmaxCrossEntropyLoss``), value for value
    and gradient for gradient; called like :class:`SoftmaxCrossEntropy2D`.

    The value: each sample's cross-entropy over its labelled pixels divided by ALL its pixels. The gradient comes
    from the same ``SoftmaxOutput`` operator, ``(softmax - onehot) / N_valid`` (labelled pixels of the chunk),
    whatever gradient arrives from above: a weight on this block's output changes the value, never the gradient.
    That is why GluonCV's ``aux_weight`` has no effect on training (GluonCV issues #1665 and #1668).
    """

    def __init__(self, ignore_label=IGNORE_LABEL, **kwargs):
        super().__init__(**kwargs)
        self._ignore_label = ignore_label

    def hybrid_forward(self, F, logits, label):
        logits = F.cast(logits, 'float32')
        prob = F.SoftmaxOutput(logits, F.cast(label, 'float32'), ignore_label=self._ignore_label,
                               multi_output=True, use_ignore=True, normalization='valid')
        valid = _valid_mask(F, label, self._ignore_label)
        nll = -F.pick(F.log_softmax(logits, axis=1), label, axis=1) * valid
        # The value is computed with log_softmax (finite where GluonCV's log(softmax) may overflow to
        # inf) and carries no gradient; the probabilities join the graph with weight 0 so that
        # SoftmaxOutput's backward, which ignores that weight, supplies the gradient.
        value = F.BlockGrad(F.mean(nll, axis=(1, 2)))
        return value + 0 * F.sum(prob, axis=(1, 2, 3))


class SoftmaxDiceLoss(gluon.HybridBlock):
    """Composer's multi-class dice loss on softmax probabilities, over the whole chunk.

    With p = softmax(logits), t the one-hot label (all zeros on ignored pixels) and m the labelled
    mask, for each class c, summing over batch and pixels::

        dice_c = 1 - (2 * sum(t_c * p_c) + eps) / (sum(t_c) + sum(m * p_c) + eps),   eps = 1e-5

    and the loss is the mean of dice_c over the classes with sum(t_c) > 0. This is Composer's
    ``DiceLoss(softmax=True, batch=True, ignore_absent_classes=True)`` on one-hot targets whose
    ignored pixels are all zero. Where every class is absent (every pixel ignored) Composer returns
    NaN; this block returns 0 with zero gradients.

    ``(logits (B, C, H, W), label (B, H, W)) -> (B,)``: the chunk's one loss spread equally over its samples
    (each gets loss / B), so the outputs sum to it.
    """

    def __init__(self, ignore_label=IGNORE_LABEL, **kwargs):
        super().__init__(**kwargs)
        self._ignore_label = ignore_label

    def hybrid_forward(self, F, logits, label):
        prob = F.softmax(F.cast(logits, 'float32'), axis=1)
        classes = F.reshape(F.contrib.arange_like(prob, axis=1), (1, -1, 1, 1))
        # Ignored pixels match no class, so their one-hot rows are zero.
        onehot = F.broadcast_equal(classes, F.expand_dims(F.cast(label, 'float32'), axis=1))
        valid = F.expand_dims(_valid_mask(F, label, self._ignore_label), axis=1)
        inter = F.sum(onehot * prob, axis=(0, 2, 3))
        ground = F.sum(onehot, axis=(0, 2, 3))
        pred = F.sum(F.broadcast_mul(prob, valid), axis=(0, 2, 3))
        dice = 1.0 - (2.0 * inter + DICE_EPS) / (ground + pred + DICE_EPS)
        present = ground > 0
        loss = F.sum(dice * present) / F.maximum(F.sum(present), 1.0)
        per_sample = F.ones_like(F.sum(prob, axis=(1, 2, 3)))
        return F.broadcast_mul(F.broadcast_div(per_sample, F.sum(per_sample)), loss)


class MixSoftmaxCrossEntropyLoss(gluon.HybridBlock):
    """Segmentation loss of a (main[, aux]) output tuple: cross-entropy, auxiliary cross-entropy, dice.

    For one device chunk::

        loss = cross_entropy_weight * CE(main) + aux_weight * CE(aux) + dice_weight * dice(main)

    where CE is the cross-entropy summed over the chunk's labelled pixels and divided by their
    number (GluonCV's normalisation), and dice is :class:`SoftmaxDiceLoss`. As in Composer, whose
    model has no auxiliary head, the dice term is applied to the main output only.

    Here `aux_weight` really scales the gradient of the auxiliary head. In GluonCV it does not:
    its ``SoftmaxOutput``-based loss ignores the incoming gradient, so every published GluonCV model
    (trained with ``--aux-weight 0.5``) effectively used an auxiliary weight of 1.0. To reproduce
    those runs use ``aux_weight=1.0``, or ``gluoncv_compat=True``, which reproduces GluonCV exactly.

    Parameters
    ----------
    aux : bool, default True
        Whether the model output holds an auxiliary prediction.
    aux_weight : float, default 0.5
        Weight of the auxiliary cross-entropy (value and gradient; value only in compat mode).
    ignore_label : int, default -1
        Label value of pixels that carry no supervision.
    gluoncv_compat : bool, default False
        Reproduce GluonCV's ``MixSoftmaxCrossEntropyLoss``: gradients bit for bit (main and aux each
        ``(softmax - onehot) / N_valid``, whatever `aux_weight`), and GluonCV's reported value (per
        sample: summed cross-entropy over labelled pixels divided by all pixels, ignored ones
        included, main + aux_weight * aux). Requires ``cross_entropy_weight=1``, since GluonCV's
        cross-entropy gradient cannot be scaled.
    cross_entropy_weight : float, default 1.0
    dice_weight : float, default 0.0
        Weight of the dice term; 0 skips its computation.

    Call
    ----
    ``loss(main, label)`` or ``loss(main, aux, label)``, i.e. ``loss(*outputs, label)``:
    main, aux: (B, C, H, W) logits; label: (B, H, W) with `ignore_label` for ignored pixels.
    Returns a (B,) float32 NDArray whose sum is the chunk's loss (in compat mode, the sum of
    GluonCV's per-sample values).
    """

    def __init__(self, aux=True, aux_weight=0.5, ignore_label=IGNORE_LABEL, gluoncv_compat=False,
                 cross_entropy_weight=1.0, dice_weight=0.0, **kwargs):
        super().__init__(**kwargs)
        if gluoncv_compat and cross_entropy_weight != 1.0:
            raise ValueError(f'cross_entropy_weight={cross_entropy_weight} has no effect on gradients with '
                             'gluoncv_compat=True (GluonCV cross-entropy ignores any weight): use 1.0, '
                             'or gluoncv_compat=False')
        self.aux = aux
        self.aux_weight = aux_weight
        self.gluoncv_compat = gluoncv_compat
        self.cross_entropy_weight = cross_entropy_weight
        self.dice_weight = dice_weight
        with self.name_scope():
            ce_class = GluonCVSoftmaxCrossEntropy2D if gluoncv_compat else SoftmaxCrossEntropy2D
            self.cross_entropy = ce_class(ignore_label=ignore_label)
            self.dice = SoftmaxDiceLoss(ignore_label=ignore_label) if dice_weight else None

    def hybrid_forward(self, F, *inputs):
        *outputs, label = inputs
        expected = 2 if self.aux else 1
        if len(outputs) != expected:
            raise ValueError(f'MixSoftmaxCrossEntropyLoss(aux={self.aux}) expects {expected} model output(s) '
                             f'before the label, got {len(outputs)}: call it as loss(*outputs, label) and '
                             'make `aux` match the model')
        loss = self.cross_entropy(outputs[0], label)
        if self.cross_entropy_weight != 1.0:
            loss = self.cross_entropy_weight * loss
        if self.aux:
            loss = loss + self.aux_weight * self.cross_entropy(outputs[1], label)
        if self.dice is not None:
            loss = loss + self.dice_weight * self.dice(outputs[0], label)
        return loss
