"""get_dataloader: batch shapes and types, seeding reproducibility, worker errors, list batching."""
import os
import random
import shutil

import mxnet as mx
import numpy as np
import pytest

from segzoo.data import get_segmentation_dataset
from segzoo.data.loader import SeededBatchSampler, get_dataloader, sample_rng

BASE, CROP = 64, 48
# (num_workers, thread_pool) combinations the loader supports
MODES = [(0, True), (2, True), (2, False)]


def _voc(root, mode='train', split='train', recipe='gluoncv'):
    return get_segmentation_dataset('pascal_voc', split=split, mode=mode, root=root, transforms=recipe,
                                    base_size=BASE, crop_size=CROP)


@pytest.fixture(scope='module')
def voc_root(sample_data):
    return os.path.join(sample_data, 'voc_mini')


def _epochs(loader, n):
    return [[tuple(x.asnumpy() for x in batch) for batch in loader] for _ in range(n)]


def _same(run_a, run_b):
    return all(len(ea) == len(eb) and all(np.array_equal(x, y) for ba, bb in zip(ea, eb) for x, y in zip(ba, bb))
               for ea, eb in zip(run_a, run_b))


# ------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize('last_batch,sizes', [('keep', [4] * 11 + [1]), ('discard', [4] * 11)])
def test_batches_shapes_and_types(voc_root, last_batch, sizes):
    loader = get_dataloader(_voc(voc_root), 4, shuffle=True, last_batch=last_batch, num_workers=2, seed=0)
    assert len(loader) == len(sizes)
    seen = []
    for image, mask in loader:
        assert isinstance(image, mx.nd.NDArray) and isinstance(mask, mx.nd.NDArray)
        assert image.dtype == np.float32 and mask.dtype == np.int32
        assert image.shape[1:] == (3, CROP, CROP) and mask.shape[1:] == (CROP, CROP)
        assert image.shape[0] == mask.shape[0]
        seen.append(image.shape[0])
    assert seen == sizes


def test_val_loader_keeps_the_exact_set_in_order(voc_root):
    dataset = _voc(voc_root, mode='val', split='val')
    masks = np.concatenate([m.asnumpy() for _, m in get_dataloader(dataset, 4, num_workers=2)])
    assert masks.shape[0] == len(dataset) == 15
    for i in (0, 7, 14):
        np.testing.assert_array_equal(masks[i], dataset[i][1])


def test_rollover_carries_samples_into_the_next_epoch(voc_root):
    loader = get_dataloader(_voc(voc_root), 4, shuffle=True, last_batch='rollover', seed=0)
    first, second = [[b[0].shape[0] for b in loader] for _ in range(2)]
    assert first == [4] * 11 and second == [4] * 11  # 45 = 11*4 + 1, the leftover joins epoch 2 (46 = 11*4 + 2)


class _EpochKeys:
    """A sampler for gluon's BatchSampler that replays SeededBatchSampler's per-epoch keys."""

    def __init__(self, seeded):
        self._seeded, self._epoch = seeded, 0

    def __iter__(self):
        self._epoch += 1
        return iter(self._seeded.epoch_keys(self._epoch - 1))

    def __len__(self):
        return 10


@pytest.mark.parametrize('batch_size', [4, 10, 25])
@pytest.mark.parametrize('last_batch', ['keep', 'discard', 'rollover'])
def test_batch_sampler_matches_gluon_batch_sampler(batch_size, last_batch):
    ours = SeededBatchSampler(10, batch_size, True, last_batch, base_seed=9)
    gluon = mx.gluon.data.BatchSampler(_EpochKeys(SeededBatchSampler(10, batch_size, True, last_batch, 9)),
                                       batch_size, last_batch)
    for _ in range(5):
        expected_len = len(gluon)
        assert len(ours) == expected_len
        batches = list(ours)
        assert batches == list(gluon)
        assert len(batches) == expected_len


@pytest.mark.parametrize('last_batch', ['rollover', 'discard'])
@pytest.mark.slow
def test_set_epoch_resumes_like_an_uninterrupted_run(voc_root, last_batch):
    dataset = _voc(voc_root)
    straight = _epochs(get_dataloader(dataset, 7, shuffle=True, last_batch=last_batch, num_workers=2, seed=5), 3)
    resumed = get_dataloader(dataset, 7, shuffle=True, last_batch=last_batch, num_workers=2, seed=5)
    resumed.set_epoch(2)
    assert resumed.epoch == 2
    assert _same([straight[2]], _epochs(resumed, 1))
    resumed.set_epoch(1, skip_batches=4)  # resume in the middle of epoch 1
    assert len(resumed) == len(straight[1]) - 4
    assert _same([straight[1][4:], straight[2]], _epochs(resumed, 2))


# ------------------------------------------------------------------------------------------- seeding
@pytest.mark.slow
def test_seeded_runs_are_reproducible_across_worker_modes(voc_root):
    dataset = _voc(voc_root)
    runs = [_epochs(get_dataloader(dataset, 8, shuffle=True, num_workers=w, thread_pool=t, seed=11), 2)
            for w, t in MODES]
    repeat = _epochs(get_dataloader(dataset, 8, shuffle=True, num_workers=2, seed=11), 2)
    assert _same(runs[1], repeat)
    assert _same(runs[0], runs[1]) and _same(runs[0], runs[2])
    assert not np.array_equal(runs[0][0][0][0], runs[0][1][0][0])  # epochs differ
    other = _epochs(get_dataloader(dataset, 8, shuffle=True, num_workers=2, seed=12), 1)
    assert not np.array_equal(other[0][0][0], runs[0][0][0][0])  # seeds differ


@pytest.mark.parametrize('recipe,num_workers,thread_pool', [('gluoncv', 0, True), ('gluoncv', 2, False),
                                                            ('composer', 2, True)])
def test_dataset_load_with_sample_rng_equals_the_loader(voc_root, recipe, num_workers, thread_pool):
    dataset = _voc(voc_root, recipe=recipe)
    loader = get_dataloader(dataset, 6, shuffle=True, last_batch='rollover', num_workers=num_workers,
                            thread_pool=thread_pool, seed=21)
    loader.set_epoch(1)  # epoch 1 starts with the 3 samples epoch 0 left over (45 = 7 * 6 + 3)
    keys = SeededBatchSampler(len(dataset), 6, True, 'rollover', 21)
    stream = keys.epoch_keys(0)[-3:] + keys.epoch_keys(1)
    batches = list(loader)
    for position in (0, 2, 3, 17, 41):
        epoch, index = stream[position]
        image, label = dataset.load(index, sample_rng(21, epoch, index))
        batch = batches[position // 6]
        np.testing.assert_array_equal(batch[0][position % 6].asnumpy(), image)
        np.testing.assert_array_equal(batch[1][position % 6].asnumpy(), label)
    assert stream[0][0] == 0 and stream[3][0] == 1
    other = dataset.load(stream[3][1], sample_rng(22, 1, stream[3][1]))  # another seed, another draw
    assert not np.array_equal(other[0], batches[0][0][3].asnumpy())


def test_caller_random_state_is_untouched(voc_root):
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    for _ in get_dataloader(_voc(voc_root), 8, num_workers=0, seed=1):
        pass
    assert (random.random(), np.random.rand()) == expected


class _NumpyRandomDataset(mx.gluon.data.Dataset):
    """Items drawn from numpy's and Python's global RNGs (as a third-party dataset might do)."""

    def __len__(self):
        return 16

    def __getitem__(self, index):
        return np.full((1,), np.random.randint(1 << 30), np.int64), np.full((1,), random.getrandbits(30), np.int64)


@pytest.mark.slow
def test_worker_processes_seed_numpy_and_python_per_sample():
    def run():
        loader = get_dataloader(_NumpyRandomDataset(), 4, num_workers=2, thread_pool=False, seed=3)
        return np.concatenate([np.concatenate([a.asnumpy(), b.asnumpy()], 1) for a, b in loader])
    first, second = run(), run()
    np.testing.assert_array_equal(first, second)
    assert len(np.unique(first[:, 0])) == 16  # forked workers do not repeat each other's numpy draws


# ------------------------------------------------------------------------------------------- errors
@pytest.fixture()
def broken_voc(voc_root, tmp_path):
    """A 6-image VOC tree whose 4th image is truncated."""
    src = os.path.join(voc_root, 'VOC2012')
    ids = sorted(f[:-4] for f in os.listdir(os.path.join(src, 'JPEGImages')))[:6]
    dst = tmp_path / 'VOC2012'
    for sub in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
        (dst / sub).mkdir(parents=True)
    for i in ids:
        shutil.copy(os.path.join(src, 'JPEGImages', i + '.jpg'), dst / 'JPEGImages')
        shutil.copy(os.path.join(src, 'SegmentationClass', i + '.png'), dst / 'SegmentationClass')
    (dst / 'ImageSets/Segmentation/trainval.txt').write_text('\n'.join(ids) + '\n')
    bad = dst / 'JPEGImages' / (ids[3] + '.jpg')
    bad.write_bytes(bad.read_bytes()[:2000])
    return str(tmp_path), str(bad)


@pytest.mark.parametrize('num_workers,thread_pool', MODES)
def test_worker_error_names_the_file(broken_voc, num_workers, thread_pool):
    root, bad = broken_voc
    loader = get_dataloader(_voc(root), 2, num_workers=num_workers, thread_pool=thread_pool, seed=0, timeout=60)
    with pytest.raises(Exception) as info:
        for _ in loader:
            pass
    assert bad in str(info.value)
    notes = getattr(info.value, '__notes__', [])
    assert any('item 3' in note for note in notes) or 'item 3' in str(info.value)


class _AwkwardError(Exception):
    """Cannot be rebuilt from its args, so it cannot travel back from a worker process."""

    def __init__(self, path, code):
        super().__init__(f'cannot decode {path} (code {code})')


class _FailingDataset(mx.gluon.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        if index == 2:
            raise _AwkwardError('/data/item2.png', 7)
        return np.zeros((3, 4, 4), np.float32), np.zeros((4, 4), np.int32)


def test_unpicklable_worker_error_still_reaches_the_caller():
    loader = get_dataloader(_FailingDataset(), 1, num_workers=2, thread_pool=False, seed=0, timeout=60)
    with pytest.raises(RuntimeError, match=r'_AwkwardError: cannot decode /data/item2.png \(code 7\)'):
        for _ in loader:
            pass


def test_bad_arguments():
    with pytest.raises(ValueError, match='last_batch'):
        get_dataloader(_FailingDataset(), 2, last_batch='drop')
    with pytest.raises(ValueError, match='batchify'):
        get_dataloader(_FailingDataset(), 2, batchify='stacked')


# ------------------------------------------------------------------------------------------- testval
def test_testval_batches_are_lists_matching_gluoncv(voc_root):
    gluoncv = pytest.importorskip('gluoncv')
    from mxnet.gluon.data.vision import transforms
    dataset = _voc(voc_root, mode='testval', split='val')
    images, masks = next(iter(get_dataloader(dataset, 3, num_workers=2)))
    assert isinstance(images, list) and isinstance(masks, list) and len(images) == len(masks) == 3
    g_transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize([.485, .456, .406],
                                                                                  [.229, .224, .225])])
    g_dataset = gluoncv.data.VOCSegmentation(root=voc_root, split='val', mode='testval', transform=g_transform)
    g_images, g_masks = gluoncv.data.segbase.ms_batchify_fn([g_dataset[i] for i in range(3)])
    assert len({m.shape for m in masks}) > 1  # really variable sizes
    for image, mask, g_image, g_mask in zip(images, masks, g_images, g_masks):
        assert image.dtype == np.float32 and mask.dtype == np.int32
        np.testing.assert_allclose(image.asnumpy(), g_image.asnumpy(), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(mask.asnumpy(), g_mask.asnumpy())
