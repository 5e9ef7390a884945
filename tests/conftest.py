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


@pytest.fixture(scope='session')
def grid_data(tmp_path_factory):
    """A function: a shipped grid YAML with its `data_root` pointed at a tiny folder of the same layout. Run ids hold the
    content digest of the data they read, so a grid's ids can only be computed where its data are."""
    import cv2
    import yaml
    from defect_sam.data.formats import write_severstal
    from defect_sam.data.load import load_dataset
    d = tmp_path_factory.mktemp('grid_data')
    ds = list(load_dataset('synthetic', n_images=6, height=32, width=64))
    write_severstal(ds, d/'severstal')
    (d/'crack500'/'traincrop').mkdir(parents=True)
    for split, part in (('train', ds[:3]), ('val', ds[3:4]), ('test', ds[4:])):
        for s in part:
            cv2.imwrite(str(d/'crack500'/'traincrop'/f'{s.id}.jpg'), s.image[..., ::-1])
            cv2.imwrite(str(d/'crack500'/'traincrop'/f'{s.id}.png'), ((s.mask > 0) * 255).astype('uint8'))
        (d/'crack500'/f'{split}.txt').write_text(''.join(f'traincrop/{s.id}.jpg traincrop/{s.id}.png\n' for s in part))
    def grid(path) -> dict:
        g = yaml.safe_load(Path(path).read_text())
        if 'data_root' in g.get('fixed', {}): g['fixed']['data_root'] = str(d/g['fixed']['dataset'])
        return g
    return grid
