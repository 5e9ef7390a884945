"""Written files follow the umask, as `open` and `mkdir` would make them (0644 under umask 022, 0640 under 027), not
the 0600 of `tempfile.mkstemp`: the atomic writers, and every file of a finished run and of `predict`."""
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from defect_sam.core.io import atomic_dir, atomic_write, torch_save_atomic, write_json_atomic
from defect_sam.evaluation.evaluate import write_png


def _mode(p:Path) -> int: return stat.S_IMODE(p.lstat().st_mode)


@pytest.fixture
def umask():
    "A function setting the process umask; the old one is restored after the test."
    old = os.umask(0o022); os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize('mask', [0o022, 0o027, 0o077, 0o002], ids=lambda m: f'umask{m:03o}')
def test_atomic_writers_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    write_json_atomic(tmp_path/'summary.json', {'a': 1})
    with atomic_write(tmp_path/'x.bin') as f: f.write(b'x')
    torch_save_atomic({'w': 1}, tmp_path/'last.torch')
    write_png(tmp_path/'mask.png', np.zeros((4, 4), np.uint8))
    with atomic_dir(tmp_path/'folder') as d: (d/'inside.txt').write_text('y')
    files = 0o666 & ~mask
    for n in ('summary.json', 'x.bin', 'last.torch', 'mask.png', 'folder/inside.txt'): assert _mode(tmp_path/n) == files, (n, oct(_mode(tmp_path/n)))
    assert _mode(tmp_path/'folder') == 0o777 & ~mask
    write_json_atomic(tmp_path/'summary.json', {'a': 2})          # a rewrite too
    assert _mode(tmp_path/'summary.json') == files


def test_a_run_and_predict_follow_the_umask(tmp_path, umask):
    "experiments.csv, summary.json, params.yaml, checkpoints, the ONNX graph and predicted masks: 0640 and folders 0750 under umask 027."
    import cv2
    from defect_sam.cli import main
    from defect_sam.experiments.run import run_experiment
    umask(0o027)
    res = run_experiment(dict(model='unet', weights='random', img_size=32, device='cpu', n_figures=0, steps=1, batch_size=2,
                              dataset_options={'n_images': 8, 'height': 32, 'width': 64}, split=[0.5, 0.25, 0.25],
                              results_dir=str(tmp_path/'results')), progress=False)
    eid = res.row['exp_id']
    assert main(['export', eid, '--results-dir', str(tmp_path/'results')]) == 0
    imgs = tmp_path/'in'; imgs.mkdir(); cv2.imwrite(str(imgs/'a.png'), np.zeros((32, 64, 3), np.uint8))
    assert main(['predict', str(res.run_dir/'export'/'model.onnx'), str(imgs), '--out', str(tmp_path/'pred')]) == 0
    seen = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob('*')}
    for must in ('results/experiments.csv', f'results/{eid}/summary.json', f'results/{eid}/params.yaml', f'results/{eid}/export/model.onnx',
                 'pred/masks/a.png', 'pred/predict.json'): assert must in seen, must
    bad = {p: oct(_mode(tmp_path/p)) for p in seen if not (tmp_path/p).is_symlink()
           and _mode(tmp_path/p) != (0o750 if (tmp_path/p).is_dir() else 0o640)
           and not p.startswith('in/')}         # written by this test with cv2
    assert not bad, bad
