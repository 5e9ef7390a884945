"""`defect-sam export` and `defect-sam predict` on a tiny class-aware U-Net run (random weights, 2 steps, 12 synthetic
strips): the ONNX graph matches the run's PyTorch model, predict writes masks and a Severstal submission from an exp_id
and from the ONNX file, and a broken image is named while the others are written."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from defect_sam.cli import main
from defect_sam.experiments.data import experiment_data
from defect_sam.experiments.run import run_experiment
from defect_sam.data.rle import rle_decode

BASE = dict(model='unet', weights='random', img_size=64, device='cpu', n_figures=0, steps=2, batch_size=2, class_aware=True,
            dataset_options={'n_images': 12, 'height': 32, 'width': 128}, split=[0.5, 0.25, 0.25])


@pytest.fixture(scope='module')
def unet_run(tmp_path_factory):
    d = tmp_path_factory.mktemp('predict')
    res = run_experiment({**BASE, 'results_dir': str(d)}, progress=False)
    imgs = d/'images'; imgs.mkdir()
    test = experiment_data(res.config)['test']
    for s in test: cv2.imwrite(str(imgs/f'{s.id}.png'), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
    (imgs/'broken.jpg').write_bytes(b'\x00not a jpeg')
    yield res, d, imgs, test
    shutil.rmtree(d, ignore_errors=True)                # its checkpoints are hundreds of MB: not kept to the session's end


def test_export_matches_the_run_model(unet_run):
    from defect_sam.outputs.export import OnnxUnet, load_run_model
    res, d, _, test = unet_run
    assert main(['export', res.row['exp_id'], '--results-dir', str(d), '--format', 'onnx']) == 0
    f = res.run_dir/'export'/'model.onnx'
    o = OnnxUnet(f)
    assert (o.meta['exp_id'], o.meta['weights'], o.meta['class_aware']) == (res.row['exp_id'], 'random', True)
    model, _ = load_run_model(d, res.row['exp_id'])
    for im in [s.image for s in list(test)[:3]]:   # (the 1600x256 strip is checked in nbs/73_outputs.export.ipynb)
        a, b = model.predict(im), o.predict(im)
        assert a.shape == b.shape == (4,) + im.shape[:2] and np.abs(a - b).max() <= 1e-3
    # the rebuilt model reproduces the run's saved test probabilities (8-bit)
    from defect_sam.evaluation.evaluate import load_probabilities
    s = test[0]
    saved = load_probabilities(res.run_dir/'test'/'predictions'/f'{s.id}.prob.npz')
    assert np.abs(model.predict(s.image) - saved).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize('source', ['exp_id', 'onnx'])
def test_predict_writes_masks_and_submission(unet_run, source, capsys):
    res, d, imgs, test = unet_run
    src = res.row['exp_id'] if source == 'exp_id' else str(res.run_dir/'export'/'model.onnx')
    if source == 'onnx' and not Path(src).exists(): main(['export', res.row['exp_id'], '--results-dir', str(d)])
    out = d/f'out_{source}'
    assert main(['predict', src, str(imgs), '--out', str(out), '--results-dir', str(d)]) == 1   # one broken image
    err = pd.read_csv(out/'errors.csv')
    assert err.file.map(lambda s: Path(s).name).tolist() == ['broken.jpg'] and 'cannot read image' in err.error[0]
    assert 'broken.jpg' in capsys.readouterr().err
    sub = pd.read_csv(out/'submission.csv', keep_default_na=False)
    assert sub.columns.tolist() == ['ImageId_ClassId', 'EncodedPixels'] and len(sub) == 4 * len(test)
    info = json.loads((out/'predict.json').read_text())
    assert (info['n_written'], info['n_errors'], info['threshold'], info['weights']) == (len(test), 1, res.row['threshold'], 'random')
    sub = sub.set_index('ImageId_ClassId')
    for s in test:
        m = cv2.imread(str(out/'masks'/f'{s.id}.png'), cv2.IMREAD_UNCHANGED)
        assert m.shape == s.shape
        for c in range(1, 5): assert (rle_decode(sub.loc[f'{s.id}.png_{c}', 'EncodedPixels'], m.shape) == (m == c)).all()
    for s in test:   # the run's own test masks (from 8-bit probabilities), up to pixels at the threshold
        a = cv2.imread(str(res.run_dir/'test'/'predictions'/f'{s.id}.png'), cv2.IMREAD_UNCHANGED)
        assert (a != cv2.imread(str(out/'masks'/f'{s.id}.png'), cv2.IMREAD_UNCHANGED)).mean() < 1e-2
    if source == 'onnx':   # the same masks as from the PyTorch model, up to pixels at the threshold
        for s in test:
            a = cv2.imread(str(d/'out_exp_id'/'masks'/f'{s.id}.png'), cv2.IMREAD_UNCHANGED)
            b = cv2.imread(str(out/'masks'/f'{s.id}.png'), cv2.IMREAD_UNCHANGED)
            assert (a != b).mean() < 1e-3


def test_predict_long_format_and_bad_sources(unet_run, tmp_path):
    res, d, imgs, _ = unet_run
    assert main(['predict', res.row['exp_id'], str(imgs), '--out', str(tmp_path/'o'), '--results-dir', str(d), '--csv-format', 'long']) == 1
    assert pd.read_csv(tmp_path/'o'/'submission.csv').columns.tolist() == ['ImageId', 'ClassId', 'EncodedPixels']
    assert main(['predict', 'no-such-run', str(imgs), '--out', str(tmp_path/'p'), '--results-dir', str(d)]) == 2
    assert main(['export', 'no-such-run', '--results-dir', str(d)]) == 2
