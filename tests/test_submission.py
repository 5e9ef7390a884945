"""The competition's score reproduced: on a synthetic set written in the Severstal Kaggle layout (train.csv with RLE,
4 classes), the submission.csv of a class-aware run scores, by an independent computation, exactly the run's kaggle_dice."""
import csv

import numpy as np
import pytest

from defect_sam.cli import main
from defect_sam.experiments.run import run_experiment
from defect_sam.outputs.submission import score_submission, submission_from_run
from defect_sam.data.synthetic import make_synthetic

H, W = 32, 128


def _decode(rle):
    "Severstal RLE -> HxW bool, written here from the competition's definition (1-based starts, column-major)."
    flat = np.zeros(H * W, bool)
    v = [int(x) for x in rle.split()]
    for start, n in zip(v[0::2], v[1::2]): flat[start - 1:start - 1 + n] = True
    return flat.reshape(W, H).T


def _read(path):
    "{(ImageId, ClassId): rle} of either CSV layout."
    with open(path, newline='') as f:
        out = {}
        for r in csv.DictReader(f):
            iid, cid = (r['ImageId'], r['ClassId']) if 'ImageId' in r else r['ImageId_ClassId'].rsplit('_', 1)
            out[iid, int(cid)] = r['EncodedPixels']
        return out


def _mean_dice(sub_path, truth_path):
    sub, truth = _read(sub_path), _read(truth_path)
    scores = []
    for iid in sorted({i for i, _ in sub}):
        for c in range(1, 5):
            p, g = _decode(sub.get((iid, c), '')), _decode(truth.get((iid, c), ''))
            scores.append(1.0 if not p.any() and not g.any() else 2 * (p & g).sum() / (p.sum() + g.sum()))
    return float(np.mean(scores)), len(scores)


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    "A class-aware run (per-class thresholds and areas calibrated on val) of a Severstal-layout synthetic set."
    root, res_dir = tmp_path_factory.mktemp('severstal_layout')/'set', tmp_path_factory.mktemp('results')
    make_synthetic(root, n_images=12, height=H, width=W, seed=3)
    res = run_experiment(dict(model='sam2_zeroshot', weights='random', sam2_image_size=64, device='cpu', n_figures=0,
                              dataset='severstal', data_root=str(root), class_aware=True, split=[0.5, 0.25, 0.25],
                              threshold='val_per_class:kaggle_dice', postprocess='min_area_val', results_dir=str(res_dir)),
                         progress=False)
    return root, res_dir, res.row


@pytest.mark.parametrize('layout', ['ImageId,ClassId', 'ImageId_ClassId'])
def test_kaggle_dice_is_the_competition_score(finished, layout):
    root, res_dir, row = finished
    sub = submission_from_run(row['exp_id'], res_dir, res_dir/f'sub_{layout[-7:]}.csv', layout=layout)
    mine, pairs = _mean_dice(sub, root/'train.csv')
    assert pairs == 4 * row['n_test']
    assert row['kaggle_dice'] == pytest.approx(mine, abs=1e-12)
    assert score_submission(sub, root/'train.csv', shape=(H, W)) == pytest.approx(mine, abs=1e-12)
    assert 0 < mine < 1   # a non-trivial case: some pairs right, some wrong


def test_submission_command(finished, capsys):
    root, res_dir, row = finished
    out = res_dir/'cli.csv'
    assert main(['submission', row['exp_id'], '--results-dir', str(res_dir), '--out', str(out), '--layout', 'ImageId_ClassId']) == 0
    assert f'wrote {out}' in capsys.readouterr().out
    assert score_submission(out, root/'train.csv', shape=(H, W)) == pytest.approx(row['kaggle_dice'], abs=1e-12)
    assert main(['submission', 'no-such-run', '--results-dir', str(res_dir)]) == 2
