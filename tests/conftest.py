"""Shared test fixtures: paths to the bundled real sample data."""
import os

import pytest

SAMPLE_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'segzoo', 'sample_data')


@pytest.fixture(scope='session')
def sample_data():
    """Root of the bundled real data (voc_mini, sbd_mini, coco_mini, ade_mini)."""
    return SAMPLE_DATA
