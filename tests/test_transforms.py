"""Joint transforms and pipelines: geometry, image/label alignment, RNG handling, GluonCV parity on real VOC
images, Composer's ADE20K pipeline (resize, class-ratio crop, flip, photometric distortion, ignore padding)."""
import os
import random

import mxnet as mx
import numpy as np
import pytest
from PIL import Image, ImageFilter

from segzoo.data import transforms as T

BASE, CROP = 520, 480


# ------------------------------------------------------------------------------------------- helpers
class _Scripted:
    """An rng (``random`` protocol) that returns queued values and records every call."""

    def __init__(self, ints=(), floats=()):
        self.ints, self.floats, self.calls = list(ints), list(floats), []

    def randint(self, low, high):
        self.calls.append(('randint', low, high))
        return self.ints.pop(0)

    def random(self):
        self.calls.append(('random',))
        return self.floats.pop(0)

    def uniform(self, low, high):
        self.calls.append(('uniform', low, high))
        return low + (high - low) * self.floats.pop(0)


class _Recording(random.Random):
    """A ``random.Random`` that records the ranges and results of its ``randint`` calls."""

    def __init__(self, seed):
        super().__init__(seed)
        self.ints = []

    def randint(self, low, high):
        value = super().randint(low, high)
        self.ints.append((low, high, value))
        return value


def _voc(sample_data):
    """GluonCV's own VOC dataset on the bundled images (the oracle)."""
    gluoncv = pytest.importorskip('gluoncv')
    return gluoncv.data.VOCSegmentation(root=os.path.join(sample_data, 'voc_mini'), split='train', mode='train',
                                        base_size=BASE, crop_size=CROP)


def _load(voc, i):
    """(PIL image, PIL palette mask, int32 mask with 255 -> -1) of item i."""
    image = Image.open(voc.images[i]).convert('RGB')
    mask = Image.open(voc.masks[i])
    ids = np.array(mask).astype(np.int32)
    ids[ids == 255] = -1
    return image, mask, ids


def _block_pattern(width, height, block=8, seed=0):
    """Image made of constant blocks, one colour per class, and the matching class label."""
    rs = np.random.RandomState(seed)
    palette = rs.choice(256, size=(12, 3), replace=False).astype(np.uint8)
    palette[:, 0] = np.arange(12) * 20 + 10  # distinct red values: every class has its own colour
    classes = rs.randint(0, 12, size=(height // block + 1, width // block + 1))
    label = np.kron(classes, np.ones((block, block), dtype=int))[:height, :width].astype(np.int32)
    return palette[label], label, palette


def _assert_aligned(image, label, palette):
    """Pixels whose colour is exactly a class colour carry that class; most labelled pixels are such pixels."""
    image = np.asarray(image)
    inside = label >= 0
    matches = (image[..., None, :] == palette[None, None]).all(-1)  # (H, W, classes)
    exact = matches.any(-1) & inside
    assert exact.mean() > 0.3 * inside.mean()  # most inside pixels lie within a block, away from its edges
    np.testing.assert_array_equal(matches.argmax(-1)[exact], label[exact])


def _geometry(pipeline):
    """``pipeline`` without its last (output) step: PIL image and int32 label out."""
    return T.Compose(pipeline.transforms[:-1])


# ------------------------------------------------------------------------------------------- GluonCV geometry
@pytest.mark.parametrize('flip', [False, True])
def test_scale_pad_crop_without_rescale_is_exact_window(flip):
    rs = np.random.RandomState(1)
    image = rs.randint(0, 256, size=(30, 40, 3)).astype(np.uint8)
    label = rs.randint(-1, 21, size=(30, 40)).astype(np.int32)
    rng = _Scripted(ints=[40, 7, 3], floats=[0.0 if flip else 0.9])  # long side 40 = the image's: no rescale
    pipeline = T.Compose([T.RandomHorizontalFlip(), T.RandomScalePadCrop(40, 24)])
    out_image, out_label = pipeline(image, label, rng)
    assert rng.calls == [('random',), ('randint', 20, 80), ('randint', 0, 16), ('randint', 0, 6)]
    src_image, src_label = (image[:, ::-1], label[:, ::-1]) if flip else (image, label)
    np.testing.assert_array_equal(np.asarray(out_image), src_image[3:27, 7:31])
    np.testing.assert_array_equal(out_label, src_label[3:27, 7:31])


@pytest.mark.parametrize('mask_pad', [-1, 0])
def test_scale_pad_crop_pads_right_and_bottom(mask_pad):
    rs = np.random.RandomState(2)
    image = rs.randint(1, 256, size=(30, 40, 3)).astype(np.uint8)
    label = rs.randint(0, 21, size=(30, 40)).astype(np.int32)
    out_image, out_label = T.RandomScalePadCrop(40, 48, mask_pad=mask_pad)(image, label, _Scripted(ints=[40, 0, 0]))
    out_image = np.asarray(out_image)
    assert out_image.shape == (48, 48, 3) and out_label.shape == (48, 48) and out_label.dtype == np.int32
    np.testing.assert_array_equal(out_image[:30, :40], image)
    np.testing.assert_array_equal(out_label[:30, :40], label)
    assert (out_image[30:] == 0).all() and (out_image[:, 40:] == 0).all()
    assert (out_label[30:] == mask_pad).all() and (out_label[:, 40:] == mask_pad).all()


def test_train_draw_ranges_and_output_sizes():
    pipeline = _geometry(T.gluoncv_train_transforms(BASE, CROP))
    for width, height in [(500, 375), (334, 500), (64, 48)]:
        rng = _Recording(width)
        for _ in range(10):
            image, label = pipeline(np.zeros((height, width, 3), np.uint8), np.zeros((height, width), np.int32), rng)
            assert image.size == (CROP, CROP) and label.shape == (CROP, CROP)
        for (lo, hi, long_side), (_, x_hi, x), (_, y_hi, y) in zip(*[iter(rng.ints)] * 3):
            assert (lo, hi) == (BASE // 2, BASE * 2) and lo <= long_side <= hi
            short = int(min(width, height) * long_side / max(width, height) + 0.5)
            out_w, out_h = (long_side, short) if width >= height else (short, long_side)
            assert (x_hi, y_hi) == (max(out_w, CROP) - CROP, max(out_h, CROP) - CROP)
            assert 0 <= x <= x_hi and 0 <= y <= y_hi


@pytest.mark.parametrize('seed', range(4))
def test_train_keeps_image_and_label_aligned(seed):
    image, label, palette = _block_pattern(96, 72, block=12, seed=seed)
    pipeline = T.Compose([T.RandomHorizontalFlip(), T.RandomScalePadCrop(64, 48)])  # no blur: it mixes colours
    out_image, out_label = pipeline(image, label, np.random.default_rng(seed))
    _assert_aligned(out_image, out_label, palette)
    assert (np.asarray(out_image)[out_label < 0] == 0).all()  # padding: image 0 where the label is ignore


def test_val_and_testval_geometry():
    image = np.random.RandomState(4).randint(0, 256, size=(50, 80, 3)).astype(np.uint8)
    label = np.arange(50 * 80, dtype=np.int32).reshape(50, 80) % 21
    out_image, out_label = T.gluoncv_val_transforms(32)(image, label)
    assert out_image.shape == (3, 32, 32) and out_label.shape == (32, 32) and out_label.dtype == np.int32
    out_image, out_label = _geometry(T.testval_transforms())(image, label)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_label, label)


def test_bad_input_is_reported():
    image = np.zeros((10, 12, 3), np.uint8)
    with pytest.raises(ValueError, match='unknown augmentation'):
        T.get_transforms('bogus', 'train', 16, 8)
    with pytest.raises(ValueError, match='unknown mode'):
        T.get_transforms('gluoncv', 'eval', 16, 8)
    with pytest.raises(ValueError, match='does not match the image size'):
        T.gluoncv_val_transforms(8)(image, np.zeros((12, 10), np.int32))
    with pytest.raises(ValueError, match='uint8'):
        T.gluoncv_val_transforms(8)(image.astype(np.float32), np.zeros((10, 12), np.int32))


def test_nearest_index_equals_pil_nearest():
    rs = np.random.RandomState(5)
    for _ in range(60):
        h, w = rs.randint(5, 600, size=2)
        oh, ow = rs.randint(5, 1100, size=2)
        label = rs.randint(-1, 150, size=(h, w)).astype(np.int32)
        expected = np.asarray(Image.fromarray(label).resize((ow, oh), Image.NEAREST))
        got = label[T.nearest_index(h, oh)[:, None], T.nearest_index(w, ow)[None, :]]
        np.testing.assert_array_equal(got, expected)


def test_blur_of_a_zero_padded_image_equals_pil_blur():
    """The blur skips all-zero borders (padding); the result must equal PIL's blur of the whole image."""
    rs = np.random.RandomState(6)
    for k in range(20):
        width, height = rs.randint(1, 40, size=2)
        left, top = rs.randint(0, 48 - width), rs.randint(0, 48 - height)
        region = Image.fromarray(rs.randint(0, 256, size=(height, width, 3)).astype(np.uint8))
        radius = float(rs.rand()) if k < 16 else float(1 + 3 * rs.rand())
        canvas = Image.new('RGB', (48, 48), 0)
        canvas.paste(region, (left, top))
        expected = np.asarray(canvas.filter(ImageFilter.GaussianBlur(radius=radius)))
        blurred, _ = T.RandomGaussianBlur(p=1.0)(canvas, None, _Scripted(floats=[0.0, radius]))
        np.testing.assert_array_equal(np.asarray(blurred), expected)


# ------------------------------------------------------------------------------------------- RNG argument
@pytest.mark.parametrize('recipe', ['gluoncv', 'composer'])
def test_rng_argument_decides_the_draws(recipe):
    image, label, _ = _block_pattern(70, 50, seed=1)
    pipeline = T.get_transforms(recipe, 'train', 64, 48)
    runs = [pipeline(image, label, rng) for rng in
            (np.random.default_rng(3), np.random.default_rng(3), np.random.default_rng(4), random.Random(3))]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert any(not np.array_equal(runs[0][k], other[k]) for other in runs[2:] for k in (0, 1))
    state = random.getstate()
    random.seed(3)
    module = pipeline(image, label, None)  # None: Python's module-level random, as GluonCV
    random.setstate(state)
    np.testing.assert_array_equal(module[0], runs[3][0])
    np.testing.assert_array_equal(module[1], runs[3][1])


def test_compose_is_editable():
    pipeline = T.gluoncv_train_transforms(64, 48)
    pipeline.transforms.insert(0, T.Resize((40, 30)))
    seen = []
    pipeline.transforms.insert(1, lambda image, label, rng: (seen.append(image.size) or image, label))
    image, label = pipeline(np.zeros((10, 20, 3), np.uint8), np.zeros((10, 20), np.int32), np.random.default_rng(0))
    assert seen == [(40, 30)] and image.shape == (3, 48, 48) and label.shape == (48, 48)
    assert 'RandomScalePadCrop(base_size=64, crop_size=48' in repr(pipeline)


# ------------------------------------------------------------------------------------------- GluonCV parity
@pytest.mark.slow
def test_train_matches_gluoncv_sync_transform(sample_data):
    """Same Python random state -> the same draws, the same mask, the same image up to resize rounding.

    Measured on the 45 bundled VOC images x 3 seeds: the masks are identical; image values differ by at most
    2 grey levels on about 1.3 % of the values (crop windows that are a strict part of the rescaled image are
    resized from a single-precision PIL box). The bounds below leave a little room over those measurements.
    """
    voc = _voc(sample_data)
    pipeline = _geometry(T.gluoncv_train_transforms(BASE, CROP, mask_pad=0))
    diff_max, diff_count, total, exact_items = 0, 0, 0, 0
    for seed in range(3):
        for i in range(len(voc)):
            image, mask, ids = _load(voc, i)
            state = random.Random(1000 * seed + i).getstate()
            random.setstate(state)
            g_image, g_mask = voc._sync_transform(image, mask)
            rng = random.Random()
            rng.setstate(state)
            s_image, s_mask = pipeline(image, ids, rng)
            assert rng.getstate() == random.getstate(), 'different number of random draws'
            np.testing.assert_array_equal(s_mask, g_mask.asnumpy())
            diff = np.abs(np.asarray(s_image).astype(np.int32) - g_image.asnumpy().astype(np.int32))
            diff_max = max(diff_max, int(diff.max()))
            diff_count += int((diff > 0).sum())
            total += diff.size
            exact_items += int(diff.max() == 0)
    assert diff_max <= 3, diff_max
    assert diff_count / total < 0.03, diff_count / total
    assert exact_items > 0  # crops that cover the whole rescaled image are pixel-identical


def test_val_and_testval_equal_gluoncv(sample_data):
    voc = _voc(sample_data)
    val, testval = _geometry(T.gluoncv_val_transforms(CROP)), _geometry(T.testval_transforms())
    for i in range(0, len(voc), 3):
        image, mask, ids = _load(voc, i)
        g_image, g_mask = voc._val_sync_transform(image, mask)
        s_image, s_mask = val(image, ids)
        np.testing.assert_array_equal(np.asarray(s_image), g_image.asnumpy())
        np.testing.assert_array_equal(s_mask, g_mask.asnumpy())
        s_image, s_mask = testval(image, ids)
        np.testing.assert_array_equal(np.asarray(s_image), voc._img_transform(image).asnumpy())
        np.testing.assert_array_equal(s_mask, voc._mask_transform(mask).asnumpy())


# ------------------------------------------------------------------------------------------- Composer
def test_composer_train_shapes_ignore_padding_and_determinism():
    image, label, _ = _block_pattern(70, 50, seed=2)
    pipeline = T.composer_train_transforms(64, 48)
    padded = 0
    for seed in range(24):
        out_image, out_label = pipeline(image, label, np.random.default_rng(seed))
        assert out_image.shape == (3, 48, 48) and out_image.dtype == np.float32
        assert out_label.shape == (48, 48) and out_label.dtype == np.int32
        assert out_label.min() >= -1 and out_label.max() < 12
        padded += int((out_label == -1).any())  # the block label has no ignore: -1 is padding only
        again = pipeline(image, label, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_image, again[0])
        np.testing.assert_array_equal(out_label, again[1])
    assert 0 < padded < 24  # scales below 48/64 pad, larger ones crop


def test_composer_pad_is_centred_with_mean_pixel_and_ignore():
    image = np.full((31, 40, 3), 7, np.uint8)
    label = np.full((31, 40), 3, np.int32)
    out_image, out_label = T.Pad(48, fill=T.COMPOSER_PAD_FILL, center=True)(image, label)
    out_image = np.asarray(out_image)
    assert out_image.shape == (48, 48, 3) and T.COMPOSER_PAD_FILL == (123, 116, 103)
    inside = np.zeros((48, 48), bool)
    inside[8:39, 4:44] = True  # left (48-40)//2 = 4, top (48-31)//2 = 8; the odd pixel goes to the bottom
    assert (out_image[inside] == 7).all() and (out_image[~inside] == (123, 116, 103)).all()
    assert (out_label[inside] == 3).all() and (out_label[~inside] == -1).all()


def test_composer_square_resize_ignores_aspect():
    image, label = np.zeros((50, 70, 3), np.uint8), np.zeros((50, 70), np.int32)
    rng = _Scripted(floats=[0.25])
    out_image, out_label = T.RandomSquareResize(64)(image, label, rng)
    assert rng.calls == [('uniform', 0.5, 2.0)]
    side = int(64 * (0.5 + 1.5 * 0.25))
    assert out_image.size == (side, side) and out_label.shape == (side, side)


def _striped(height, width, column_classes):
    """Label whose columns hold the given classes (so a window's class shares depend only on its left edge)."""
    return np.tile(np.asarray(column_classes, np.int32)[None, :], (height, 1))


def test_composer_crop_redraws_while_one_class_dominates():
    # columns 0-29: class 0, 30-39: class 1; a 20-wide window is below 75 % class 0 when it starts at 16 or more
    label = _striped(20, 40, [0] * 30 + [1] * 10)
    image = np.zeros((20, 40, 3), np.uint8)
    crop = T.RandomCrop(20, cat_max_ratio=0.75, retries=10)
    rng = _Scripted(ints=[0, 2, 0, 14, 0, 16, 0, 5])
    out_image, out_label = crop(image, label, rng)
    assert rng.calls == [('randint', 0, 0), ('randint', 0, 20)] * 3  # windows at 2 and 14 fail, 16 is kept
    np.testing.assert_array_equal(out_label, label[:, 16:36])
    assert out_image.size == (20, 20)
    # one class everywhere: the rule never holds; 1 + retries windows are drawn and the last one is kept
    lefts = list(range(11))
    rng = _Scripted(ints=[v for left in lefts for v in (0, left)])
    _, out_label = crop(image, np.zeros((20, 40), np.int32), rng)
    assert len(rng.calls) == 22 and not rng.ints
    # ignore does not count: 10 px class 0 + 10 px ignore is one class (counted, ignore would pass at 50 %);
    # 6 px class 0 + 4 px class 1 + 10 px ignore passes
    label = _striped(20, 40, [0] * 10 + [-1] * 10 + [1] * 4 + [0] * 10 + [-1] * 6)
    rng = _Scripted(ints=[0, 0, 0, 10])
    _, out_label = crop(image, label, rng)
    np.testing.assert_array_equal(out_label, label[:, 10:30])
    assert not rng.ints


def test_composer_crop_is_a_no_op_when_the_image_fits():
    rng = _Scripted()
    image, label = T.RandomCrop(48, 0.75)(np.zeros((40, 48, 3), np.uint8), np.zeros((40, 48), np.int32), rng)
    assert rng.calls == [] and image.size == (48, 40) and label.shape == (40, 48)


@pytest.mark.parametrize('seed', range(4))
def test_composer_geometry_keeps_image_and_label_aligned(seed):
    image, label, palette = _block_pattern(96, 72, block=16, seed=seed)
    pipeline = T.composer_train_transforms(64, 48)
    geometry = T.Compose([t for t in pipeline.transforms[:-1] if not isinstance(t, T.PhotometricDistortion)])
    out_image, out_label = geometry(image, label, np.random.default_rng(seed))
    _assert_aligned(out_image, out_label, palette)
    flipped = T.RandomHorizontalFlip(p=1.0)(image, label)
    np.testing.assert_array_equal(np.asarray(flipped[0]), image[:, ::-1])
    np.testing.assert_array_equal(flipped[1], label[:, ::-1])


def test_photometric_draws_follow_mmseg_order_probabilities_and_ranges():
    distortion = T.PhotometricDistortion()
    counts = {'brightness': 0, 'contrast': 0, 'saturation': 0, 'hue': 0}
    contrast_first = 0
    bounds = {'brightness': (1 - 32 / 255, 1 + 32 / 255), 'contrast': (0.5, 1.5), 'saturation': (0.5, 1.5),
              'hue': (-18 / 255, 18 / 255)}
    n = 2000
    for seed in range(n):
        ops = distortion.draw(np.random.default_rng(seed))
        names = [name for name, _ in ops]
        assert len(set(names)) == len(names)
        assert [name for name in names if name != 'contrast'] == \
            [name for name in ('brightness', 'saturation', 'hue') if name in names]
        if 'contrast' in names:
            position = names.index('contrast')
            first = position == int('brightness' in names)
            assert first or position == len(names) - 1
            contrast_first += first and position != len(names) - 1
        for name, factor in ops:
            counts[name] += 1
            assert bounds[name][0] <= factor <= bounds[name][1]
    for name, count in counts.items():
        assert abs(count / n - 0.5) < 0.05, (name, count)   # each applied with probability 1/2
    assert 0.15 < contrast_first / n < 0.35                  # 1/2 (position) x 1/2 (applied), minus ties


def test_photometric_adjustments():
    grey = Image.new('RGB', (8, 8), (100, 100, 100))
    adjust = T._ADJUST
    assert np.asarray(adjust['brightness'](grey, 1.1))[0, 0].tolist() == [110, 110, 110]
    np.testing.assert_array_equal(np.asarray(adjust['contrast'](grey, 1.4)), np.asarray(grey))   # flat: no contrast
    np.testing.assert_array_equal(np.asarray(adjust['saturation'](grey, 0.6)), np.asarray(grey))  # grey: no colour
    red = Image.new('RGB', (4, 4), (255, 0, 0))
    green = np.asarray(adjust['hue'](red, 1 / 3))[0, 0]  # a third of the colour circle: red -> green
    assert green[1] > 250 and green[0] < 8 and green[2] < 8
    assert np.asarray(adjust['hue'](red, -1 / 3))[0, 0][2] > 250  # the other way: blue


def test_composer_val_resizes_to_a_square():
    image, label, palette = _block_pattern(70, 50, block=10, seed=3)
    out_image, out_label = _geometry(T.composer_val_transforms(40))(image, label)
    assert out_image.size == (40, 40) and out_label.shape == (40, 40)
    expected = np.asarray(Image.fromarray(label).resize((40, 40), Image.NEAREST))
    np.testing.assert_array_equal(out_label, expected)
    np.testing.assert_array_equal(np.asarray(out_image), np.asarray(Image.fromarray(image).resize((40, 40),
                                                                                                  Image.BILINEAR)))


# ------------------------------------------------------------------------------------------- normalisation
def test_image_normalize_equals_gluon_totensor_normalize():
    from mxnet.gluon.data.vision import transforms
    gluon = transforms.Compose([transforms.ToTensor(), transforms.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)])
    image = np.random.RandomState(8).randint(0, 256, size=(37, 53, 3)).astype(np.uint8)
    expected = gluon(mx.nd.array(image, dtype=np.uint8)).asnumpy()
    norm = T.ImageNormalize()
    for value in (image, mx.nd.array(image, dtype=np.uint8), Image.fromarray(image)):
        got = norm(value)
        assert got.dtype == np.float32 and got.shape == (3, 37, 53)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    got_image, got_label = T.Normalize()(image, np.zeros((37, 53), np.int64))
    np.testing.assert_allclose(got_image, expected, rtol=0, atol=1e-6)
    assert got_label.dtype == np.int32
    with pytest.raises(ValueError, match='H, W, 3'):
        norm(image[..., 0])
