"""Per-class thresholds and minimum areas in experiment runs: searched on val, applied unchanged to test, recorded in the
row and summary.json, and reproduced exactly by re-scoring the saved predictions (skip_inference)."""
import json

import pandas as pd
import pytest

from defect_sam.core.errors import ConfigError
from defect_sam.evaluation.evaluate import evaluate_saved
from defect_sam.experiments.config import ExperimentConfig
from defect_sam.experiments.data import experiment_data
from defect_sam.experiments.table import read_results
from defect_sam.experiments.run import run_experiment
from defect_sam.evaluation.perclass import ClassPostProcess

TINY = dict(model='sam2_zeroshot', weights='random', sam2_image_size=64, device='cpu', n_figures=0,
            dataset_options={'n_images': 12, 'height': 32, 'width': 128}, split=[0.5, 0.25, 0.25])


def test_per_class_run_is_recorded_and_rescores_identically(tmp_path):
    cfg = {**TINY, 'results_dir': str(tmp_path), 'class_aware': True, 'threshold': 'val_per_class:kaggle_dice',
           'postprocess': 'min_area_val'}
    live = run_experiment(cfg, progress=False)
    row, run = live.row, live.run_dir
    assert row['threshold_from'] == 'val_per_class:kaggle_dice' and row['postprocess'] == 'min_area_val'
    ths = [float(t) for t in row['class_thresholds'].split('/')]
    areas = [int(a) for a in row['class_min_areas'].split('/')]
    assert len(ths) == len(areas) == 4 and pd.isna(row['threshold'])   # four classes: no single threshold
    s = json.loads((run/'summary.json').read_text())
    assert s['test']['extras']['per_class_calibration']['class_thresholds'] == ths
    assert s['test']['extras']['postprocess']['class_min_areas'] == areas
    assert len(pd.read_csv(run/'per_class_calibration.csv')) == 4 * 19 * 14   # every candidate of every class
    # the search's own scores are exact: their mean is the validation kaggle_dice of the values it chose
    cal = s['test']['extras']['per_class_calibration']
    assert s['validation']['summary']['kaggle_dice'] == pytest.approx(sum(cal['scores']) / 4, abs=1e-12)
    # applied unchanged to test: the saved test probabilities scored with the recorded values give the row
    test = experiment_data(ExperimentConfig(**cfg))['test']
    again = evaluate_saved(run/'test', test, 0.5, ClassPostProcess(class_thresholds=ths, class_min_areas=areas), progress=False)
    assert again.summary['kaggle_dice'] == pytest.approx(row['kaggle_dice'], abs=1e-12)
    # skip_inference makes the same search on the same saved val predictions
    re = run_experiment({**cfg, 'skip_inference': True}, progress=False).row
    for k in ('test_mIoU', 'test_Dice', 'kaggle_dice', 'val_mIoU', 'val_Dice', 'class_thresholds', 'class_min_areas'):
        assert re[k] == pytest.approx(row[k]) if isinstance(row[k], float) else re[k] == row[k], k
    # the search includes (0.5, no area): on val it cannot do worse than that fixed setting
    fixed = run_experiment({**cfg, 'threshold': 0.5, 'postprocess': 'none', 'skip_inference': True}, progress=False)
    assert fixed.row['predictions_from'] == row['exp_id'] and fixed.row['class_thresholds'] is None
    assert s['validation']['summary']['kaggle_dice'] >= fixed.val.summary['kaggle_dice'] - 1e-12
    assert len(read_results(tmp_path)) == 2


def test_per_class_config_errors():
    with pytest.raises(ConfigError, match='joint'): ExperimentConfig(**TINY, threshold='val', postprocess='min_area_val')
    with pytest.raises(ConfigError, match='maximises one of'): ExperimentConfig(**TINY, threshold='val_per_class:AUPRC')
    with pytest.raises(ConfigError, match='keep one'): ExperimentConfig(**TINY, postprocess='min50,min_area_val')
    ExperimentConfig(**TINY, threshold=0.4, postprocess='open3,min_area_val')   # areas searched at a fixed threshold


def test_binary_run_is_one_class(tmp_path):
    "Binary runs: one class, its threshold is the row's threshold; the objective is the run's mIoU, so the finer grid of 'val' does at least as well on val."
    cfg = {**TINY, 'results_dir': str(tmp_path), 'threshold': 'val_per_class'}
    pc = run_experiment(cfg, progress=False)
    assert pc.row['threshold_from'] == 'val_per_class:mIoU' and pc.row['class_min_areas'] == '0'
    assert pc.row['threshold'] == float(pc.row['class_thresholds'])
    glob = run_experiment({**cfg, 'threshold': 'val', 'skip_inference': True}, progress=False)
    assert glob.val.summary['mIoU'] >= pc.val.summary['mIoU'] - 1e-12
    if glob.row['threshold'] == pc.row['threshold']: assert glob.row['test_mIoU'] == pytest.approx(pc.row['test_mIoU'])
