"""Shared pytest setup: no network, no GUI, few threads (the CI machine has 2 cores)."""
import os
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('YOLO_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')

import pytest

SHARED_DATA = Path(os.environ.get('DEFECT_SAM_SHARED_DATA') or Path(__file__).resolve().parents[2] / 'shared' / 'data')


@pytest.fixture(scope='session')
def shared_data():
    "The real-data samples beside the checkout (../shared/data); tests using it skip when it is absent."
    if not SHARED_DATA.exists(): pytest.skip('../shared/data is not available')
    return SHARED_DATA
