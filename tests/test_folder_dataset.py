"""Your own data: the folder dataset, its checker, train.py / test.py on it, and --reset-classes fine-tuning."""
import os
import shutil

import mxnet as mx
import numpy as np
import pytest
from helpers import ROOT, load_script
from PIL import Image

from segzoo.data import DatasetError, get_segmentation_dataset
from segzoo.data.folder import check_folder
from segzoo.data.transforms import RECIPES, ImageNormalize
from segzoo.model_zoo import get_segmentation_model

train = load_script('train.py')
test_script = load_script('test.py')

VOC = os.path.join(ROOT, 'segzoo', 'sample_data', 'voc_mini', 'VOC2012')
CLASSES = ('background', 'person', 'other')


def _checker():
    return load_script(os.path.join('scripts', 'datasets', 'folder.py'))


def _voc_as_three_classes(name):
    """Oracle: the VOC mask of `name` mapped by hand (person 15 -> 1, other objects -> 2, 255 -> ignore)."""
    voc = np.array(Image.open(os.path.join(VOC, 'SegmentationClass', name + '.png'))).astype(np.int32)
    return np.select([voc == 15, voc == 255, voc > 0], [1, -1, 2], 0)


def _np(array):
    return array.asnumpy() if hasattr(array, 'asnumpy') else np.asarray(array)


@pytest.fixture
def copy(folder_dataset, tmp_path):
    return shutil.copytree(folder_dataset, str(tmp_path / 'copy'))


def test_every_mode_reads_the_folder(folder_dataset):
    testval = get_segmentation_dataset('folder', split='train', mode='testval', root=folder_dataset)
    assert testval.CLASSES == testval.classes == CLASSES and testval.NUM_CLASS == testval.num_class == 3
    assert len(testval) == 4 and testval.SPLITS == ('train', 'val')
    image, label = testval[0]
    name = os.path.splitext(os.path.basename(testval.images[0]))[0]
    np.testing.assert_array_equal(label.asnumpy(), _voc_as_three_classes(name))
    assert image.shape == label.shape + (3,)
    for mode, shape in (('train', (48, 48)), ('val', (40, 40))):
        ds = get_segmentation_dataset('folder', split='val', mode=mode, root=folder_dataset,
                                      transform=ImageNormalize(), base_size=48, crop_size=shape[0])
        image, label = (_np(x) for x in ds[1])
        assert image.shape == (3,) + shape and label.shape == shape and label.dtype == np.int32
        assert set(np.unique(label)) <= {-1, 0, 1, 2}
    image, name = get_segmentation_dataset('folder', split='val', mode='test', root=folder_dataset)[0]
    assert name.endswith('.jpg') and image.ndim == 3
    for recipe in RECIPES:             # every augmentation set: 3-class labels in, 3-class labels out
        for mode in ('train', 'val'):
            ds = get_segmentation_dataset('folder', split='train', mode=mode, root=folder_dataset, transforms=recipe,
                                          base_size=64, crop_size=48)
            image, label = (_np(x) for x in ds[0])
            assert image.shape == (3, 48, 48) and set(np.unique(label)) <= {-1, 0, 1, 2}


def test_colour_masks_read_through_palette_txt(copy):
    mask_path = get_segmentation_dataset('folder', split='train', mode='testval', root=copy).masks[0]
    index = np.array(Image.open(mask_path))
    colours = np.array([[int(v) for v in line.split()] for line in open(os.path.join(copy, 'palette.txt'))])
    rgb = np.where((index == 255)[..., None], np.array([224, 224, 192]), colours[np.minimum(index, 2)])
    Image.fromarray(rgb.astype(np.uint8), 'RGB').save(mask_path)
    ds = get_segmentation_dataset('folder', split='train', mode='testval', root=copy)
    np.testing.assert_array_equal(ds[0][1].asnumpy(), np.where(index == 255, -1, index))
    os.remove(os.path.join(copy, 'palette.txt'))
    with pytest.raises(DatasetError, match=f'{mask_path}.*palette.txt'):
        get_segmentation_dataset('folder', split='train', mode='testval', root=copy)[0]


def test_checker_on_good_data(folder_dataset, capsys):
    report = _checker().main(_checker().parse_args([folder_dataset]))
    assert report.ok
    assert report.counts == {'train': {'images': 4, 'masks': 4, 'pairs': 4}, 'val': {'images': 2, 'masks': 2,
                                                                                     'pairs': 2}}
    expected = np.zeros(4, dtype=np.int64)
    for split in ('train', 'val'):
        for name in os.listdir(os.path.join(folder_dataset, 'masks', split)):
            ids = _voc_as_three_classes(name[:-4])
            expected += np.bincount(np.where(ids < 0, 3, ids).ravel(), minlength=4)
    np.testing.assert_array_equal(report.histogram, expected)
    out = capsys.readouterr().out
    assert 'person' in out and 'OK' in out


def test_checker_lists_each_bad_case_with_its_file(copy):
    masks, images = os.path.join(copy, 'masks', 'train'), os.path.join(copy, 'images', 'train')
    names = sorted(n[:-4] for n in os.listdir(masks))
    os.remove(os.path.join(masks, names[0] + '.png'))                                    # image without mask
    shutil.copy(os.path.join(masks, names[1] + '.png'), os.path.join(masks, 'orphan.png'))   # mask without image
    Image.open(os.path.join(masks, names[1] + '.png')).resize((20, 10)).save(os.path.join(masks, names[1] + '.png'))
    bad = np.array(Image.open(os.path.join(masks, names[2] + '.png')))
    bad[0, 0] = 7
    Image.fromarray(bad).save(os.path.join(masks, names[2] + '.png'))                      # value 7 of 3 classes
    with open(os.path.join(images, names[3] + '.jpg'), 'r+b') as f:
        f.truncate(2000)                                                                   # truncated JPEG
    report = check_folder(copy, progress=False)
    assert not report.ok
    expect = {'images without masks': names[0] + '.jpg', 'masks without images': 'orphan.png',
              'size mismatches': names[1] + '.png', 'values outside the classes': names[2] + '.png',
              'unreadable files': names[3] + '.jpg'}
    for kind, filename in expect.items():
        assert len(report.problems[kind]) == 1 and filename in report.problems[kind][0], kind
    assert '[7]' in report.problems['values outside the classes'][0]
    # the cheap check of train.py reads image headers only: the truncated JPEG is left to the full check
    cheap = check_folder(copy, splits=['train'], decode_images=False, progress=False)
    assert not cheap.problems['unreadable files'] and len(cheap.problems['size mismatches']) == 1
    with pytest.raises(SystemExit) as exit_info:
        train.main(train.parse_args(_train_argv(copy, copy + '_run')))
    message = str(exit_info.value)
    assert all(n in message for n in (names[0], 'orphan.png', names[1], names[2]))
    assert not os.path.exists(os.path.join(copy + '_run', 'checkpoint.params'))


def _train_argv(root, save_dir, *extra):
    return ['--dataset', 'folder', '--dataset-root', root, '--model', 'deeplab', '--backbone', 'resnet_tiny', '--aux',
            '--no-cuda', '--batch-size', '2', '--test-batch-size', '2', '--base-size', '48', '--crop-size', '48',
            '--workers', '0', '--epochs', '1', '--lr', '0.01', '--log-interval', '1', '--save-dir', str(save_dir),
            *extra]


@pytest.mark.slow
def test_train_fine_tune_and_evaluate(folder_dataset, tmp_path, capsys):
    result = train.main(train.parse_args(_train_argv(folder_dataset, tmp_path / 'scratch')))
    assert len(result['class_iou']) == 3
    trained = mx.nd.load(str(tmp_path / 'scratch' / 'checkpoint.params'))
    assert trained['head.block.4.weight'].shape[0] == 3 and trained['auxlayer.block.4.bias'].shape == (3,)

    voc = get_segmentation_model('deeplab', dataset='pascal_voc', backbone='resnet_tiny', aux=True)
    voc_file = str(tmp_path / 'voc21.params')
    voc.save_parameters(voc_file)
    with pytest.raises(SystemExit) as exit_info:
        train.main(train.parse_args(_train_argv(folder_dataset, tmp_path / 'no_flag', '--resume', voc_file)))
    message = str(exit_info.value)
    assert '\n' not in message and 'predicts 21 classes' in message and '--reset-classes' in message

    # lr 0: the fine-tuned checkpoint must hold the 21-class file's convolutions and fresh 3-class classifiers
    train.main(train.parse_args(_train_argv(folder_dataset, tmp_path / 'tuned', '--resume', voc_file,
                                            '--reset-classes', '--lr', '0')))
    log = (tmp_path / 'tuned' / 'train.log').read_text()
    assert 'head.block.4.weight' in log and 'auxlayer.block.4.weight' in log and 're-initialised for 3' in log
    tuned, source = mx.nd.load(str(tmp_path / 'tuned' / 'checkpoint.params')), mx.nd.load(voc_file)
    for key in ('conv1.0.weight', 'layer4.0.conv2.weight', 'head.aspp.concurent.0.0.weight', 'auxlayer.block.0.weight'):
        np.testing.assert_array_equal(tuned[key].asnumpy(), source[key].asnumpy(), err_msg=key)
    assert tuned['head.block.4.weight'].shape == (3, 256, 1, 1)

    out_dir = tmp_path / 'eval'
    record = test_script.main(test_script.parse_args([
        '--dataset', 'folder', '--dataset-root', folder_dataset, '--model', 'deeplab', '--backbone', 'resnet_tiny',
        '--aux', '--no-cuda', '--resume', str(tmp_path / 'scratch' / 'checkpoint.params'), '--eval',
        '--split', 'val', '--workers', '0', '--save-pred', '--out-dir', str(out_dir)]))
    assert list(record['class_iou']) == list(CLASSES)
    table = capsys.readouterr().out
    assert all(name in table for name in CLASSES)
    # oracle: pixAcc from the written prediction PNGs and the hand-mapped VOC masks
    right = total = 0
    for name in os.listdir(out_dir / 'predictions'):
        pred = np.array(Image.open(out_dir / 'predictions' / name))
        truth = _voc_as_three_classes(name[:-4])
        right, total = right + ((pred == truth) & (truth >= 0)).sum(), total + (truth >= 0).sum()
    assert record['pixAcc'] == pytest.approx(right / total, abs=1e-6)
