"""`defect-sam predict` applies a run's TTA and its per-class thresholds and minimum areas: its probabilities, rounded to
8 bits as the run saved them, give exactly the masks the run was scored on."""
import json

import cv2
import numpy as np

from defect_sam.cli import main
from defect_sam.evaluation.perclass import postprocess_from_dict
from defect_sam.evaluation.evaluate import load_probabilities, quantize
from defect_sam.experiments.data import experiment_data
from defect_sam.experiments.run import run_experiment
from defect_sam.outputs.predict import load_predictor

BASE = dict(model='unet', weights='random', img_size=64, device='cpu', n_figures=0, steps=2, batch_size=2, class_aware=True,
            dataset_options={'n_images': 12, 'height': 32, 'width': 128}, split=[0.5, 0.25, 0.25],
            tta=['hflip'], threshold='val_per_class:kaggle_dice', postprocess='min_area_val')


def test_predict_applies_tta_and_per_class_values(tmp_path):
    res = run_experiment({**BASE, 'results_dir': str(tmp_path)}, progress=False)
    imgs = tmp_path/'images'; imgs.mkdir()
    test = experiment_data(res.config)['test']
    for s in test: cv2.imwrite(str(imgs/f'{s.id}.png'), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
    out = tmp_path/'out'
    assert main(['predict', res.row['exp_id'], str(imgs), '--out', str(out), '--results-dir', str(tmp_path)]) == 0
    info = json.loads((out/'predict.json').read_text())
    assert info['tta'] == ['hflip'] and info['threshold'] is None
    assert '/'.join(f'{t:g}' for t in info['class_thresholds']) == res.row['class_thresholds']
    assert '/'.join(str(a) for a in info['class_min_areas']) == res.row['class_min_areas']
    s = json.loads((res.run_dir/'summary.json').read_text())
    pp = postprocess_from_dict(s['test']['extras']['postprocess'])
    pr = load_predictor(res.row['exp_id'], tmp_path)
    assert type(pr.postprocess) is type(pp) and pr.postprocess == pp and pr.model.tta == ['hflip']
    for smp in test:
        saved = load_probabilities(res.run_dir/'test'/'predictions'/f'{smp.id}.prob.npz')
        mine = quantize(pr.model.predict(smp.image))
        assert np.abs(mine - saved).max() <= 1 / 255 + 1e-6          # the run's TTA probabilities (8-bit rounding apart)
        written = cv2.imread(str(out/'masks'/f'{smp.id}.png'), cv2.IMREAD_UNCHANGED)
        assert (written == pr.predict(smp.image)[0]).all()
