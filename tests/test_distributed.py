"""segzoo.distributed without processes: batch shares, shards, seeds, refusals and the single-process fallbacks.

The multi-process behaviour (sums, BN averaging, trainer set-up) runs for real in tests/test_launch.py.
"""
import mxnet as mx
import numpy as np
import pytest
from helpers import load_script
from mxnet import gluon

from segzoo import distributed as dist
from segzoo.utils.parallel import split_batch


@pytest.mark.parametrize('batch_size,devices,workers', [(8, 1, 2), (16, 2, 2), (7, 1, 3), (11, 2, 2), (5, 1, 5)])
def test_worker_shares_split_like_one_process_with_all_devices(batch_size, devices, workers):
    batch = mx.nd.arange(batch_size)
    one_process = [x.asnumpy().tolist() for x in split_batch(batch, [mx.cpu(i) for i in range(devices * workers)])]
    spread, end = [], 0
    for rank in range(workers):
        start, stop = dist.worker_share(batch_size, devices, rank, workers)
        assert start == end
        end = stop
        spread += [x.asnumpy().tolist() for x in split_batch(batch[start:stop], [mx.cpu(i) for i in range(devices)])]
    assert end == batch_size
    assert spread == one_process


def test_worker_share_refuses_a_batch_smaller_than_the_devices():
    with pytest.raises(ValueError, match='--batch-size 3 is smaller than the 4 devices'):
        dist.worker_share(3, 2, 0, 2)


def test_shard_indices_cover_every_index_once():
    shards = [dist.shard_indices(11, rank, 3) for rank in range(3)]
    assert [len(s) for s in shards] == [4, 4, 3]
    assert sum((list(s) for s in shards), []) == list(range(11))


def test_device_seed_depends_on_seed_step_and_device_only():
    assert dist.device_seed(0, 5, 1) == dist.device_seed(0, 5, 1)
    seeds = {dist.device_seed(s, t, d) for s in range(2) for t in range(3) for d in range(2)}
    assert len(seeds) == 12 and all(0 <= s < 2 ** 31 for s in seeds)


def test_async_kvstore_is_refused_with_the_reason():
    for name in ('dist_async', 'dist_async_device'):
        with pytest.raises(SystemExit, match=f'--kvstore {name}: asynchronous training is not supported'):
            dist.create_kvstore(name)


def test_single_process_fallbacks():
    assert dist.create_kvstore('local') == 'local' and dist.create_kvstore(None) is None
    kv = mx.kv.create('local')
    assert not dist.is_distributed(kv) and not dist.is_distributed('device')
    assert dist.rank_and_size(kv) == (0, 1)
    assert dist.trainer_options('device') == {'kvstore': 'device'}
    assert dist.step_batch_size(6, kv) == 6
    reducer = dist.Reducer(kv)
    assert reducer.sum('x', [[1, 2]]).tolist() == [[1.0, 2.0]]
    reducer.check_same('the training set size', [10, 3])
    bn = gluon.nn.BatchNorm(in_channels=2)
    bn.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    with dist.averaged_bn_stats(bn, reducer):
        assert bn.running_var.data(mx.cpu(1)).asnumpy().tolist() == [1.0, 1.0]


def test_init_trainer_broadcasts_before_the_first_step_and_refuses_deferred_shapes():
    net = gluon.nn.Dense(2, in_units=3)
    net.initialize()
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1}, kvstore='local')
    dist.init_trainer(trainer)
    assert trainer._kv_initialized and not trainer._params_to_init
    lazy = gluon.nn.Dense(2)
    lazy.initialize()
    lazy_trainer = gluon.Trainer(lazy.collect_params(), 'sgd', {'learning_rate': 0.1})
    dist.init_trainer(lazy_trainer)                    # one process: left to Gluon's first step
    assert not lazy_trainer._kv_initialized


def test_init_trainer_keeps_each_devices_first_bn_update():
    """Gluon's lazy init in the first step copies device 0's running statistics over device 1's."""
    stats = []
    for early in (False, True):
        net = gluon.nn.BatchNorm(in_channels=2)
        net.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
        trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
        if early:
            dist.init_trainer(trainer)
        for i, ctx in enumerate((mx.cpu(0), mx.cpu(1))):
            x = mx.nd.arange(8, ctx=ctx).reshape(4, 2) * (i + 1)
            with mx.autograd.record():
                y = net(x)
            y.backward()
        trainer.step(8)
        stats.append([d.asnumpy() for d in net.running_var.list_data()])
    assert np.array_equal(stats[0][0], stats[0][1])            # lazy: device 1's update lost
    assert not np.array_equal(stats[1][0], stats[1][1])        # early: each device keeps its own
    assert np.array_equal(stats[1][0], stats[0][0])


def test_check_same_sees_a_disagreeing_worker():
    class TwoWorkers(dist.Reducer):
        """Worker 0 of 2 whose peer reported ``peer``."""

        def __init__(self, peer):
            super().__init__(None)
            self.num_workers, self._peer = 2, np.asarray(peer, dtype=np.float64)

        def sum(self, name, array):
            return np.asarray(array) + np.concatenate([self._peer, self._peer ** 2])

    TwoWorkers([10, 3]).check_same('the training set size', [10, 3])
    with pytest.raises(SystemExit, match='the workers disagree on the training set size'):
        TwoWorkers([12, 3]).check_same('the training set size', [10, 3])
    with pytest.raises(SystemExit, match='disagree'):
        TwoWorkers([9, 4]).check_same('the training set size', [10, 3])


def test_workers_of_a_single_process_run_change_nothing():
    workers = dist.Workers('local')
    assert (workers.rank, workers.num_workers, workers.distributed, workers.is_writer) == (0, 1, False, True)
    assert workers.kvstore == 'local' and workers.batch_share(5, 2) == (0, 5) and workers.first_device(2) == 0
    data = gluon.data.SimpleDataset(list(range(5)))
    assert workers.val_shard(data) is data and workers.mean(2.5) == 2.5


def test_dataset_shard_passes_attributes_through():
    class Named(gluon.data.SimpleDataset):
        CLASSES = ('background', 'cat')

    class Loadable(Named):
        def load(self, index, rng):
            return self[index] + str(rng)

    shard = dist.DatasetShard(Named(list('abcdef')), dist.shard_indices(6, 1, 2))
    assert [shard[i] for i in range(len(shard))] == ['d', 'e', 'f'] and shard.CLASSES == ('background', 'cat')
    assert shard.load(0, None) == 'd'
    assert dist.DatasetShard(Loadable(list('abcdef')), [4, 5]).load(1, 7) == 'f7'


def test_loader_shards_are_the_workers_parts_of_every_global_batch():
    from segzoo.data.loader import get_dataloader

    data = gluon.data.SimpleDataset([(np.full((1, 2, 2), i, dtype=np.float32), np.zeros((2, 2), dtype=np.int32))
                                     for i in range(10)])
    kwargs = dict(batch_size=4, shuffle=True, last_batch='rollover', seed=5)
    whole, parts = get_dataloader(data, **kwargs), [get_dataloader(data, shard=dist.worker_share(4, 1, r, 2),
                                                                   **kwargs) for r in range(2)]
    for epoch, skip in ((0, 0), (1, 0), (2, 1)):
        for loader in [whole] + parts:
            loader.set_epoch(epoch, skip_batches=skip)
        expected_count = len(whole)
        batches = [[b[0][:, 0, 0, 0].asnumpy().tolist() for b in loader] for loader in [whole] + parts]
        assert len(batches[0]) == len(batches[1]) == len(batches[2]) == expected_count > 0
        assert [a + b for a, b in zip(batches[1], batches[2])] == batches[0]


def test_train_py_refuses_dist_async_before_creating_the_run_directory(tmp_path):
    train = load_script('train.py')
    with pytest.raises(SystemExit, match='--kvstore dist_async: asynchronous training is not supported'):
        train.main(train.parse_args(['--kvstore', 'dist_async', '--save-dir', str(tmp_path / 'run'), '--no-cuda']))
    assert not (tmp_path / 'run').exists()


def test_horovod_without_horovod_says_how_to_get_it():
    try:
        import horovod.mxnet  # noqa: F401
        pytest.skip('horovod is installed')
    except ImportError:
        pass
    with pytest.raises(SystemExit, match='--kvstore horovod needs Horovod built with MXNet'):
        dist.Workers('horovod')
