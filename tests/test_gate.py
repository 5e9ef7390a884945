"""The image-level gate in experiments: a gate run's row, and a gated U-Net run that never calls the segmenter on the
images the gate calls defect-free (tiny CPU settings: random weights, 2 steps, a 12-image synthetic set)."""
import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from defect_sam.core.errors import ConfigError
from defect_sam.experiments.config import ExperimentConfig
from defect_sam.experiments.data import experiment_data
from defect_sam.experiments.table import read_results
from defect_sam.experiments.run import run_experiment

BASE = dict(weights='random', img_size=64, device='cpu', n_figures=0, steps=2, batch_size=2,
            dataset_options={'n_images': 12, 'height': 32, 'width': 128}, split=[0.5, 0.25, 0.25])


def _h(im): return hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest()


@pytest.fixture(scope='module')
def gate_run(tmp_path_factory):
    d = tmp_path_factory.mktemp('gate')
    yield run_experiment({**BASE, 'model': 'gate', 'threshold': 'val', 'results_dir': str(d)}, progress=False), d
    shutil.rmtree(d, ignore_errors=True)                # its checkpoints are hundreds of MB: not kept to the session's end


def test_gate_run_row(gate_run):
    g, d = gate_run
    row = read_results(d).set_index('exp_id').loc[g.row['exp_id']]
    rec = json.loads((g.run_dir/'gate.json').read_text())
    assert row['model'] == 'gate' and row['threshold_from'] == 'val:image_F1' and pd.isna(row['gate'])
    assert json.loads(row['gate_thresholds']) == rec['thresholds'] and len(rec['thresholds']) == 1
    lvl = g.test.extras['image_level']
    assert set(lvl) >= {'precision', 'recall', 'F1', 'AUROC', 'false_alarm_rate'}
    assert lvl['tp'] + lvl['fp'] + lvl['fn'] + lvl['tn'] == row['n_test']
    assert row['image_AUROC'] == pytest.approx(lvl['AUROC'], nan_ok=True)
    # the decision masks cover the whole image exactly where the gate calls a defect
    t = g.test.table
    assert ((t.pred_area > 0) == t.pred_defect).all() and int(t.pred_defect.sum()) == lvl['tp'] + lvl['fp']


def test_gated_run_never_calls_the_segmenter_on_gated_images(gate_run, monkeypatch):
    from defect_sam.models.unet import SmpSegmenter
    from defect_sam.models.gate import dataset_image_probs
    from defect_sam.experiments.gating import load_gate_run
    g, d = gate_run
    gid = g.row['exp_id']
    cfg = ExperimentConfig(**{**BASE, 'model': 'unet', 'gate': gid, 'results_dir': str(d)})
    test = experiment_data(cfg)['test']
    gate, rec = load_gate_run(d, gid)
    p, _ = dataset_image_probs(gate, test)
    # a threshold halfway across the widest gap between the test images' probabilities: the gate passes some and removes
    # the others, and no image sits near the threshold (the run computes the probabilities again, in other batches, and
    # its last bits may differ from these: a threshold on one image's own probability would flip it on some machines)
    srt = np.sort(p[:, 0]); k = 1 + int(np.argmax(np.diff(srt)))
    thr = float((srt[k - 1] + srt[k]) / 2)
    assert srt[k] - srt[k - 1] > 1e-4, f'the gate gives the test images nearly equal probabilities: {srt}'
    rec['thresholds'] = [thr]
    (g.run_dir/'gate.json').write_text(json.dumps(rec))
    clean = {_h(s.image) for s, pk in zip(test, p[:, 0]) if pk < thr}
    passed = {_h(s.image) for s, pk in zip(test, p[:, 0]) if pk >= thr}
    assert clean and passed
    seen, orig = [], SmpSegmenter.predict_batch
    def spy(self, images, prompts=None):
        seen.extend(_h(im) for im in images)
        return orig(self, images, prompts)
    monkeypatch.setattr(SmpSegmenter, 'predict_batch', spy)
    u = run_experiment(cfg, progress=False)
    assert not clean & set(seen) and passed <= set(seen)
    t = u.test.table.set_index('id')
    for s, pk in zip(test, p[:, 0]):
        if pk < thr: assert t.loc[s.id, 'pred_area'] == 0
    assert u.row['gate'] == gid and json.loads(u.row['gate_thresholds']) == [thr] and '-gated-' in u.row['exp_id']
    assert u.test.extras['model']['gate']['n_gated'] >= len(clean)
    # defect-sam predict applies the run's gate: the images it calls clean get empty masks, and predict.json records it
    import cv2
    from defect_sam.outputs.predict import load_predictor, predict_folder
    imgs = d/'gated_images'; imgs.mkdir(exist_ok=True)
    for s in test: cv2.imwrite(str(imgs/f'{s.id}.png'), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
    seen.clear()
    rep = predict_folder(load_predictor(u.row['exp_id'], d), imgs, d/'gated_out', progress=False)
    assert rep.ok and not clean & set(seen) and passed <= set(seen)
    for s, pk in zip(test, p[:, 0]):
        if pk < thr: assert not cv2.imread(str(d/'gated_out'/'masks'/f'{s.id}.png'), cv2.IMREAD_UNCHANGED).any()
    g_info = json.loads((d/'gated_out'/'predict.json').read_text())['gate']
    assert (g_info['exp_id'], g_info['thresholds']) == (gid, [thr])
    ungated = ExperimentConfig(**{**BASE, 'model': 'unet', 'results_dir': str(d)})
    assert cfg.train_key == ungated.train_key and cfg.inference_key != ungated.inference_key   # training is shared


def test_gate_from_another_split_is_refused(gate_run):
    g, d = gate_run
    with pytest.raises(ConfigError, match='tested on other images|trained or validated on'):
        run_experiment({**BASE, 'model': 'unet', 'gate': g.row['exp_id'], 'split': [0.6, 0.2, 0.2], 'results_dir': str(d)}, progress=False)
    with pytest.raises(ConfigError, match='no such finished run'):
        run_experiment({**BASE, 'model': 'unet', 'gate': 'no-such-run', 'results_dir': str(d)}, progress=False)
    with pytest.raises(ConfigError, match='cannot itself be gated'):
        ExperimentConfig(**{**BASE, 'model': 'gate', 'gate': g.row['exp_id']})


def test_thesis_grid_gates_its_gate_sweep_run(grid_data):
    "The thesis grid's gated sweep names the gate sweep's run (its ids computed on a tiny Severstal-layout folder)."
    from pathlib import Path
    from defect_sam.experiments.grid import expand_grid
    runs = expand_grid(grid_data(Path(__file__).resolve().parent.parent/'grids'/'thesis.yaml'))
    gate = [r for r in runs if r.sweep == 'gate']
    gated = [r for r in runs if r.sweep == 'gated']
    assert len(gate) == 1 and gate[0].config.threshold == 'val' and len(gated) == 9
    assert {r.config.gate for r in gated} == {gate[0].config.exp_name} and gate[0].exp_id.startswith('severstal-gate-')
    for r in gated:   # each gated run reuses the training of an ungated run of the grid
        assert [x for x in runs if x.config.gate is None and x.config.train_key == r.config.train_key]


def test_report_keeps_gated_runs_apart_from_their_twins():
    from defect_sam.outputs.report import run_label
    cfg = dict(BASE, model='unet', threshold='val')
    assert ExperimentConfig(**cfg).config_key != ExperimentConfig(**cfg, gate='gate-synthetic-full-s42-12345678').config_key   # not seeds of one configuration
    row = dict(dataset='synthetic', model='unet', variant='scratch', weights='random', lr=1e-3, threshold_from='val:mIoU', gate=None)
    gated = dict(row, gate='gate-synthetic-full-s42-12345678')
    assert run_label(gated) == run_label(row) + ' +gate'


def test_gate_runs_are_in_no_segmentation_ranking():
    from defect_sam.outputs.report import in_ranking
    df = pd.DataFrame({'model': ['unet', 'gate', 'sam2_lora'], 'prompt_regime': ['none', 'none', 'oracle']})
    assert in_ranking(df, 'deployable').model.tolist() == ['unet'] and in_ranking(df, 'oracle').model.tolist() == ['sam2_lora']
