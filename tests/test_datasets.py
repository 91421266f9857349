"""Dataset classes: splits, mask mapping, GluonCV parity (testval/test), COCO cache, and bad-input errors.

Oracle: GluonCV 0.10.5's own dataset classes on the same files. Data: the bundled real samples and tiny trees
generated in tmp_path. Train/val augmentation parity belongs to tests/test_transforms*.py.
"""
import json
import os
import shutil
import warnings

import mxnet as mx
import numpy as np
import pytest
import scipy.io
from PIL import Image

from segzoo.data import (DATASETS, NUM_CLASS, DatasetError, LeakySplitWarning, get_segmentation_dataset,
                         train_aug_ids)
from segzoo.data.base import default_root

gdata = pytest.importorskip('gluoncv.data')

VOC_PALETTE = [v for i in range(256) for v in (i * 37 % 256, i * 91 % 256, i * 53 % 256)]


# --------------------------------------------------------------------------------------------- tree builders
def _jpeg(path, height, width, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=90)


def _png(path, array, palette=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(np.asarray(array, dtype=np.uint8))
    if palette:
        image.putpalette(VOC_PALETTE)
    image.save(path)


def _label(height, width, values, seed=0):
    rng = np.random.default_rng(seed)
    return rng.choice(np.asarray(values, dtype=np.uint8), size=(height, width))


def _write_list(path, ids):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(''.join(i + '\n' for i in ids))


def make_voc(root, splits, size=(24, 32), values=(0, 3, 15, 255)):
    """VOC2012 tree: {split: ids}; every id gets a JPEG and a palette PNG."""
    voc = os.path.join(root, 'VOC2012')
    all_ids = sorted({i for ids in splits.values() for i in ids})
    for n, i in enumerate(all_ids):
        _jpeg(os.path.join(voc, 'JPEGImages', i + '.jpg'), *size, seed=n)
        _png(os.path.join(voc, 'SegmentationClass', i + '.png'), _label(*size, values, seed=n), palette=True)
    for split, ids in splits.items():
        _write_list(os.path.join(voc, 'ImageSets', 'Segmentation', split + '.txt'), ids)
    return root


def make_sbd(root, splits, size=(20, 28), values=(0, 7, 20)):
    """VOCaug/dataset tree with GTcls .mat files written by scipy."""
    sbd = os.path.join(root, 'VOCaug', 'dataset')
    all_ids = sorted({i for ids in splits.values() for i in ids})
    for n, i in enumerate(all_ids):
        _jpeg(os.path.join(sbd, 'img', i + '.jpg'), *size, seed=100 + n)
        seg = _label(*size, values, seed=100 + n)
        os.makedirs(os.path.join(sbd, 'cls'), exist_ok=True)
        scipy.io.savemat(os.path.join(sbd, 'cls', i + '.mat'),
                         {'GTcls': {'Segmentation': seg, 'CategoriesPresent': np.unique(seg[seg > 0])}})
    for split, ids in splits.items():
        _write_list(os.path.join(sbd, split + '.txt'), ids)
    return root


CITY_FRAMES = {'train': [('aachen', '000000_000019'), ('aachen', '000001_000019'), ('bremen', '000000_000019')],
               'val': [('frankfurt', '000000_000294')], 'test': [('berlin', '000000_000019')]}


def make_citys(root, size=(16, 24)):
    for split, frames in CITY_FRAMES.items():
        for n, (city, frame) in enumerate(frames):
            stem = f'{city}_{frame}'
            _jpeg_png = os.path.join(root, 'leftImg8bit', split, city, f'{stem}_leftImg8bit.png')
            rng = np.random.default_rng(n)
            os.makedirs(os.path.dirname(_jpeg_png), exist_ok=True)
            Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(_jpeg_png)
            _png(os.path.join(root, 'gtFine', split, city, f'{stem}_gtFine_labelIds.png'),
                 _label(*size, np.arange(34), seed=n))
    return root


def _poly(x0, y0, x1, y1):
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def _crowd_rle(height, width, y0, y1, x0, x1):
    """Uncompressed column-major RLE of a rectangle, as in the official COCO JSON for iscrowd=1."""
    m = np.zeros((height, width), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    flat = m.flatten(order='F')
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {'counts': counts, 'size': [height, width]}


def make_coco(root, split='train'):
    """COCO tree: image 1 (kept: polygons, overlap, crowd RLE, non-VOC category), image 2 (< 1000 px), image 3
    (only a non-VOC category)."""
    h, w = 60, 80
    images = [{'id': k, 'file_name': f'{k:012d}.jpg', 'height': h, 'width': w} for k in (1, 2, 3)]
    anns = [
        {'id': 10, 'image_id': 1, 'category_id': 1, 'iscrowd': 0, 'segmentation': [_poly(5, 5, 45, 35)]},   # person
        {'id': 11, 'image_id': 1, 'category_id': 18, 'iscrowd': 0,                                          # dog
         'segmentation': [_poly(30, 20, 70, 50), _poly(0, 52, 10, 59)]},
        {'id': 12, 'image_id': 1, 'category_id': 3, 'iscrowd': 1,                                           # car
         'segmentation': _crowd_rle(h, w, 40, 58, 60, 78)},
        {'id': 13, 'image_id': 1, 'category_id': 90, 'iscrowd': 0, 'segmentation': [_poly(0, 0, 79, 59)]},  # toothbrush
        {'id': 20, 'image_id': 2, 'category_id': 5, 'iscrowd': 0, 'segmentation': [_poly(0, 0, 20, 20)]},
        {'id': 30, 'image_id': 3, 'category_id': 90, 'iscrowd': 0, 'segmentation': [_poly(0, 0, 79, 59)]},
    ]
    cats = [{'id': c, 'name': str(c)} for c in (1, 3, 5, 18, 90)]
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    with open(os.path.join(root, 'annotations', f'instances_{split}2017.json'), 'w') as f:
        json.dump({'images': images, 'annotations': anns, 'categories': cats}, f)
    for k, image in enumerate(images):
        _jpeg(os.path.join(root, f'{split}2017', image['file_name']), h, w, seed=k)
    return root


@pytest.fixture()
def aug_root(tmp_path, sample_data):
    """GluonCV voc root over the bundled data: VOC2012 -> voc_mini, VOCaug/dataset/* -> sbd_mini (+ empty
    train.txt, which the sample lacks)."""
    root = tmp_path / 'voc'
    (root / 'VOCaug' / 'dataset').mkdir(parents=True)
    os.symlink(os.path.join(sample_data, 'voc_mini', 'VOC2012'), root / 'VOC2012')
    sbd = os.path.join(sample_data, 'sbd_mini', 'benchmark_RELEASE', 'dataset')
    for name in ('img', 'cls', 'val.txt'):
        os.symlink(os.path.join(sbd, name), root / 'VOCaug' / 'dataset' / name)
    (root / 'VOCaug' / 'dataset' / 'train.txt').write_text('')
    return str(root)


def _np(x):
    return x.asnumpy() if isinstance(x, mx.nd.NDArray) else np.asarray(x)


def _assert_items_equal(ours, theirs):
    """Images exactly equal, same type and dtype; masks equal in value (GluonCV's VOC mask is float32)."""
    assert type(ours[0]) is type(theirs[0]) and ours[0].dtype == theirs[0].dtype
    np.testing.assert_array_equal(_np(ours[0]), _np(theirs[0]))
    assert ours[1].dtype == np.int32
    np.testing.assert_array_equal(_np(ours[1]), _np(theirs[1]).astype(np.int32))


# --------------------------------------------------------------------------------------------- registry
def test_registry_names_and_classes():
    gluoncv_names = {'pascal_voc', 'pascal_aug', 'coco', 'ade20k', 'citys'}
    assert set(DATASETS) - {'folder'} == gluoncv_names   # folder: your own data, classes from classes.txt
    assert NUM_CLASS == {'pascal_voc': 21, 'pascal_aug': 21, 'coco': 21, 'ade20k': 150, 'citys': 19}
    for name in gluoncv_names:
        cls, theirs = DATASETS[name], gdata.datasets[name]
        assert cls.NUM_CLASS == theirs.NUM_CLASS
        assert tuple(cls.CLASSES) == tuple(theirs.CLASSES)
        assert len(cls.CLASSES) == cls.NUM_CLASS
        assert cls.pred_offset == (1 if name == 'ade20k' else 0)
    assert list(DATASETS['coco'].CAT_LIST) == list(gdata.COCOSegmentation.CAT_LIST)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match='pascal_voc, pascal_aug, coco, ade20k, citys'):
        get_segmentation_dataset('pascal')


def test_name_is_case_insensitive(sample_data):
    ds = get_segmentation_dataset('Pascal_VOC', split='val', root=os.path.join(sample_data, 'voc_mini'))
    assert len(ds) == 15 and ds.num_class == 21 and ds.classes[0] == 'background'


def test_unknown_split_and_mode(sample_data):
    root = os.path.join(sample_data, 'voc_mini')
    with pytest.raises(ValueError, match="split 'bogus'.*train, trainval, train_official, val, test"):
        get_segmentation_dataset('pascal_voc', split='bogus', root=root)
    with pytest.raises(ValueError, match="mode 'eval'.*train, val, testval, test"):
        get_segmentation_dataset('pascal_voc', split='val', mode='eval', root=root)


@pytest.mark.parametrize('name, sub, command', [
    ('pascal_voc', 'voc', 'scripts/datasets/pascal_voc.py'), ('pascal_aug', 'voc', 'scripts/datasets/pascal_voc.py'),
    ('coco', 'coco', 'scripts/datasets/mscoco.py'), ('ade20k', 'ade', 'scripts/datasets/ade20k.py'),
    ('citys', 'citys', 'scripts/datasets/cityscapes.py')])
def test_missing_default_root_uses_mxnet_home(tmp_path, monkeypatch, name, sub, command):
    monkeypatch.setenv('MXNET_HOME', str(tmp_path / 'mxhome'))
    expected = str(tmp_path / 'mxhome' / 'datasets' / sub)
    assert default_root(sub) == expected
    split = 'train_aug' if name == 'pascal_aug' else 'train'
    with pytest.raises(FileNotFoundError) as info:
        get_segmentation_dataset(name, split=split)
    message = str(info.value)
    assert expected in message and 'root folder itself does not exist' in message
    assert 'Expected layout' in message and command in message


def test_default_root_without_mxnet_home(monkeypatch):
    monkeypatch.delenv('MXNET_HOME', raising=False)
    assert default_root('voc') == os.path.expanduser('~/.mxnet/datasets/voc')


# --------------------------------------------------------------------------------------------- pascal_voc
def test_voc_split_lengths(sample_data):
    root = os.path.join(sample_data, 'voc_mini')
    splits = ('train', 'trainval', 'train_official', 'val')
    lengths = {s: len(get_segmentation_dataset('pascal_voc', split=s, root=root)) for s in splits}
    assert lengths == {'train': 45, 'trainval': 45, 'train_official': 30, 'val': 15}   # 'train' = trainval (GluonCV)
    official = get_segmentation_dataset('pascal_voc', split='train_official', root=root)
    val = get_segmentation_dataset('pascal_voc', split='val', root=root)
    assert not set(official.images) & set(val.images)   # held out: no val image in train_official
    assert len(gdata.VOCSegmentation(root=root, split='train')) == 45


def test_voc_testval_equals_gluoncv(sample_data):
    root = os.path.join(sample_data, 'voc_mini')
    ours = get_segmentation_dataset('pascal_voc', split='val', mode='testval', root=root)
    theirs = gdata.VOCSegmentation(root=root, split='val', mode='testval')
    assert ours.images == theirs.images
    for i in range(len(ours)):
        _assert_items_equal(ours[i], theirs[i])


def test_voc_mask_mapping(sample_data):
    root = os.path.join(sample_data, 'voc_mini')
    ds = get_segmentation_dataset('pascal_voc', split='val', mode='testval', root=root)
    raw = np.array(Image.open(ds.masks[0]))
    mask = ds[0][1].asnumpy()
    assert set(np.unique(raw)) >= {0, 255}
    np.testing.assert_array_equal(mask[raw == 255], -1)
    np.testing.assert_array_equal(mask[raw != 255], raw[raw != 255])


def test_voc_test_mode_equals_gluoncv(sample_data):
    root = os.path.join(sample_data, 'voc_mini')
    ours = get_segmentation_dataset('pascal_voc', split='val', mode='test', root=root)
    theirs = gdata.VOCSegmentation(root=root, split='val', mode='test')
    assert ours.masks == []
    for i in (0, 7):
        (image, name), (their_image, their_name) = ours[i], theirs[i]
        assert name == their_name == os.path.basename(ours.images[i])
        assert image.dtype == np.float32   # GluonCV's image: float32 NDArray of 0..255 values
        np.testing.assert_array_equal(image.asnumpy(), their_image.asnumpy())


def test_voc_test_split_without_masks(tmp_path):
    root = make_voc(str(tmp_path), {'val': ['a']})
    _write_list(os.path.join(root, 'VOC2012', 'ImageSets', 'Segmentation', 'test.txt'), ['a'])
    os.remove(os.path.join(root, 'VOC2012', 'SegmentationClass', 'a.png'))
    image, name = get_segmentation_dataset('pascal_voc', split='test', root=root)[0]
    assert name == 'a.jpg' and image.shape == (24, 32, 3)


def test_gluon_transform_gets_ndarray_like_gluoncv(sample_data):
    from mxnet.gluon.data.vision import transforms
    compose = transforms.Compose([transforms.ToTensor(), transforms.Normalize([.485, .456, .406], [.229, .224, .225])])
    root = os.path.join(sample_data, 'voc_mini')
    ours = get_segmentation_dataset('pascal_voc', split='val', mode='testval', root=root, transform=compose)[3]
    theirs = gdata.VOCSegmentation(root=root, split='val', mode='testval', transform=compose)[3]
    assert ours[0].dtype == np.float32 and ours[0].shape[0] == 3
    np.testing.assert_array_equal(ours[0].asnumpy(), theirs[0].asnumpy())


def test_transforms_pipeline_makes_the_item(sample_data):
    seen = []

    def to_chw(image, label, rng):
        seen.append((type(image), None if label is None else label.dtype, rng))
        return np.asarray(image).transpose(2, 0, 1).astype(np.float32), label
    root = os.path.join(sample_data, 'voc_mini')
    ds = get_segmentation_dataset('pascal_voc', split='val', mode='testval', root=root, transforms=to_chw)
    image, mask = ds.load(0, rng='the rng')
    assert seen == [(Image.Image, np.int32, 'the rng')]
    assert isinstance(image, np.ndarray) and image.shape[0] == 3
    assert isinstance(mask, np.ndarray) and mask.dtype == np.int32 and mask.shape == image.shape[1:]
    ds[0]
    assert seen[-1][2] is None   # dataset[i]: Python's global random, as GluonCV
    image, name = get_segmentation_dataset('pascal_voc', split='val', mode='test', root=root, transforms=to_chw)[0]
    assert isinstance(image, np.ndarray) and image.shape[0] == 3 and name.endswith('.jpg') and seen[-1][1] is None


@pytest.mark.parametrize('recipe', ['gluoncv', 'composer'])
def test_recipe_names_give_numpy_items(sample_data, recipe):
    root = os.path.join(sample_data, 'ade_mini')
    for mode, crop in (('train', 48), ('val', 40)):
        ds = get_segmentation_dataset('ade20k', split='val', mode=mode, root=root, transforms=recipe, base_size=64,
                                      crop_size=crop)
        image, mask = ds.load(1, np.random.default_rng(0))
        assert isinstance(image, np.ndarray) and image.dtype == np.float32 and image.shape == (3, crop, crop)
        assert isinstance(mask, np.ndarray) and mask.dtype == np.int32 and mask.shape == (crop, crop)
    testval = get_segmentation_dataset('ade20k', split='val', mode='testval', root=root, transforms=recipe)
    gluoncv_items = get_segmentation_dataset('ade20k', split='val', mode='testval', root=root)
    np.testing.assert_array_equal(testval[0][1], gluoncv_items[0][1].asnumpy())


def test_bad_transforms_arguments(sample_data):
    root = os.path.join(sample_data, 'voc_mini')
    with pytest.raises(ValueError, match='not both'):
        get_segmentation_dataset('pascal_voc', split='val', root=root, transform=np.asarray, transforms='gluoncv')
    with pytest.raises(ValueError, match="unknown augmentation 'mmseg'; valid: gluoncv, composer"):
        get_segmentation_dataset('pascal_voc', split='val', root=root, transforms='mmseg')
    with pytest.raises(ValueError, match='gluoncv_mask_pad applies to the built-in pipelines'):
        get_segmentation_dataset('pascal_voc', split='val', root=root, gluoncv_mask_pad=True,
                                 transforms=lambda image, label, rng: (image, label))


# --------------------------------------------------------------------------------------------- mask padding switch
@pytest.mark.parametrize('name, padded_background', [('pascal_voc', 0), ('ade20k', -1)])
@pytest.mark.parametrize('recipe', [None, 'gluoncv', 'composer'])
def test_mask_pad_switch_reaches_the_pipeline(sample_data, name, padded_background, recipe):
    root = os.path.join(sample_data, 'voc_mini' if name == 'pascal_voc' else 'ade_mini')
    for compat, expected in ((False, -1), (True, padded_background)):
        ds = get_segmentation_dataset(name, split='train', root=root, base_size=64, crop_size=48,
                                      gluoncv_mask_pad=compat, transforms=recipe)
        assert ds.mask_pad == expected
        pads = [getattr(t, 'mask_pad', getattr(t, 'label_fill', None)) for t in ds.transforms.transforms]
        assert [p for p in pads if p is not None] == [expected]
        assert ds[0][1].shape == (48, 48)
    val = get_segmentation_dataset(name, split='val', root=root, crop_size=40, transforms=recipe)
    assert val.mode == 'val' and val[0][1].shape == (40, 40)


def test_datasets_pickle(tmp_path, sample_data):
    import pickle
    coco = make_coco(str(tmp_path / 'coco'))
    ade = os.path.join(sample_data, 'ade_mini')
    for ds in (get_segmentation_dataset('coco', split='train', mode='testval', root=coco),
               get_segmentation_dataset('ade20k', split='val', mode='testval', root=ade)):
        again = pickle.loads(pickle.dumps(ds))
        np.testing.assert_array_equal(again[0][1].asnumpy(), ds[0][1].asnumpy())


def test_mask_pad_values_per_dataset(tmp_path):
    make_citys(str(tmp_path / 'citys'))
    make_coco(str(tmp_path / 'coco'))
    make_sbd(make_voc(str(tmp_path / 'voc'), {'train': ['v'], 'val': ['w']}), {'train': ['s'], 'val': ['t']})
    compat = {name: get_segmentation_dataset(name, split='val' if name == 'pascal_aug' else 'train',
                                             root=str(tmp_path / sub), gluoncv_mask_pad=True).mask_pad
              for name, sub in (('citys', 'citys'), ('coco', 'coco'), ('pascal_aug', 'voc'))}
    assert compat == {'citys': -1, 'coco': 0, 'pascal_aug': 0}


def test_train_and_val_modes_with_real_transforms(tmp_path):
    pytest.importorskip('segzoo.data.transforms')
    root = make_voc(str(tmp_path), {'trainval': ['a', 'b'], 'val': ['a']}, values=(0, 3))
    for compat, pad in ((False, -1), (True, 0)):
        ds = get_segmentation_dataset('pascal_voc', split='train', root=root, base_size=16, crop_size=64,
                                      gluoncv_mask_pad=compat)
        image, mask = ds[0]   # long side 8..32 < crop 64: always padded
        assert image.shape == (64, 64, 3) and image.dtype == np.float32
        assert mask.shape == (64, 64) and mask.dtype == np.int32
        values = set(np.unique(mask.asnumpy()).tolist())
        assert values <= {pad, 0, 3} and (pad == -1) == (-1 in values)
    image, mask = get_segmentation_dataset('pascal_voc', split='val', root=root, crop_size=20)[0]
    assert image.shape == (20, 20, 3) and mask.shape == (20, 20)


# --------------------------------------------------------------------------------------------- pascal_aug
def test_train_aug_ids_excludes_voc_val(tmp_path):
    root = make_voc(str(tmp_path), {'train': ['c', 'f'], 'val': ['e', 'g']})
    make_sbd(root, {'train': ['a', 'b', 'c'], 'val': ['d', 'e']})
    assert train_aug_ids(root) == ['a', 'b', 'c', 'd', 'f']


def test_train_aug_items_prefer_official_voc_png(tmp_path):
    root = make_voc(str(tmp_path), {'train': ['c', 'f'], 'val': ['e', 'g']}, values=(0, 3, 255))
    make_sbd(root, {'train': ['a', 'b', 'c'], 'val': ['d', 'e']}, size=(24, 32), values=(0, 7))
    ds = get_segmentation_dataset('pascal_aug', split='train_aug', mode='testval', root=root)
    names = [os.path.relpath(m, root) for m in ds.masks]
    assert names == ['VOCaug/dataset/cls/a.mat', 'VOCaug/dataset/cls/b.mat', 'VOC2012/SegmentationClass/c.png',
                     'VOCaug/dataset/cls/d.mat', 'VOC2012/SegmentationClass/f.png']
    assert os.path.relpath(ds.images[2], root) == 'VOC2012/JPEGImages/c.jpg'
    c_mask = ds[2][1].asnumpy()
    raw = np.array(Image.open(ds.masks[2]))
    np.testing.assert_array_equal(c_mask, np.where(raw == 255, -1, raw))
    assert set(np.unique(ds[0][1].asnumpy())) <= {0, 7}
    # a train_aug.txt written by the preparation script wins over the computed list
    _write_list(os.path.join(root, 'VOCaug', 'dataset', 'train_aug.txt'), ['b', 'f'])
    assert len(get_segmentation_dataset('pascal_aug', split='train_aug', root=root)) == 2


@pytest.mark.parametrize('split', ['train', 'trainval'])
def test_leaky_splits_warn(tmp_path, split):
    root = make_voc(str(tmp_path), {'train': ['c'], 'val': ['e', 'g']})
    make_sbd(root, {'train': ['a', 'b', 'c'], 'val': ['d', 'e']})
    with pytest.warns(LeakySplitWarning, match=r"1 of its 5 images are in the VOC2012 val set.*train_aug"):
        ds = get_segmentation_dataset('pascal_aug', split=split, root=root)
    assert len(ds) == 5 and all(m.endswith('.mat') for m in ds.masks)   # no trainval.txt: train + val lists
    _write_list(os.path.join(root, 'VOCaug', 'dataset', 'trainval.txt'), ['a', 'b', 'c', 'd', 'e'])
    with pytest.warns(LeakySplitWarning):
        ds = get_segmentation_dataset('pascal_aug', split=split, root=root)
    theirs = gdata.VOCAugSegmentation(root=root, split='train')   # GluonCV reads trainval.txt
    assert ds.images == theirs.images and ds.masks == theirs.masks
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        get_segmentation_dataset('pascal_aug', split='train_aug', root=root)
        get_segmentation_dataset('pascal_aug', split='val', root=root)


def test_pascal_aug_sample_matches_gluoncv(aug_root):
    ours = get_segmentation_dataset('pascal_aug', split='val', mode='testval', root=aug_root)
    theirs = gdata.VOCAugSegmentation(root=aug_root, split='val')
    assert len(ours) == len(theirs) == 1 and ours.images == theirs.images
    image, mask = ours[0]
    their_mask = theirs._mask_transform(theirs._load_mat(theirs.masks[0])).asnumpy()
    np.testing.assert_array_equal(mask.asnumpy(), their_mask)
    np.testing.assert_array_equal(image.asnumpy(), np.asarray(Image.open(theirs.images[0]).convert('RGB')))
    assert set(np.unique(mask.asnumpy())) == {0, 13, 15}   # background, horse, person (SOURCES.md)
    image, name = get_segmentation_dataset('pascal_aug', split='val', mode='test', root=aug_root)[0]
    assert name == 'rider.jpg' and image.shape == (333, 500, 3)


def test_pascal_aug_sample_train_aug(aug_root):
    ds = get_segmentation_dataset('pascal_aug', split='train_aug', mode='testval', root=aug_root)
    assert len(ds) == 31   # 30 VOC train + SBD 'rider'; the 15 VOC val ids are out
    assert sum(m.endswith('.mat') for m in ds.masks) == 1
    voc_val = get_segmentation_dataset('pascal_voc', split='val', root=aug_root)
    assert not set(ds.images) & set(voc_val.images)


def test_missing_sbd_train_list_named(tmp_path):
    root = make_sbd(make_voc(str(tmp_path), {'train': ['c'], 'val': ['e']}), {'val': ['d']})
    with pytest.raises(FileNotFoundError, match=r'VOCaug/dataset/train\.txt.*\n.*\n.*scripts/datasets/pascal_voc\.py'):
        get_segmentation_dataset('pascal_aug', split='train_aug', root=root)
    with pytest.raises(FileNotFoundError, match=r'split list not found: .*VOCaug/dataset/train\.txt'):
        get_segmentation_dataset('pascal_aug', split='train', root=root)


# --------------------------------------------------------------------------------------------- ade20k
def test_ade_lengths_and_testval_equal_gluoncv(sample_data):
    root = os.path.join(sample_data, 'ade_mini')
    assert len(get_segmentation_dataset('ade20k', split='train', root=root)) == 1
    ours = get_segmentation_dataset('ade20k', split='val', mode='testval', root=root)
    theirs = gdata.ADE20KSegmentation(root=root, split='val', mode='testval')
    assert len(ours) == len(theirs) == 3
    assert ours.images == sorted(ours.images) and sorted(theirs.images) == ours.images
    for i, path in enumerate(ours.images):
        item = ours[i]
        _assert_items_equal(item, theirs[theirs.images.index(path)])
        raw = np.array(Image.open(ours.masks[i]))
        np.testing.assert_array_equal(item[1].asnumpy(), raw.astype(np.int32) - 1)
        assert item[1].asnumpy().min() == -1 and item[1].asnumpy().max() < 150


def test_ade_test_mode_and_test_split(sample_data, tmp_path):
    root = os.path.join(sample_data, 'ade_mini')
    ours = get_segmentation_dataset('ade20k', split='val', mode='test', root=root)
    theirs = gdata.ADE20KSegmentation(root=root, split='val', mode='test')
    image, name = ours[1]
    their_image, their_name = theirs[theirs.images.index(ours.images[1])]
    assert name == their_name == 'ADE_val_00000002.jpg'
    np.testing.assert_array_equal(image.asnumpy(), their_image.asnumpy())
    _jpeg(str(tmp_path / 'release_test' / 'testing' / 'ADE_test_00000001.jpg'), 10, 12)
    ds = get_segmentation_dataset('ade20k', split='test', mode='test', root=str(tmp_path))
    assert len(ds) == 1 and ds[0][1] == 'ADE_test_00000001.jpg'
    with pytest.raises(ValueError, match="use mode='test'"):
        get_segmentation_dataset('ade20k', split='test', mode='testval', root=str(tmp_path))


# --------------------------------------------------------------------------------------------- cityscapes
def test_citys_mapping_and_gluoncv_parity(tmp_path):
    root = make_citys(str(tmp_path))
    lengths = {s: len(get_segmentation_dataset('citys', split=s, root=root)) for s in ('train', 'val', 'trainval')}
    assert lengths == {'train': 3, 'val': 1, 'trainval': 4}
    ours = get_segmentation_dataset('citys', split='train', mode='testval', root=root)
    theirs = gdata.CitySegmentation(root=root, split='train', mode='testval')
    eval_ids = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    for i, path in enumerate(ours.images):
        item = ours[i]
        _assert_items_equal(item, theirs[theirs.images.index(path)])
        raw = np.array(Image.open(ours.masks[i]))
        expected = np.full(raw.shape, -1, dtype=np.int32)   # by hand: the k-th evaluated labelId -> k
        for k, label_id in enumerate(eval_ids):
            expected[raw == label_id] = k
        np.testing.assert_array_equal(item[1].asnumpy(), expected)


def test_citys_test_split(tmp_path):
    root = make_citys(str(tmp_path))
    ds = get_segmentation_dataset('citys', split='test', mode='test', root=root)
    assert len(ds) == 1 and ds[0][1] == 'berlin_000000_000019_leftImg8bit.png'


# --------------------------------------------------------------------------------------------- coco
def test_coco_sample_equals_gluoncv(sample_data, tmp_path):
    root = str(tmp_path / 'coco')
    shutil.copytree(os.path.join(sample_data, 'coco_mini'), root)
    for split in ('train', 'val'):
        ours = get_segmentation_dataset('coco', split=split, mode='testval', root=root)
        theirs = gdata.COCOSegmentation(root=root, split=split, mode='testval')
        assert ours.ids == theirs.ids and len(ours) == 1
        _assert_items_equal(ours[0], theirs[0])
        assert ours[0][1].asnumpy().max() > 0
    assert os.path.isfile(os.path.join(root, 'annotations', 'segzoo_train_ids.json'))


def test_coco_generated_masks(tmp_path):
    root = make_coco(str(tmp_path))
    ours = get_segmentation_dataset('coco', split='train', mode='testval', root=root)
    theirs = gdata.COCOSegmentation(root=root, split='train', mode='testval')
    assert ours.ids == theirs.ids == [1]   # image 2 has < 1000 px, image 3 only a non-VOC category
    _assert_items_equal(ours[0], theirs[0])
    mask = ours[0][1].asnumpy()
    assert mask[10, 10] == 15            # person
    assert mask[30, 40] == 15            # person painted first: wins over the dog it overlaps
    assert mask[45, 65] == 12            # dog outside the person
    assert mask[55, 5] == 12             # dog's second polygon
    assert mask[55, 70] == 7             # crowd RLE car, labelled (GluonCV's default)
    assert mask[2, 78] == 0              # toothbrush: not a VOC class
    no_crowd = get_segmentation_dataset('coco', split='train', mode='testval', root=root, include_crowd=False)
    assert no_crowd[0][1].asnumpy()[55, 70] == 0
    image, name = get_segmentation_dataset('coco', split='train', mode='test', root=root)[0]
    assert name == '000000000001.jpg'
    np.testing.assert_array_equal(image.asnumpy(), theirs[0][0].asnumpy())


def test_coco_cache_built_reused_rebuilt(tmp_path, monkeypatch, capsys):
    from segzoo.data.coco import COCOSegmentation
    root = make_coco(str(tmp_path))
    cache = os.path.join(root, 'annotations', 'segzoo_train_ids.json')
    assert get_segmentation_dataset('coco', root=root).ids == [1]
    assert 'coco train: selecting images' in capsys.readouterr().err      # tqdm bar while building
    assert json.load(open(cache))['ids'] == [1]
    assert not [f for f in os.listdir(os.path.dirname(cache)) if f.endswith('.tmp')]

    def fail(self):
        raise AssertionError('cache not reused')
    monkeypatch.setattr(COCOSegmentation, '_build_ids', fail)
    assert get_segmentation_dataset('coco', root=root).ids == [1]
    monkeypatch.undo()
    # grow image 2's annotation above 1000 px: the json changes, so the cache must be rebuilt
    ann_file = os.path.join(root, 'annotations', 'instances_train2017.json')
    content = json.load(open(ann_file))
    content['annotations'][4]['segmentation'] = [_poly(0, 0, 60, 40)]
    json.dump(content, open(ann_file, 'w'))
    assert get_segmentation_dataset('coco', root=root).ids == [1, 2]
    assert json.load(open(cache))['ids'] == [1, 2]
    # a corrupt cache is rebuilt too
    open(cache, 'w').write('{not json')
    assert get_segmentation_dataset('coco', root=root).ids == [1, 2]


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize('pil_loads_truncated', [False, True])   # importing gluoncv.data turns it on
def test_truncated_jpeg_named(tmp_path, monkeypatch, pil_loads_truncated):
    from PIL import ImageFile
    monkeypatch.setattr(ImageFile, 'LOAD_TRUNCATED_IMAGES', pil_loads_truncated)
    root = make_voc(str(tmp_path), {'val': ['a', 'b']}, size=(64, 80))
    path = os.path.join(root, 'VOC2012', 'JPEGImages', 'b.jpg')
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 2])
    ds = get_segmentation_dataset('pascal_voc', split='val', mode='testval', root=root)
    ds[0]
    with pytest.raises(DatasetError, match=f'cannot read image {path}: OSError: image file is truncated'):
        ds[1]


@pytest.mark.parametrize('pil_loads_truncated', [False, True])
def test_truncated_png_mask_named(tmp_path, monkeypatch, pil_loads_truncated):
    from PIL import ImageFile
    monkeypatch.setattr(ImageFile, 'LOAD_TRUNCATED_IMAGES', pil_loads_truncated)
    root = make_voc(str(tmp_path), {'val': ['a']}, size=(64, 80))
    path = os.path.join(root, 'VOC2012', 'SegmentationClass', 'a.png')
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) * 2 // 3])
    with pytest.raises(DatasetError, match=f'cannot read mask {path}: '):
        get_segmentation_dataset('pascal_voc', split='val', mode='testval', root=root)[0]


def test_error_survives_dataloader_workers(tmp_path):
    root = make_voc(str(tmp_path), {'val': ['a', 'b']})
    path = os.path.join(root, 'VOC2012', 'JPEGImages', 'b.jpg')
    open(path, 'wb').write(b'not a jpeg at all')
    ds = get_segmentation_dataset('pascal_voc', split='val', mode='testval', root=root)
    loader = mx.gluon.data.DataLoader(ds, batch_size=1, num_workers=2, timeout=60)
    with pytest.raises(DatasetError, match=f'cannot read image {path}'):
        for _ in loader:
            pass


def test_unreadable_mask_named(tmp_path):
    root = make_voc(str(tmp_path), {'val': ['a']})
    path = os.path.join(root, 'VOC2012', 'SegmentationClass', 'a.png')
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:60])
    with pytest.raises(DatasetError, match=f'cannot read mask {path}'):
        get_segmentation_dataset('pascal_voc', split='val', mode='testval', root=root)[0]


def test_size_mismatch_names_both_files(tmp_path):
    root = make_voc(str(tmp_path), {'val': ['a']})
    image = os.path.join(root, 'VOC2012', 'JPEGImages', 'a.jpg')
    mask = os.path.join(root, 'VOC2012', 'SegmentationClass', 'a.png')
    _png(mask, np.zeros((10, 12)), palette=True)
    with pytest.raises(DatasetError) as info:
        get_segmentation_dataset('pascal_voc', split='val', mode='testval', root=root)[0]
    assert image in str(info.value) and mask in str(info.value) and '32x24' in str(info.value)


@pytest.mark.parametrize('name', ['pascal_voc', 'ade20k', 'citys', 'pascal_aug'])
def test_bad_label_values_named(tmp_path, name):
    if name == 'pascal_voc':
        root = make_voc(str(tmp_path), {'val': ['a']}, values=(0, 5, 21, 30, 255))
        split, valid = 'val', '0-20, 255'
    elif name == 'pascal_aug':
        root = make_sbd(str(tmp_path), {'val': ['a']}, values=(0, 5, 255))
        split, valid = 'val', '0-20'
    elif name == 'ade20k':
        root = str(tmp_path)
        base = os.path.join(root, 'ADEChallengeData2016')
        _jpeg(os.path.join(base, 'images', 'validation', 'x.jpg'), 8, 8)
        _png(os.path.join(base, 'annotations', 'validation', 'x.png'), _label(8, 8, (0, 150, 151, 200)))
        split, valid = 'val', '0-150'
    else:
        root = make_citys(str(tmp_path))
        _png(os.path.join(root, 'gtFine', 'val', 'frankfurt', 'frankfurt_000000_000294_gtFine_labelIds.png'),
             _label(16, 24, (7, 34, 40)))
        split, valid = 'val', '0-33'
    ds = get_segmentation_dataset(name, split=split, mode='testval', root=root)
    bad = {'pascal_voc': '[21, 30]', 'pascal_aug': '[255]', 'ade20k': '[151, 200]', 'citys': '[34, 40]'}[name]
    with pytest.raises(DatasetError) as info:
        ds[0]
    message = str(info.value)
    assert ds.masks[0] in message and bad in message and f'valid raw values {valid}' in message


def test_bad_sbd_mat_named(tmp_path):
    root = make_sbd(str(tmp_path), {'val': ['a', 'b']})
    first = os.path.join(root, 'VOCaug', 'dataset', 'cls', 'a.mat')
    scipy.io.savemat(first, {'something': np.zeros((2, 2))})
    second = os.path.join(root, 'VOCaug', 'dataset', 'cls', 'b.mat')
    open(second, 'wb').write(b'garbage')
    ds = get_segmentation_dataset('pascal_aug', split='val', mode='testval', root=root)
    with pytest.raises(DatasetError, match=f'{first} has no GTcls.Segmentation'):
        ds[0]
    with pytest.raises(DatasetError, match=f'cannot read SBD mask {second}'):
        ds[1]


def test_missing_files_named(tmp_path):
    root = make_voc(str(tmp_path / 'voc'), {'val': ['a', 'b']})
    os.remove(os.path.join(root, 'VOC2012', 'SegmentationClass', 'b.png'))
    with pytest.raises(FileNotFoundError, match=r'masks not found: 1 of 2 masks.*\n.*SegmentationClass/b\.png'):
        get_segmentation_dataset('pascal_voc', split='val', root=root)
    with pytest.raises(FileNotFoundError, match=r'split list not found: .*ImageSets/Segmentation/trainval\.txt'):
        get_segmentation_dataset('pascal_voc', split='train', root=root)
    ade = tmp_path / 'ade' / 'ADEChallengeData2016'
    _jpeg(str(ade / 'images' / 'training' / 'x.jpg'), 8, 8)
    (ade / 'annotations' / 'training').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r'annotations/training/x\.png'):
        get_segmentation_dataset('ade20k', split='train', root=str(tmp_path / 'ade'))
    citys = make_citys(str(tmp_path / 'citys'))
    os.remove(os.path.join(citys, 'gtFine', 'val', 'frankfurt', 'frankfurt_000000_000294_gtFine_labelIds.png'))
    with pytest.raises(FileNotFoundError, match=r'frankfurt_000000_000294_gtFine_labelIds\.png'):
        get_segmentation_dataset('citys', split='val', root=citys)
    coco = make_coco(str(tmp_path / 'coco'))
    os.remove(os.path.join(coco, 'train2017', '000000000001.jpg'))
    with pytest.raises(FileNotFoundError, match=r'train2017/000000000001\.jpg'):
        get_segmentation_dataset('coco', split='train', root=coco)


def test_augment_flag_selects_the_recipe(sample_data):
    from helpers import load_script
    from segzoo.data.transforms import RandomCrop, RandomScalePadCrop, Resize, ResizeShortSide
    train = load_script('train.py')
    root = os.path.join(sample_data, 'ade_mini')
    for flag, train_step, val_step in (([], RandomScalePadCrop, ResizeShortSide),
                                       (['--augment', 'composer'], RandomCrop, Resize)):
        train_set, val_set = train.get_datasets(train.parse_args(['--dataset', 'ade20k', '--dataset-root', root,
                                                                  '--crop-size', '48'] + flag))
        assert any(isinstance(t, train_step) for t in train_set.transforms.transforms)
        assert isinstance(val_set.transforms.transforms[0], val_step)
        image, mask = train_set[0]
        assert isinstance(image, np.ndarray) and image.shape == (3, 48, 48) and mask.shape == (48, 48)
    with pytest.raises(SystemExit):
        train.parse_args(['--augment', 'mmseg'])
