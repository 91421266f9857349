"""Colour palettes for label masks, image/mask overlays, and photo | ground truth | prediction panels.

``get_color_pallete`` keeps GluonCV's name and output (a PIL 'P' image with the dataset's palette),
but never modifies the mask it is given and rejects unknown dataset names instead of silently
using the VOC palette. Every function also takes ``palette=`` (a flat list, e.g. ``class_palette(colors)`` of
a folder dataset's palette.txt) instead of a dataset name.
"""
import os

import numpy as np
from PIL import Image

from ..data import IGNORE_LABEL
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD


def voc_palette(num_colors=256):
    """The Pascal VOC colour map as a flat [r0, g0, b0, r1, ...] list of 3 * num_colors ints.

    Colour i spreads the bits of i over the channels: bit 3k goes to red, bit 3k+1 to green and
    bit 3k+2 to blue, each at bit position 7-k (so 1 = (128, 0, 0) and 255 = (224, 224, 192)).
    """
    palette = []
    for index in range(num_colors):
        rgb = [0, 0, 0]
        for k in range(8):
            for channel in range(3):
                bit = (index >> (3 * k + channel)) & 1
                rgb[channel] |= bit << (7 - k)
        palette.extend(rgb)
    return palette


# ADE20K SceneParsing colours: entry 0 is "other" (label -1 after the shift GluonCV applies),
# entries 1-150 are the 150 classes in the benchmark's order (1 = wall, 2 = building, ...).
ADE20K_COLORS = (
    (0, 0, 0), (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3),  # 0-5
    (120, 120, 80), (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255),  # 6-11
    (235, 255, 7), (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140),  # 12-17
    (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51),  # 18-23
    (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92),  # 24-29
    (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),  # 30-35
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8),  # 36-41
    (0, 255, 20), (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20),  # 42-47
    (0, 163, 255), (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0),  # 48-53
    (255, 224, 0), (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255),  # 54-59
    (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112),  # 60-65
    (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255),  # 66-71
    (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0),  # 72-77
    (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0),  # 78-83
    (255, 0, 20), (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204),  # 84-89
    (0, 255, 194), (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255),  # 90-95
    (0, 122, 255), (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0),  # 96-101
    (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92),  # 102-107
    (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0),  # 108-113
    (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0),  # 114-119
    (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235),  # 120-125
    (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255),  # 126-131
    (20, 0, 255), (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255),  # 132-137
    (41, 255, 0), (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184),  # 138-143
    (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0),  # 144-149
    (92, 0, 255),  # 150-150
)

# Cityscapes colours of the 19 training ids (cityscapesScripts labels.py).
CITYSCAPES_COLORS = (
    (128, 64, 128),   # 0 road
    (244, 35, 232),   # 1 sidewalk
    (70, 70, 70),     # 2 building
    (102, 102, 156),  # 3 wall
    (190, 153, 153),  # 4 fence
    (153, 153, 153),  # 5 pole
    (250, 170, 30),   # 6 traffic light
    (220, 220, 0),    # 7 traffic sign
    (107, 142, 35),   # 8 vegetation
    (152, 251, 152),  # 9 terrain
    (0, 130, 180),    # 10 sky
    (220, 20, 60),    # 11 person
    (255, 0, 0),      # 12 rider
    (0, 0, 142),      # 13 car
    (0, 0, 70),       # 14 truck
    (0, 60, 100),     # 15 bus
    (0, 80, 100),     # 16 train
    (0, 0, 230),      # 17 motorcycle
    (119, 11, 32),    # 18 bicycle
)

# Multi-Human Parsing (MHP v1) colours of its 19 labels (0 = background, 1-18 = body parts/clothes).
MHPV1_COLORS = (
    (255, 255, 255), (165, 42, 42), (255, 0, 0), (0, 128, 0), (165, 42, 42), (255, 69, 0),
    (255, 20, 147), (30, 144, 255), (85, 107, 47), (0, 128, 128), (139, 69, 19), (70, 130, 180),
    (50, 205, 50), (0, 0, 205), (0, 191, 255), (0, 255, 255), (0, 250, 154), (173, 255, 47),
    (255, 255, 0),
)


def _flat(colors):
    return [value for rgb in colors for value in rgb]


_VOC = voc_palette(256)

# dataset name -> (flat palette, offset added to the class ids before colouring).
# -1 (ignore) maps to 255 for offset 0, as GluonCV shows it (VOC: the cream border colour).
PALETTES = {
    'pascal_voc': (_VOC, 0),
    'pascal_aug': (_VOC, 0),
    'coco': (_VOC, 0),
    'ade20k': (_flat(ADE20K_COLORS), 1),
    'citys': (_flat(CITYSCAPES_COLORS), 0),
    'mhpv1': (_flat(MHPV1_COLORS), 0),
}


def class_palette(colors=None):
    """Flat 256-colour palette: `colors` (a sequence of (r, g, b), one per class) first, then the VOC colour map
    (which also gives index 255, ignore, its cream colour); ``colors=None`` is the VOC colour map itself."""
    palette = list(_VOC)
    for index, rgb in enumerate(colors or ()):
        palette[3 * index:3 * index + 3] = [int(v) for v in rgb]
    return palette


def _palette_for(dataset, palette=None):
    if palette is not None:
        return list(palette), 0
    if dataset not in PALETTES:
        raise ValueError(f'unknown dataset {dataset!r} for a colour palette; valid names: {sorted(PALETTES)}')
    return PALETTES[dataset]


def _as_class_ids(mask):
    """(H, W) int64 copy of `mask` (NDArray, numpy or PIL; a trailing axis of size 1 is dropped)."""
    if hasattr(mask, 'asnumpy'):
        mask = mask.asnumpy()
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f'mask must be (H, W) class ids, got shape {mask.shape}')
    if np.issubdtype(mask.dtype, np.floating) and not np.array_equal(mask, np.round(mask)):
        raise ValueError('mask must hold integer class ids, got non-integer values')
    return mask.astype(np.int64)


def get_color_pallete(mask, dataset='pascal_voc', palette=None):
    """Colour a class-id mask with the dataset's palette (GluonCV's name, spelling included).

    Parameters
    ----------
    mask : numpy.ndarray, NDArray or PIL image, (H, W) or (H, W, 1)
        Class ids as the model predicts them (0-based), -1 for ignored pixels. Not modified.
    dataset : str, default 'pascal_voc'
        One of 'pascal_voc', 'pascal_aug', 'coco' (VOC palette; -1 shown as colour 255),
        'ade20k' (ids shifted by +1 so -1 is black "other"), 'citys' (-1 shown as index 255,
        outside the 19-colour palette), 'mhpv1'.
    palette : list of int or None
        Flat [r0, g0, b0, ...] palette used instead of the dataset's (ids not shifted; -1 shown as index 255).

    Returns
    -------
    PIL.Image.Image
        Mode 'P', size (W, H), with the palette attached.
    """
    palette, offset = _palette_for(dataset, palette)
    ids = _as_class_ids(mask)
    ids = ids + offset
    ids[ids == IGNORE_LABEL] = 255  # only reachable with offset 0: ADE's -1 became 0 ("other")
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        bad = np.unique(ids[(ids < 0) | (ids > 255)] - offset)[:10]
        raise ValueError(f'mask values {bad.tolist()} cannot be shown with the {dataset!r} palette '
                         '(valid: -1 and 0-255)')
    image = Image.fromarray(ids.astype(np.uint8), mode='P')
    image.putpalette(palette)
    return image


def denormalize(image, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Undo the input normalisation: float (3, H, W) NDArray/numpy -> uint8 (H, W, 3) numpy."""
    if hasattr(image, 'asnumpy'):
        image = image.asnumpy()
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f'expected a normalised (3, H, W) image, got shape {image.shape}')
    rgb = image * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    return (np.clip(rgb.transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)


def _as_rgb_image(image):
    if isinstance(image, Image.Image):
        return image.convert('RGB')
    if hasattr(image, 'asnumpy'):
        image = image.asnumpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f'image must be a PIL image or uint8 (H, W, 3) array, got {image.dtype} {image.shape}; '
                         'use denormalize() for a normalised (3, H, W) network input')
    return Image.fromarray(image, mode='RGB')


def overlay(image, mask, dataset='pascal_voc', alpha=0.5, palette=None):
    """Blend the coloured mask over the image.

    Parameters
    ----------
    image : PIL image, or uint8 (H, W, 3) numpy/NDArray
    mask : (H, W) class ids, -1 ignored (see :func:`get_color_pallete`); same size as `image`.
    dataset : str, default 'pascal_voc'
    alpha : float in [0, 1], default 0.5
        Weight of the mask colours; 0 gives the image, 1 the coloured mask.
    palette : list of int or None
        Instead of the dataset's (see :func:`get_color_pallete`).

    Returns
    -------
    PIL.Image.Image
        Mode 'RGB', the image's size.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'alpha must be in [0, 1], got {alpha}')
    rgb = _as_rgb_image(image)
    colored = get_color_pallete(mask, dataset, palette).convert('RGB')
    if colored.size != rgb.size:
        raise ValueError(f'mask size {colored.size} (W, H) differs from image size {rgb.size}')
    return Image.blend(rgb, colored, alpha)


def save_prediction(path_prefix, image, mask, dataset='pascal_voc', alpha=0.5, palette=None):
    """Write ``<path_prefix>_mask.png`` (palette PNG) and ``<path_prefix>_overlay.png`` (RGB).

    Parent folders are created. Arguments as :func:`overlay`. Returns (mask_path, overlay_path).
    """
    folder = os.path.dirname(os.path.abspath(path_prefix))
    os.makedirs(folder, exist_ok=True)
    mask_path = f'{path_prefix}_mask.png'
    overlay_path = f'{path_prefix}_overlay.png'
    blended = overlay(image, mask, dataset, alpha, palette)
    get_color_pallete(mask, dataset, palette).save(mask_path)
    blended.save(overlay_path)
    return mask_path, overlay_path


def _class_color(palette, offset, class_id):
    start = 3 * (class_id + offset)
    return tuple(v / 255.0 for v in palette[start:start + 3])


def labelled_accuracy(label, pred):
    """Share of the labelled pixels (label != -1) whose prediction is right, or None when none is labelled."""
    valid = np.asarray(label) != IGNORE_LABEL
    return float((np.asarray(pred)[valid] == np.asarray(label)[valid]).mean()) if valid.any() else None


def panels(image, label, pred, class_names, dataset='pascal_voc', palette=None, title=None):
    """One picture of three panels, photo | ground truth | prediction, with a legend of the classes shown.

    Parameters
    ----------
    image : PIL image or uint8 (H, W, 3)
    label : (H, W) class ids, -1 ignored (drawn in the ignore colour), or None (the middle panel says so)
    pred : (H, W) class ids, same size
    class_names : sequence of str
        Names of the class ids.
    dataset, palette
        Colours, as :func:`get_color_pallete`.
    title : str or None
        Headline, e.g. which image this is (training or held-out); the pixel accuracy on the labelled pixels
        is appended when `label` is given.

    Returns
    -------
    PIL.Image.Image
        RGB.
    """
    import io

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rgb = _as_rgb_image(image)
    pred = _as_class_ids(pred)
    flat, offset = _palette_for(dataset, palette)
    shown = [('photo', rgb), ('prediction', get_color_pallete(pred, dataset, palette).convert('RGB'))]
    present = set(np.unique(pred).tolist())
    headline = title or ''
    if label is not None:
        label = _as_class_ids(label)
        if label.shape != pred.shape:
            raise ValueError(f'label shape {label.shape} differs from the prediction shape {pred.shape}')
        shown.insert(1, ('ground truth', get_color_pallete(label, dataset, palette).convert('RGB')))
        present |= set(np.unique(label[label != IGNORE_LABEL]).tolist())
        accuracy = labelled_accuracy(label, pred)
        if accuracy is not None:
            headline = f'{headline}: ' if headline else ''
            headline += f'pixel accuracy {100.0 * accuracy:.1f} % on the labelled pixels'
    else:
        shown.insert(1, ('ground truth: none given', Image.new('RGB', rgb.size, (255, 255, 255))))
    width, height = rgb.size
    rows = (len(present) + 4) // 4          # legend rows (4 entries per row, ignore included)
    fig_height = 4.0 * height / width + 0.6 + 0.25 * rows
    fig, axes = plt.subplots(1, 3, figsize=(12, fig_height))
    for ax, (name, picture) in zip(axes, shown):
        ax.imshow(np.asarray(picture))
        ax.set_title(name)
        ax.axis('off')
    handles = []
    for class_id in sorted(c for c in present if 0 <= c < len(class_names)):
        share_pred = 100.0 * float((pred == class_id).mean())
        text = f'{class_names[class_id]} (pred {share_pred:.0f} %'
        if label is not None:
            text += f', truth {100.0 * float((label == class_id).mean()):.0f} %'
        handles.append(Patch(facecolor=_class_color(flat, offset, class_id), edgecolor='black', label=text + ')'))
    if label is not None and (label == IGNORE_LABEL).any():
        handles.append(Patch(facecolor=_class_color(flat, 0, 255 - offset), edgecolor='black',
                             label='ignored (not scored)'))
    fig.legend(handles=handles, loc='lower center', ncol=min(4, max(1, len(handles))), fontsize=9, frameon=False,
               borderaxespad=0.2)
    if headline:
        fig.suptitle(headline)
    fig.subplots_adjust(left=0.005, right=0.995, wspace=0.02, top=1 - 0.55 / fig_height,
                        bottom=(0.1 + 0.25 * rows) / fig_height)
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=80)
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert('RGB')


def save_panels(path, image, label, pred, class_names, dataset='pascal_voc', palette=None, title=None):
    """Write :func:`panels` to `path` (parent folders created); returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    panels(image, label, pred, class_names, dataset, palette, title).save(path)
    return path
