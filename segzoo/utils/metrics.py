"""Pixel accuracy and mean IoU accumulated over a dataset, with the semantics of GluonCV's
``SegmentationMetric`` (``gluoncv/utils/metrics/segmentation.py``).

All counts live in one confusion matrix (rows = ground truth, columns = prediction, labelled pixels
only), filled with ``np.bincount``. GluonCV's quantities follow from it: correct pixels = trace,
labelled pixels = total, intersection = diagonal, union = row sum + column sum - diagonal.
"""
import numpy as np
import mxnet as mx

from ..data import IGNORE_LABEL

EPS = np.spacing(1)  # GluonCV's guard against 0 / 0


def _to_numpy(x):
    return x.asnumpy() if isinstance(x, mx.nd.NDArray) else np.asarray(x)


def _class_ids(pred, label_ndim):
    """Class ids with the label's shape, from logits (class axis just before H, W) or from ids."""
    if pred.ndim == label_ndim + 1:
        class_axis = pred.ndim - 3
        if isinstance(pred, mx.nd.NDArray):
            # argmax on the device moves only the ids to numpy; ties resolve to the first class
            # as with np.argmax.
            return mx.nd.argmax(pred, axis=class_axis).asnumpy().astype(np.int64)
        return np.argmax(pred, axis=class_axis).astype(np.int64)
    if pred.ndim == label_ndim:
        pred = _to_numpy(pred)
        if np.issubdtype(pred.dtype, np.floating) and not np.array_equal(pred, np.round(pred)):
            raise ValueError('predictions with the label\'s shape must be integer class ids; got '
                             'non-integer values (pass logits with a class axis instead)')
        return pred.astype(np.int64)
    raise ValueError(f'prediction of shape {tuple(pred.shape)} does not fit a label of {label_ndim} dims: '
                     'expected logits (N, C, H, W) for labels (N, H, W), or class ids of the label\'s shape')


class SegmentationMetric:
    """Pixel accuracy and mIoU over everything passed to :meth:`update`, as GluonCV computes them.

    IoU is computed per class on dataset totals (not averaged per image). Pixels labelled -1 are
    ignored, predictions on them included. By default (GluonCV) a class absent from both labels and
    predictions has IoU 0 and still counts in the mean, which deflates mIoU on small subsets;
    ``present_only=True`` averages only the classes present in the labels or in the predictions
    on labelled pixels.

    Labels outside [0, C) other than -1 (e.g. an unconverted VOC border 255) and predicted ids
    outside [0, C) raise ValueError; GluonCV would silently count such labels as wrong pixels.

    Parameters
    ----------
    nclass : int
        Number of classes C (GluonCV's name for it).
    present_only : bool, default False
        Average IoU only over classes whose union is non-empty.

    Attributes
    ----------
    confusion_matrix : numpy.ndarray, (C, C) int64
        ``confusion_matrix[g, p]`` counts labelled pixels of ground truth g predicted as p.
    """

    def __init__(self, nclass, present_only=False):
        if int(nclass) < 1:
            raise ValueError(f'nclass must be a positive integer, got {nclass}')
        self.nclass = int(nclass)
        self.present_only = present_only
        self.reset()

    def reset(self):
        """Forget every update."""
        self.confusion_matrix = np.zeros((self.nclass, self.nclass), dtype=np.int64)

    def update(self, labels, preds):
        """Add a batch, or lists of per-device batches, to the totals.

        Parameters
        ----------
        labels : NDArray or numpy.ndarray (N, H, W), or a list/tuple of them
            Ground-truth class ids in [0, C), -1 for ignored pixels.
        preds : same container as `labels`
            Logits (N, C, H, W), NDArray or numpy, reduced with argmax over the class axis; or, as a
            convenience GluonCV lacks, class ids already of the label's shape (N, H, W). A single
            image without batch axis ((C, H, W) logits with (H, W) labels) works too.
        """
        if isinstance(preds, (list, tuple)):
            if not isinstance(labels, (list, tuple)) or len(labels) != len(preds):
                raise ValueError('update(labels, preds): with a list of predictions, labels must be a list '
                                 'of the same length')
            for label, pred in zip(labels, preds):
                self._update_one(label, pred)
        else:
            self._update_one(labels, preds)

    def _update_one(self, label, pred):
        label = _to_numpy(label).astype(np.int64)
        pred = _class_ids(pred, label.ndim)
        if pred.shape != label.shape:
            raise ValueError(f'prediction of shape {pred.shape} does not match the label shape {label.shape}')
        self._check_range(label, 'labels', allow_ignore=True)
        self._check_range(pred, 'predicted class ids', allow_ignore=False)
        num = self.nclass
        labelled = label != IGNORE_LABEL
        # Ignored pixels go to an extra bin that is dropped, which avoids boolean indexing.
        index = np.where(labelled, label * num + pred, num * num)
        counts = np.bincount(index.ravel(), minlength=num * num + 1)
        self.confusion_matrix += counts[:num * num].reshape(num, num)

    def _check_range(self, ids, what, allow_ignore):
        low = IGNORE_LABEL if allow_ignore else 0
        if ids.size and (ids.min() < low or ids.max() >= self.nclass):
            bad = np.unique(ids[(ids < low) | (ids >= self.nclass)])[:10]
            raise ValueError(f'{what} outside [0, {self.nclass})' + (' (other than -1, ignored)' if allow_ignore
                                                                     else '') + f': {bad.tolist()}')

    def _areas(self):
        inter = np.diag(self.confusion_matrix)
        union = self.confusion_matrix.sum(axis=0) + self.confusion_matrix.sum(axis=1) - inter
        return inter, union

    def get_class_iou(self):
        """Per-class IoU, numpy float64 (C,); classes never seen have IoU 0 (as GluonCV)."""
        inter, union = self._areas()
        return 1.0 * inter / (EPS + union)

    def get(self):
        """Returns (pixAcc, mIoU) as Python floats, over everything seen since the last reset."""
        correct = np.trace(self.confusion_matrix)
        labelled = self.confusion_matrix.sum()
        pix_acc = 1.0 * correct / (EPS + labelled)
        iou = self.get_class_iou()
        if self.present_only:
            present = self._areas()[1] > 0
            miou = iou[present].mean() if present.any() else 0.0
        else:
            miou = iou.mean()
        return float(pix_acc), float(miou)


def class_iou_table(class_iou, class_names=None):
    """Text table with one line per class and its IoU in percent (train.py and test.py print it).

    Parameters
    ----------
    class_iou : sequence of float
        Per-class IoU in [0, 1], e.g. ``SegmentationMetric.get_class_iou()``.
    class_names : sequence of str, optional
        Names in class order; class indices are shown when omitted.
    """
    names = list(class_names) if class_names else [str(i) for i in range(len(class_iou))]
    width = max(len(n) for n in names + ['class'])
    lines = [f'  {"class":<{width}}  IoU (%)']
    lines += [f'  {name:<{width}}  {100 * iou:7.2f}' for name, iou in zip(names, class_iou)]
    return '\n'.join(lines)
