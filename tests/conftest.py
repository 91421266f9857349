"""Shared test set-up: MXNet engine threads for multi-context tests, and the bundled real sample data."""
import os

# Tests run SyncBatchNorm over 2 CPU contexts. All CPU contexts share one engine worker pool (1 thread by default)
# and a SyncBN op blocks its worker until every device's copy has arrived, so 1 worker deadlocks. MXNet reads the
# variable when its engine starts, so it is set here, before any test module imports mxnet (train.py does the same).
os.environ.setdefault('MXNET_CPU_WORKER_NTHREADS', '2')

import pytest

SAMPLE_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'segzoo', 'sample_data')


@pytest.fixture(scope='session')
def sample_data():
    """Root of the bundled real data (voc_mini, sbd_mini, coco_mini, ade_mini)."""
    return SAMPLE_DATA
