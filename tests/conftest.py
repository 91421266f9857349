"""Shared test set-up: MXNet engine threads for multi-context tests, the bundled sample data, the GluonCV oracle."""
import os

import pytest

# Tests run SyncBatchNorm over 2 CPU contexts. All CPU contexts share one engine worker pool (1 thread by default)
# and a SyncBN op blocks its worker until every device's copy has arrived, so too few workers deadlock: 2 contexts
# need segzoo.utils.parallel.engine_threads_needed = 8 (test_parallel checks this value against it). MXNet reads the
# variable when its engine starts, so it is set here, before any test module imports mxnet.
os.environ.setdefault('MXNET_CPU_WORKER_NTHREADS', '8')

SAMPLE_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'segzoo', 'sample_data')


@pytest.fixture(scope='session')
def sample_data():
    """Root of the bundled real data (voc_mini, sbd_mini, coco_mini, ade_mini)."""
    return SAMPLE_DATA


@pytest.fixture(scope='session')
def gluoncv():
    """GluonCV, the reference oracle (the ``test`` extra): a test that compares against it is skipped without it."""
    return pytest.importorskip('gluoncv')


@pytest.fixture(scope='session')
def folder_dataset(tmp_path_factory):
    """A 3-class folder dataset (background, person, other) from the bundled VOC photos: 4 train + 2 val images,
    written by ``scripts/datasets/folder.py --make-example`` (copy it before changing it)."""
    from helpers import load_script
    root = str(tmp_path_factory.mktemp('folder') / 'mine')
    load_script(os.path.join('scripts', 'datasets', 'folder.py')).make_example(root, num_train=4, num_val=2)
    return root
