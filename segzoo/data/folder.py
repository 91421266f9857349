"""Your own data: a segmentation dataset read from a folder, with its class names in ``classes.txt``.

Layout of ``DIR`` (the splits are the sub-folders of ``images/``)::

    DIR/classes.txt                      one class name per line; line i is class index i
    DIR/palette.txt                      optional: one "R G B" per line (colours of the classes, in order)
    DIR/images/<split>/<name>.jpg|.jpeg|.png
    DIR/masks/<split>/<name>.png         index PNG or greyscale: value = class index, 255 = ignore

Masks saved as colours (RGB, e.g. VOC-style colours without a palette header) are read through ``palette.txt``:
a pixel with the colour of line i is class i; the VOC border colour (224, 224, 192) is ignore.

:func:`check_folder` pairs every image with its mask and lists what is wrong (with file names) before anything
trains; ``python scripts/datasets/folder.py DIR`` prints its report.
"""
import collections
import os

import numpy as np
from PIL import Image
from tqdm import tqdm

from .base import (IGNORE_LABEL, DatasetError, SegmentationDataset, make_label_lut, map_labels, read_image,
                   read_label_image)

__all__ = ['IMAGE_EXTENSIONS', 'FolderReport', 'FolderSegmentation', 'RGB_IGNORE', 'check_folder', 'colors_to_index',
           'folder_label_lut', 'list_splits', 'read_class_file', 'read_classes', 'read_label', 'read_palette',
           'read_palette_file', 'read_raw_mask']

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
RAW_IGNORE = 255
# Colour of raw value 255 in the VOC colour map: what colour-saved VOC-style masks use for "ignore".
RGB_IGNORE = (224, 224, 192)
LAYOUT = ('  classes.txt                        (one class name per line; line i = index i)\n'
          '  palette.txt                        (optional: one "R G B" per line)\n'
          '  images/<split>/<name>.jpg|.jpeg|.png\n'
          '  masks/<split>/<name>.png           (value = class index, 255 = ignore)')
_MAX_LISTED = 20


def read_classes(root):
    """Class names from ``root/classes.txt`` (blank lines dropped); a one-line error names the file at fault.

    Returns
    -------
    tuple of str
    """
    if root is None:
        raise ValueError('the folder dataset needs its root: --dataset-root DIR (root=DIR in Python)')
    path = os.path.join(os.path.expanduser(root), 'classes.txt')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} not found: a folder dataset lists its class names there, one per line. '
                                f'Expected layout under {root}:\n{LAYOUT}')
    return read_class_file(path)


def read_class_file(path):
    """Class names of a classes.txt-style file (one per line, blank lines dropped), checked."""
    with open(path, encoding='utf-8') as f:
        names = tuple(line.strip() for line in f if line.strip())
    if not names:
        raise DatasetError(f'{path} lists no class names')
    if len(names) > RAW_IGNORE:
        raise DatasetError(f'{path} lists {len(names)} classes; at most {RAW_IGNORE} fit in 8-bit masks '
                           f'(255 is ignore)')
    repeated = sorted(name for name, count in collections.Counter(names).items() if count > 1)
    if repeated:
        raise DatasetError(f'{path} repeats the class names {repeated}')
    return names


def read_palette(root, num_classes):
    """Colours of the classes from the optional ``root/palette.txt``, or None when the file is absent.

    Returns
    -------
    tuple of (r, g, b) or None
        One colour per class (extra lines are ignored).
    """
    path = os.path.join(os.path.expanduser(root), 'palette.txt')
    return read_palette_file(path, num_classes) if os.path.isfile(path) else None


def read_palette_file(path, num_classes):
    """``num_classes`` colours (r, g, b) of a palette.txt-style file (one "R G B" per line), checked."""
    colors = []
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.replace(',', ' ').split()
            try:
                rgb = tuple(int(v) for v in parts)
            except ValueError:
                rgb = ()
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise DatasetError(f'{path} line {number}: expected "R G B" with values 0-255, got {line.strip()!r}')
            colors.append(rgb)
    if len(colors) < num_classes:
        raise DatasetError(f'{path} has {len(colors)} colours for the {num_classes} classes of classes.txt')
    return tuple(colors[:num_classes])


def folder_label_lut(num_classes):
    """Raw value -> training id table of folder masks: 0..num_classes-1 are classes, 255 is ignore."""
    return make_label_lut({**{k: k for k in range(num_classes)}, RAW_IGNORE: IGNORE_LABEL})


def _rgb_codes(colors):
    return np.array([(r << 16) | (g << 8) | b for r, g, b in colors], dtype=np.int64)


def colors_to_index(rgb, colors, path):
    """Raw index mask (H, W) uint8 of a colour mask (H, W, 3|4): colour i -> i, ``RGB_IGNORE`` -> 255."""
    if colors is None:
        raise DatasetError(f'mask {path} is a colour image: add palette.txt (one "R G B" per class) to the dataset '
                           f'folder to read colour masks, or save index/greyscale PNGs')
    rgb = np.asarray(rgb)[..., :3].astype(np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    table = _rgb_codes(colors)
    order = np.argsort(table, kind='stable')
    pos = np.clip(np.searchsorted(table[order], codes), 0, len(table) - 1)
    found = table[order][pos] == codes
    index = np.where(found, order[pos], RAW_IGNORE).astype(np.uint8)
    ignore_code = _rgb_codes([RGB_IGNORE])[0]
    unknown = ~found & (codes != ignore_code)
    if unknown.any():
        bad = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in np.unique(codes[unknown])[:8]]
        raise DatasetError(f'mask {path} has colours {bad} that are not in palette.txt (nor the ignore colour '
                           f'{RGB_IGNORE})')
    return index


def read_label(path, lut, colors=None):
    """Training ids (int32 (H, W), -1 ignore) of a mask file: raw values (colours via `colors`) through `lut`."""
    return map_labels(read_raw_mask(path, colors), lut, path)


def read_raw_mask(path, colors=None):
    """Raw mask values (H, W) of a folder mask: index/greyscale PNGs as stored, colour masks via ``colors``."""
    raw = read_label_image(path)
    if raw.ndim == 3 and raw.shape[2] in (3, 4):
        return colors_to_index(raw, colors, path)
    return raw


def _list_images(folder):
    """``{stem: path}`` of the images directly in ``folder``, and the stems that have several files."""
    found, repeated = {}, []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS and not name.startswith('.'):
            if stem in found:
                repeated.append(os.path.join(folder, name))
            else:
                found[stem] = os.path.join(folder, name)
    return found, repeated


def _list_masks(folder):
    if not os.path.isdir(folder):
        return None
    return {os.path.splitext(n)[0]: os.path.join(folder, n) for n in sorted(os.listdir(folder))
            if n.lower().endswith('.png') and not n.startswith('.')}


def list_splits(root):
    """Sorted split names (the sub-folders of ``root/images``)."""
    folder = os.path.join(os.path.expanduser(root), 'images')
    if not os.path.isdir(folder):
        return ()
    return tuple(sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n))
                        and not n.startswith('.')))


class FolderSegmentation(SegmentationDataset):
    """A segmentation dataset in a folder, ``folder`` (the layout is in the module docstring).

    Parameters
    ----------
    root : str
        The dataset folder (required): ``classes.txt``, ``images/<split>/``, ``masks/<split>/``.
    split : str
        A sub-folder of ``root/images`` (e.g. ``'train'``, ``'val'``).
    mode, transform, base_size, crop_size, gluoncv_mask_pad
        See :class:`segzoo.data.base.SegmentationDataset`; every mode works. Mode ``'test'`` needs no masks.

    Attributes
    ----------
    CLASSES, NUM_CLASS : tuple of str, int
        Read from ``classes.txt`` (per instance: every folder has its own classes).
    colors : tuple of (r, g, b) or None
        The colours of ``palette.txt``, if present.
    """

    NAME = 'folder'
    NUM_CLASS = None          # per instance, from classes.txt
    LAYOUT = LAYOUT
    PREPARE = 'python scripts/datasets/folder.py DIR (checks the folder and lists what is wrong)'

    def __init__(self, root=None, split='train', mode=None, transform=None, **kwargs):
        self.CLASSES = read_classes(root)
        self.NUM_CLASS = len(self.CLASSES)
        self.colors = read_palette(root, self.NUM_CLASS)
        self.LABEL_LUT = folder_label_lut(self.NUM_CLASS)
        self.SPLITS = list_splits(root)
        if not self.SPLITS:
            raise FileNotFoundError(f'{os.path.join(root, "images")} has no split folders; expected layout under '
                                    f'{root}:\n{LAYOUT}')
        super().__init__(root, split, mode, transform, **kwargs)
        images, _ = _list_images(os.path.join(self.root, 'images', split))
        if not images:
            raise self._missing(os.path.join(self.root, 'images', split, '*.jpg|*.jpeg|*.png'), 'images')
        self.images = list(images.values())
        if self.mode != 'test':
            mask_dir = os.path.join(self.root, 'masks', split)
            self.masks = [os.path.join(mask_dir, stem + '.png') for stem in images]
            self._check_files(self.masks, 'masks')

    @property
    def classes(self):
        """Class names, index = training id (from classes.txt)."""
        return self.CLASSES

    def _read_mask(self, index):
        return read_label(self.masks[index], self.LABEL_LUT, self.colors)


# ------------------------------------------------------------------------------------------------ checker
class FolderReport:
    """What :func:`check_folder` found.

    Attributes
    ----------
    classes : tuple of str
    counts : dict
        ``{split: {'images': n, 'masks': n or None (no masks folder), 'pairs': n}}``.
    problems : dict
        ``{kind: [message naming the file, ...]}``; empty when the folder is usable.
    histogram : numpy.ndarray
        int64 (num_classes + 1,): labelled pixels per class over the checked masks, the last entry ignore (255).
    """

    def __init__(self, classes):
        self.classes = classes
        self.counts = {}
        self.problems = collections.defaultdict(list)
        self.histogram = np.zeros(len(classes) + 1, dtype=np.int64)

    @property
    def ok(self):
        return not any(self.problems.values())

    def format(self, problems_only=False):
        """The report as text: problems by kind (file names, at most 20 per kind), then counts and histogram."""
        lines = []
        for kind, items in self.problems.items():
            if not items:
                continue
            lines.append(f'{kind}: {len(items)}')
            lines.extend(f'  {item}' for item in items[:_MAX_LISTED])
            if len(items) > _MAX_LISTED:
                lines.append(f'  ... and {len(items) - _MAX_LISTED} more')
        if problems_only:
            return '\n'.join(lines)
        lines.append(f'{len(self.classes)} classes; per split: images / masks / pairs')
        for split, c in self.counts.items():
            masks = 'no masks folder (mode test only)' if c['masks'] is None else f'{c["masks"]} / {c["pairs"]}'
            lines.append(f'  {split:<12} {c["images"]} / {masks}')
        total = int(self.histogram.sum())
        if total:
            lines.append('class pixel histogram (all checked masks):')
            names = list(self.classes) + ['(ignore 255)']
            width = max(len(n) for n in names)
            for name, count in zip(names, self.histogram):
                lines.append(f'  {name:<{width}} {int(count):>12} {100.0 * count / total:6.2f} %')
        lines.append('OK' if self.ok else f'{sum(len(v) for v in self.problems.values())} problems')
        return '\n'.join(lines)


def _image_size(path, decode):
    """(width, height) of an image file: the header only, or a full decode (catches truncated files)."""
    if decode:
        return read_image(path).size
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f'cannot read image {path}: {type(err).__name__}: {err}') from None


def check_folder(root, splits=None, decode_images=True, progress=True):
    """Check a folder dataset: pairing, readability, sizes and label values, with the file names at fault.

    Parameters
    ----------
    root : str
        The dataset folder.
    splits : sequence of str or None
        Splits to check; None: all of them.
    decode_images : bool
        Decode every image completely (finds truncated files); False reads image headers only (cheap: what
        train.py runs at start). Masks are always decoded (their values are checked).
    progress : bool
        Show a progress bar.

    Returns
    -------
    FolderReport
    """
    classes = read_classes(root)
    report = FolderReport(classes)
    try:
        colors = read_palette(root, len(classes))
    except DatasetError as err:
        report.problems['bad palette.txt'].append(str(err))
        colors = None
    valid = np.zeros(256, dtype=bool)
    valid[:len(classes)] = valid[RAW_IGNORE] = True
    available = list_splits(root)
    if not available:
        report.problems['no splits'].append(f'{os.path.join(root, "images")} has no sub-folders (one per split)')
    for split in available if splits is None else splits:
        if split not in available:
            report.problems['missing splits'].append(f'{os.path.join(root, "images", split)} does not exist '
                                                     f'(splits: {", ".join(available) or "none"})')
            continue
        _check_split(root, split, report, colors, valid, decode_images, progress)
    return report


def _check_split(root, split, report, colors, valid, decode_images, progress):
    images, repeated = _list_images(os.path.join(root, 'images', split))
    masks = _list_masks(os.path.join(root, 'masks', split))
    for path in repeated:
        report.problems['images with the same name'].append(path)
    pairs = [] if masks is None else [(images[s], masks[s]) for s in images if s in masks]
    report.counts[split] = {'images': len(images), 'masks': None if masks is None else len(masks),
                            'pairs': len(pairs)}
    if masks is not None:
        report.problems['images without masks'].extend(images[s] for s in images if s not in masks)
        report.problems['masks without images'].extend(masks[s] for s in masks if s not in images)
    else:
        for path in images.values():     # a split without masks (mode test): every image must still be readable
            _try(report, lambda p=path: _image_size(p, decode_images))
    for image_path, mask_path in tqdm(pairs, desc=f'checking {split}', disable=not progress, leave=False):
        size = _try(report, lambda: _image_size(image_path, decode_images))
        raw = _try(report, lambda: read_raw_mask(mask_path, colors))
        if size is None or raw is None:
            continue
        if raw.ndim != 2:
            report.problems['unreadable files'].append(f'mask {mask_path} has shape {raw.shape}, not (H, W)')
            continue
        if (raw.shape[1], raw.shape[0]) != size:
            report.problems['size mismatches'].append(f'image {image_path} is {size[0]}x{size[1]} but mask '
                                                      f'{mask_path} is {raw.shape[1]}x{raw.shape[0]} (WxH)')
        values, counts = np.unique(raw, return_counts=True)
        bad = values[(values < 0) | (values > 255) | ~valid[np.clip(values, 0, 255).astype(np.int64)]]
        if bad.size:
            report.problems['values outside the classes'].append(
                f'{mask_path}: {bad.tolist()[:10]} (valid: 0-{len(report.classes) - 1} and 255)')
            continue
        index = np.where(values == RAW_IGNORE, len(report.classes), values).astype(np.int64)
        np.add.at(report.histogram, index, counts)


def _try(report, read):
    """``read()``, or None after recording its error (which names the file) as an unreadable file."""
    try:
        return read()
    except (DatasetError, FileNotFoundError) as err:
        report.problems['unreadable files'].append(str(err))
        return None
