"""segzoo: GluonCV-faithful semantic segmentation on MXNet/Gluon.

Data flow of ``train.py`` (each step lives in one module with a plain name)::

    segzoo.data            get_segmentation_dataset(name, split, mode, root, transform, base_size, crop_size,
                           transforms)
      .transforms          joint (image, label, rng) transforms composed into GluonCV's and Composer's pipelines
      .loader              DataLoader seeded per sample from (seed, epoch, index); errors name the file
    segzoo.model_zoo       get_model(name) / get_segmentation_model(model, dataset, backbone, aux)
      segzoo.models        backbone (dilated ResNetV1s) -> head (FCN / PSP / DeepLabV3 / V3+) -> Segmentor
    segzoo.loss            MixSoftmaxCrossEntropyLoss (+ optional dice)
    segzoo.optimizer       make_optimizer: sgd, adam, sgdw (Composer's decoupled weight decay)
    segzoo.lr_scheduler    poly / cosine with linear warm-up and a final fraction, GluonCV's or Composer's timing
    segzoo.checkpoint      TrainState and the atomic, resumable checkpoint that saves it
    segzoo.utils.metrics   SegmentationMetric (pixAcc, mIoU, per-class IoU)
    segzoo.inference       single / multi-scale / flip / sliding-window prediction (test.py)
"""
import importlib

__version__ = '0.1.0'

_EXPORTS = {
    'get_model': 'segzoo.model_zoo',
    'list_models': 'segzoo.model_zoo',
    'get_segmentation_model': 'segzoo.model_zoo',
    'get_segmentation_dataset': 'segzoo.data',
    'composer_deeplabv3': 'segzoo.composer',
    'load_torch_state_dict': 'segzoo.models.torch_weights',
}


def __getattr__(name):
    # Lazy re-exports: `import segzoo` stays cheap and does not import MXNet until it is needed.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
