"""Joint transforms and ImageNormalize: geometry, image/mask alignment, parity with GluonCV on real VOC images."""
import os
import random

import mxnet as mx
import numpy as np
import pytest
from PIL import Image, ImageFilter

from segzoo.data import transforms as T

BASE, CROP = 520, 480


# ------------------------------------------------------------------------------------------- helpers
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
    """Image made of constant blocks, one colour per class, and the matching class mask."""
    rs = np.random.RandomState(seed)
    palette = rs.choice(256, size=(12, 3), replace=False).astype(np.uint8)
    palette[:, 0] = np.arange(12) * 20 + 10  # distinct red values: every class has its own colour
    classes = rs.randint(0, 12, size=(height // block + 1, width // block + 1))
    mask = np.kron(classes, np.ones((block, block), dtype=int))[:height, :width].astype(np.int32)
    return palette[mask], mask, palette


# ------------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize('flip', [False, True])
def test_train_crop_without_rescale_is_exact_window(flip):
    rs = np.random.RandomState(1)
    image = rs.randint(0, 256, size=(30, 40, 3)).astype(np.uint8)
    mask = rs.randint(-1, 21, size=(30, 40)).astype(np.int32)
    draw = T.TrainDraw(flip=flip, out_w=40, out_h=30, x1=7, y1=3, blur_radius=None)
    out_image, out_mask = T.apply_train_draw(image, mask, draw, crop_size=24)
    src_image = image[:, ::-1] if flip else image
    src_mask = mask[:, ::-1] if flip else mask
    np.testing.assert_array_equal(out_image, src_image[3:27, 7:31])
    np.testing.assert_array_equal(out_mask, src_mask[3:27, 7:31])


@pytest.mark.parametrize('mask_pad', [-1, 0])
def test_train_pads_right_and_bottom(mask_pad):
    rs = np.random.RandomState(2)
    image = rs.randint(1, 256, size=(30, 40, 3)).astype(np.uint8)
    mask = rs.randint(0, 21, size=(30, 40)).astype(np.int32)
    draw = T.TrainDraw(flip=False, out_w=40, out_h=30, x1=0, y1=0, blur_radius=None)
    out_image, out_mask = T.apply_train_draw(image, mask, draw, crop_size=48, mask_pad=mask_pad)
    assert out_image.shape == (48, 48, 3) and out_image.dtype == np.uint8
    assert out_mask.shape == (48, 48) and out_mask.dtype == np.int32
    np.testing.assert_array_equal(out_image[:30, :40], image)
    np.testing.assert_array_equal(out_mask[:30, :40], mask)
    assert (out_image[30:] == 0).all() and (out_image[:, 40:] == 0).all()
    assert (out_mask[30:] == mask_pad).all() and (out_mask[:, 40:] == mask_pad).all()


def test_draw_ranges_and_output_sizes():
    rng = random.Random(3)
    for width, height in [(500, 375), (334, 500), (64, 48), (1200, 900)]:
        for _ in range(40):
            draw = T.draw_train_params(width, height, BASE, CROP, rng)
            long_side = max(draw.out_w, draw.out_h)
            assert BASE // 2 <= long_side <= BASE * 2
            assert 0 <= draw.x1 <= max(draw.out_w, CROP) - CROP
            assert 0 <= draw.y1 <= max(draw.out_h, CROP) - CROP
            assert draw.blur_radius is None or 0 <= draw.blur_radius < 1
    image = np.zeros((48, 64, 3), np.uint8)
    out_image, out_mask = T.train_transform(image, np.zeros((48, 64), np.int32), 64, 40, rng=rng)
    assert out_image.shape == (40, 40, 3) and out_mask.shape == (40, 40)


@pytest.mark.parametrize('seed', range(6))
def test_train_keeps_image_and_mask_aligned(seed):
    """Pixels whose colour is exactly a class colour must carry that class in the mask, after any draw."""
    image, mask, palette = _block_pattern(96, 72, block=12, seed=seed)
    rng = random.Random(seed)
    draw = T.draw_train_params(96, 72, 64, 48, rng)
    draw.blur_radius = None  # blur mixes colours; alignment is a property of the geometry
    out_image, out_mask = T.apply_train_draw(image, mask, draw, crop_size=48, mask_pad=-1)
    inside = out_mask >= 0
    matches = (out_image[..., None, :] == palette[None, None]).all(-1)  # (H, W, classes)
    exact = matches.any(-1) & inside
    assert exact.mean() > 0.3 * inside.mean()  # most inside pixels lie within a block, away from its edges
    np.testing.assert_array_equal(matches.argmax(-1)[exact], out_mask[exact])
    assert (out_image[~inside] == 0).all()  # padding: image 0 where the mask is ignore


def test_val_and_testval_geometry():
    image = np.random.RandomState(4).randint(0, 256, size=(50, 80, 3)).astype(np.uint8)
    mask = np.arange(50 * 80, dtype=np.int32).reshape(50, 80) % 21
    out_image, out_mask = T.sync_transform('val', image, mask, BASE, 32)
    assert out_image.shape == (32, 32, 3) and out_mask.shape == (32, 32) and out_mask.dtype == np.int32
    out_image, out_mask = T.sync_transform('testval', image, mask, BASE, 32)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)


def test_bad_input_is_reported():
    image = np.zeros((10, 12, 3), np.uint8)
    with pytest.raises(ValueError, match='unknown transform mode'):
        T.sync_transform('bogus', image, np.zeros((10, 12), np.int32), 16, 8)
    with pytest.raises(ValueError, match='does not match the image size'):
        T.sync_transform('val', image, np.zeros((12, 10), np.int32), 16, 8)
    with pytest.raises(ValueError, match='uint8'):
        T.sync_transform('val', image.astype(np.float32), np.zeros((10, 12), np.int32), 16, 8)


# ------------------------------------------------------------------------------------------- exact pieces
def test_nearest_index_equals_pil_nearest():
    rs = np.random.RandomState(5)
    for _ in range(60):
        h, w = rs.randint(5, 600, size=2)
        oh, ow = rs.randint(5, 1100, size=2)
        mask = rs.randint(-1, 150, size=(h, w)).astype(np.int32)
        expected = np.asarray(Image.fromarray(mask).resize((ow, oh), Image.NEAREST))
        got = mask[T.nearest_index(h, oh)[:, None], T.nearest_index(w, ow)[None, :]]
        np.testing.assert_array_equal(got, expected)


def test_partial_blur_of_padded_crop_equals_full_blur():
    rs = np.random.RandomState(6)
    for _ in range(20):
        width, height = rs.randint(1, 48, size=2)
        region = Image.fromarray(rs.randint(0, 256, size=(height, width, 3)).astype(np.uint8))
        radius = float(rs.rand()) if _ < 16 else float(1 + 3 * rs.rand())
        canvas = Image.new('RGB', (48, 48), 0)
        canvas.paste(region, (0, 0))
        expected = np.asarray(canvas.filter(ImageFilter.GaussianBlur(radius=radius)))
        np.testing.assert_array_equal(T._pad_and_blur(region, 48, radius), expected)


def test_item_rng_is_used_by_default_and_restored():
    before = random.getstate()
    with T.item_rng(random.Random(7)):
        first = T.draw_train_params(500, 375, BASE, CROP)
    assert random.getstate() == before  # the module RNG was not used
    reference = T.draw_train_params(500, 375, BASE, CROP, rng=random.Random(7))
    assert repr(first) == repr(reference)


# ------------------------------------------------------------------------------------------- GluonCV parity
def test_train_matches_gluoncv_sync_transform(sample_data):
    """Same Python random state -> the same draws, the same mask, the same image up to resize rounding.

    Measured on the 45 bundled VOC images x 3 seeds: the masks are identical; image values differ by at most
    2 grey levels on about 1.3 % of the values (crop windows that are a strict part of the rescaled image are
    resized from a single-precision PIL box). The bounds below leave a little room over those measurements.
    """
    voc = _voc(sample_data)
    diff_max, diff_count, total, exact_items = 0, 0, 0, 0
    for seed in range(3):
        for i in range(len(voc)):
            image, mask, ids = _load(voc, i)
            state = random.Random(1000 * seed + i).getstate()
            random.setstate(state)
            g_image, g_mask = voc._sync_transform(image, mask)
            rng = random.Random()
            rng.setstate(state)
            s_image, s_mask = T.sync_transform('train', image, ids, BASE, CROP, mask_pad=0, rng=rng)
            assert rng.getstate() == random.getstate(), 'different number of random draws'
            np.testing.assert_array_equal(s_mask, g_mask.asnumpy())
            diff = np.abs(s_image.astype(np.int32) - g_image.asnumpy().astype(np.int32))
            diff_max = max(diff_max, int(diff.max()))
            diff_count += int((diff > 0).sum())
            total += diff.size
            exact_items += int(diff.max() == 0)
    assert diff_max <= 3, diff_max
    assert diff_count / total < 0.03, diff_count / total
    assert exact_items > 0  # crops that cover the whole rescaled image are pixel-identical


def test_val_and_testval_equal_gluoncv(sample_data):
    voc = _voc(sample_data)
    for i in range(0, len(voc), 3):
        image, mask, ids = _load(voc, i)
        g_image, g_mask = voc._val_sync_transform(image, mask)
        s_image, s_mask = T.sync_transform('val', image, ids, BASE, CROP)
        np.testing.assert_array_equal(s_image, g_image.asnumpy())
        np.testing.assert_array_equal(s_mask, g_mask.asnumpy())
        s_image, s_mask = T.sync_transform('testval', image, ids, BASE, CROP)
        np.testing.assert_array_equal(s_image, voc._img_transform(image).asnumpy())
        np.testing.assert_array_equal(s_mask, voc._mask_transform(mask).asnumpy())


# ------------------------------------------------------------------------------------------- normalisation
def test_image_normalize_equals_gluon_totensor_normalize():
    from mxnet.gluon.data.vision import transforms
    gluon = transforms.Compose([transforms.ToTensor(), transforms.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)])
    image = np.random.RandomState(8).randint(0, 256, size=(37, 53, 3)).astype(np.uint8)
    expected = gluon(mx.nd.array(image, dtype=np.uint8)).asnumpy()
    norm = T.ImageNormalize()
    assert norm.numpy_input is True
    for value in (image, mx.nd.array(image, dtype=np.uint8)):
        got = norm(value)
        assert got.dtype == np.float32 and got.shape == (3, 37, 53)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match='H, W, 3'):
        norm(image[..., 0])
