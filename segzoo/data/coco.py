"""MS COCO 2017 instances turned into 21-class VOC segmentation masks (for VOC pre-training).

T.-Y. Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014, arXiv:1405.0312.
"""
import json
import os
import warnings

import numpy as np

from ..utils.fileio import write_json
from .base import DatasetError, SegmentationDataset, default_root, make_label_lut, map_labels
from .pascal_voc import VOC_CLASSES

__all__ = ['COCO_CAT_LIST', 'COCOSegmentation']

# COCO category id of each VOC training id (0 = background has no category): airplane 5, bicycle 2, bird 16,
# boat 9, bottle 44, bus 6, car 3, cat 17, chair 62, cow 21, dining table 67, dog 18, horse 19, motorcycle 4,
# person 1, potted plant 64, sheep 20, couch 63 (VOC sofa), train 7, tv 72.
COCO_CAT_LIST = (0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)

_CACHE_FORMAT = 1


class COCOSegmentation(SegmentationDataset):
    """COCO mapped to the 20 VOC classes, ``coco`` (GluonCV's ``COCOSegmentation``).

    Parameters
    ----------
    root : str or None
        The COCO folder, holding ``annotations/instances_{train,val}2017.json`` and ``{train,val}2017/``;
        default ``$MXNET_HOME/datasets/coco`` (``~/.mxnet/datasets/coco``).
    split : str
        ``'train'`` (train2017; 92,516 images kept on the full data) or ``'val'`` (val2017).
    mode, transform, base_size, crop_size, gluoncv_mask_pad, transforms
        See :class:`segzoo.data.base.SegmentationDataset`. Mode ``'test'`` returns ``(image, file name)``.
    include_crowd : bool
        True (default, as GluonCV): crowd annotations (``iscrowd=1``, RLE) are painted with their class like any
        other instance. False: they are left out of the mask.
    min_pixels : int
        An image is kept when more than this many pixels belong to one of the 20 classes (GluonCV: 1000).

    Notes
    -----
    The mask of an image is built on every access: for each annotation in file order whose category is in
    ``CAT_LIST``, its pixels that no earlier annotation painted get the VOC id (the first annotation wins); all
    other pixels are background 0. There is no ignore value.

    The list of kept image ids is computed once (with a progress bar: every mask of the split is built) and
    cached in ``annotations/segzoo_<split>_ids.json``, written atomically. The cache records the annotation
    file's size and modification time and the two options above; when any of them differs, it is rebuilt.
    (GluonCV caches in ``train_ids.mx``/``val_ids.mx`` and never notices a changed annotation file; segzoo
    neither reads nor writes those files.)
    """

    NUM_CLASS = 21
    CLASSES = VOC_CLASSES
    CAT_LIST = list(COCO_CAT_LIST)
    LABEL_LUT = make_label_lut({k: k for k in range(len(VOC_CLASSES))})
    NAME = 'coco'
    SPLITS = {'train': 'train2017', 'val': 'val2017'}
    LAYOUT = ('  annotations/instances_{train,val}2017.json\n'
              '  {train,val}2017/<12-digit id>.jpg')
    PREPARE = 'python scripts/datasets/mscoco.py'

    def __init__(self, root=None, split='train', mode=None, transform=None, include_crowd=True, min_pixels=1000,
                 **kwargs):
        super().__init__(default_root('coco') if root is None else root, split, mode, transform, **kwargs)
        from pycocotools.coco import COCO

        self.include_crowd = include_crowd
        self.min_pixels = min_pixels
        self.annotation_file = self._require(
            os.path.join(self.root, 'annotations', f'instances_{self.SPLITS[split]}.json'), 'annotation file')
        image_dir = self._require(os.path.join(self.root, self.SPLITS[split]), 'image folder')
        self.coco = COCO(self.annotation_file)
        self._cat_index = {cat: i for i, cat in enumerate(self.CAT_LIST) if i > 0}
        self.cache_file = os.path.join(self.root, 'annotations', f'segzoo_{split}_ids.json')
        self.ids = self._kept_ids()
        self.images = [os.path.join(image_dir, self.coco.imgs[i]['file_name']) for i in self.ids]
        self._check_files(self.images, 'images')

    # ----------------------------------------------------------------- masks
    def _region(self, segmentation, height, width):
        """Boolean (H, W) pixels of one annotation (polygons, uncompressed or compressed RLE)."""
        from pycocotools import mask as coco_mask
        if isinstance(segmentation, list):
            if not segmentation:
                return np.zeros((height, width), dtype=bool)
            rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation.get('counts'), list):
            rle = coco_mask.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        return coco_mask.decode(rle).astype(bool)

    def seg_mask(self, image_id):
        """VOC-id mask of one COCO image.

        Parameters
        ----------
        image_id : int
            COCO image id.

        Returns
        -------
        numpy.ndarray
            uint8 (H, W), values 0..20 (H, W from the annotation file).
        """
        info = self.coco.imgs[image_id]
        height, width = info['height'], info['width']
        mask = np.zeros((height, width), dtype=np.uint8)
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id)):
            voc_id = self._cat_index.get(ann['category_id'])
            if voc_id is None or (ann.get('iscrowd', 0) and not self.include_crowd):
                continue
            try:
                region = self._region(ann['segmentation'], height, width)
            except Exception as err:  # pycocotools raises assorted types for malformed segmentations
                raise DatasetError(f'annotation {ann.get("id")} of image {image_id} in {self.annotation_file} '
                                   f'has an unreadable segmentation: {type(err).__name__}: {err}') from None
            mask[region & (mask == 0)] = voc_id
        return mask

    def _read_mask(self, index):
        return map_labels(self.seg_mask(self.ids[index]), self.LABEL_LUT, self._mask_name(index))

    def _mask_name(self, index):
        return f'(annotations of image id {self.ids[index]} in {self.annotation_file})'

    # ----------------------------------------------------------------- kept-id cache
    def _cache_key(self):
        stat = os.stat(self.annotation_file)
        return {'format': _CACHE_FORMAT, 'annotation_file': os.path.basename(self.annotation_file),
                'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns, 'min_pixels': self.min_pixels,
                'include_crowd': self.include_crowd}

    def _kept_ids(self):
        key = self._cache_key()
        cached = _read_json(self.cache_file)
        if cached is not None and cached.get('key') == key:
            return cached['ids']
        ids = self._build_ids()
        try:
            write_json(self.cache_file, {'key': key, 'ids': ids}, indent=None)
        except OSError as err:  # e.g. a read-only dataset folder: go on without a cache
            warnings.warn(f'cannot write the COCO id cache {self.cache_file} ({err}); it will be rebuilt next time')
        return ids

    def _build_ids(self):
        from tqdm import tqdm

        kept = []
        bar = tqdm(list(self.coco.imgs), desc=f'coco {self.split}: selecting images', unit='img')
        for image_id in bar:
            if np.count_nonzero(self.seg_mask(image_id)) > self.min_pixels:
                kept.append(image_id)
            bar.set_postfix(kept=len(kept), refresh=False)
        bar.close()
        return kept


def _read_json(path):
    """Parsed JSON, or None when the file is missing or unreadable (the cache is then rebuilt)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
