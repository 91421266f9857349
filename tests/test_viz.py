"""Palettes and coloured masks against gluoncv.utils.viz.segmentation; overlays on a real VOC image."""
import os

import numpy as np
import mxnet as mx
import pytest
from PIL import Image

from segzoo.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segzoo.utils import viz

DATASETS = ['pascal_voc', 'pascal_aug', 'coco', 'ade20k', 'citys', 'mhpv1']


def _voc_sample(sample_data, name='2007_000032'):
    root = os.path.join(sample_data, 'voc_mini', 'VOC2012')
    image = Image.open(os.path.join(root, 'JPEGImages', f'{name}.jpg')).convert('RGB')
    mask = np.array(Image.open(os.path.join(root, 'SegmentationClass', f'{name}.png'))).astype(np.int64)
    mask[mask == 255] = -1  # VOC border -> ignore label, as the datasets do
    return image, mask


@pytest.fixture(scope='module')
def gluoncv_viz(gluoncv):
    return gluoncv.utils.viz.segmentation


def test_palettes_equal_gluoncv(gluoncv_viz):
    assert viz.voc_palette(256) == gluoncv_viz.vocpallete
    assert viz.PALETTES['ade20k'][0] == gluoncv_viz.adepallete
    assert viz.PALETTES['citys'][0] == gluoncv_viz.cityspallete
    assert viz.PALETTES['mhpv1'][0] == gluoncv_viz.mhpv1pallete
    assert viz.voc_palette(256)[3 * 255:] == [224, 224, 192]


@pytest.mark.parametrize('dataset', DATASETS)
@pytest.mark.parametrize('dtype', [np.int64, np.int32, np.float32])
def test_output_equals_gluoncv_and_input_untouched(gluoncv_viz, dataset, dtype):
    rng = np.random.RandomState(0)
    num_classes = {'ade20k': 150, 'citys': 19, 'mhpv1': 19}.get(dataset, 21)
    mask = rng.randint(-1, num_classes, (13, 17)).astype(dtype)
    mask[0, 0] = -1
    before = mask.copy()
    ours = viz.get_color_pallete(mask, dataset)
    ref = gluoncv_viz.get_color_pallete(mask.copy(), dataset)
    np.testing.assert_array_equal(mask, before)
    assert ours.mode == 'P' and ours.size == (17, 13)
    np.testing.assert_array_equal(np.array(ours), np.array(ref))
    assert ours.getpalette() == ref.getpalette()
    np.testing.assert_array_equal(np.array(ours.convert('RGB')), np.array(ref.convert('RGB')))


def test_ignore_label_colours():
    mask = np.array([[-1, 0, 1]])
    voc = np.array(viz.get_color_pallete(mask, 'pascal_voc').convert('RGB'))
    np.testing.assert_array_equal(voc[0], [[224, 224, 192], [0, 0, 0], [128, 0, 0]])
    ade = np.array(viz.get_color_pallete(mask, 'ade20k'))
    np.testing.assert_array_equal(ade[0], [0, 1, 2])  # -1 -> "other" (black), classes shifted by one


def test_accepts_ndarray_and_trailing_axis():
    mask = np.array([[0, 3], [-1, 2]])
    expected = np.array(viz.get_color_pallete(mask))
    np.testing.assert_array_equal(np.array(viz.get_color_pallete(mx.nd.array(mask))), expected)
    np.testing.assert_array_equal(np.array(viz.get_color_pallete(mask[..., None])), expected)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="unknown dataset 'voc'.*pascal_voc"):
        viz.get_color_pallete(np.zeros((2, 2), np.int64), 'voc')
    with pytest.raises(ValueError, match='300'):
        viz.get_color_pallete(np.array([[0, 300]]), 'pascal_voc')
    with pytest.raises(ValueError, match='integer'):
        viz.get_color_pallete(np.array([[0.5, 1.0]]), 'pascal_voc')


def test_overlay_on_real_voc_image(sample_data):
    image, mask = _voc_sample(sample_data)
    blended = viz.overlay(image, mask, 'pascal_voc', alpha=0.5)
    assert blended.mode == 'RGB' and blended.size == image.size
    colored = np.array(viz.get_color_pallete(mask).convert('RGB'), dtype=np.float64)
    expected = 0.5 * np.array(image, dtype=np.float64) + 0.5 * colored
    assert np.abs(np.array(blended, dtype=np.float64) - expected).max() <= 1
    np.testing.assert_array_equal(np.array(viz.overlay(np.array(image), mask, alpha=0.0)), np.array(image))
    with pytest.raises(ValueError, match='differs from image size'):
        viz.overlay(image, mask[:-1], 'pascal_voc')
    with pytest.raises(ValueError, match='alpha'):
        viz.overlay(image, mask, alpha=1.5)


def test_save_prediction_writes_both_files(sample_data, tmp_path):
    image, mask = _voc_sample(sample_data)
    mask_path, overlay_path = viz.save_prediction(str(tmp_path / 'out' / 'pred'), image, mask, 'pascal_voc')
    assert mask_path == str(tmp_path / 'out' / 'pred_mask.png')
    assert overlay_path == str(tmp_path / 'out' / 'pred_overlay.png')
    saved_mask = Image.open(mask_path)
    assert saved_mask.mode == 'P'
    np.testing.assert_array_equal(np.array(saved_mask), np.where(mask == -1, 255, mask))
    saved_overlay = Image.open(overlay_path)
    assert saved_overlay.mode == 'RGB' and saved_overlay.size == image.size


def test_denormalize_round_trip():
    rgb = np.random.RandomState(0).randint(0, 256, (5, 4, 3)).astype(np.uint8)
    normalised = ((rgb / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)
    np.testing.assert_array_equal(viz.denormalize(mx.nd.array(normalised)), rgb)
