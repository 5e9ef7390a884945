"""One papermill run of the experiment notebook per model family, each writing a complete results row (tiny CPU
settings: untrained weights, 64-pixel inputs, a few steps on a 12-image synthetic set)."""
import json
import math
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from defect_sam.experiments.table import RESULT_COLUMNS, THESIS_COLUMNS, read_results

ROOT = Path(__file__).resolve().parent.parent
BASE = dict(weights='random', sam2_image_size=64, img_size=64, device='cpu', n_figures=1, steps=2, batch_size=2,
            dataset_options={'n_images': 12, 'height': 32, 'width': 128}, split=[0.5, 0.25, 0.25])
FAMILIES = {
    'sam2_zeroshot': dict(prompt='points_3'),
    'sam2_lora': dict(lora_rank=4, threshold='val'),
    'unet': dict(lr=1e-3),
    'yolo_seg': dict(lr=1e-3),
}
METRICS = ('test_mIoU', 'test_Dice', 'IoU@50', 'IoU@75', 'IoU@90', 'IoU@95', 'Precision', 'Recall', 'F1', 'AUPRC',
           'skeleton_IoU', 'val_mIoU', 'val_Dice', 'avg_inference_time', 'peak_memory_mb', 'total_time_s',
           'test_mIoU_defect', 'test_Dice_defect', 'IoU@50_defect', 'Precision_pooled', 'Recall_pooled', 'F1_pooled')
IMAGE_LEVEL = ('image_precision', 'image_recall', 'image_F1', 'false_alarm_rate')
REGIME = {'sam2_zeroshot': 'oracle', 'sam2_lora': 'oracle', 'unet': 'none', 'yolo_seg': 'none'}
AUGMENT = {'sam2_lora': 'hflip=0.5,vflip=0.5', 'unet': 'hflip=0.5,vflip=0.5', 'yolo_seg': 'fliplr=0.5,flipud=0.5'}


@pytest.mark.parametrize('model', list(FAMILIES))
def test_papermill_run_writes_a_complete_row(model, tmp_path):
    import papermill as pm
    if model in ('unet', 'yolo_seg'): pytest.importorskip({'unet': 'defect_sam.models.unet', 'yolo_seg': 'defect_sam.models.yolo'}[model])
    params = {**BASE, **FAMILIES[model], 'model': model, 'results_dir': str(tmp_path)}
    out = tmp_path/'out.ipynb'
    pm.execute_notebook(str(ROOT/'nbs'/'run_experiment.ipynb'), str(out), parameters=params, progress_bar=False, cwd=str(tmp_path))
    t = read_results(tmp_path)
    assert len(t) == 1 and list(t.columns) == list(RESULT_COLUMNS)
    row = t.iloc[0]
    for c in METRICS: assert isinstance(row[c], float) and math.isfinite(row[c]), (c, row[c])
    for c in THESIS_COLUMNS:
        if model == 'sam2_zeroshot' and c in ('subset_size', 'batch_size', 'steps', 'lr', 'wd', 'ckpt_path'): assert pd.isna(row[c]), c
        elif model in ('unet', 'yolo_seg') and c == 'prompt_type': assert pd.isna(row[c])
        elif model == 'yolo_seg' and c == 'wd': continue   # ultralytics' own optimizer settings
        else: assert not pd.isna(row[c]), c
    trains = model != 'sam2_zeroshot'
    if trains:
        assert (tmp_path/row.ckpt_path).exists() and row.steps == 2 and row.lr == params.get('lr', 1e-3)
        assert row.subset_size == row.n_train > 0
    assert row.weights == 'random' and row.model == model and row.git_commit != ''
    assert row.prompt_regime == REGIME[model] and pd.isna(row.kaggle_dice)          # binary run: no competition metric
    for c in IMAGE_LEVEL: assert pd.isna(row[c]) if REGIME[model] == 'oracle' else math.isfinite(row[c]), (c, row[c])
    assert (row.augment == AUGMENT[model]) if trains else pd.isna(row.augment)
    assert (row.trainable_params > 0) == trains and row.total_params >= row.trainable_params
    run = tmp_path/row.run_dir
    assert (run/'done.json').exists() and (tmp_path/row.per_image_csv).exists()
    s = json.loads((run/'summary.json').read_text())
    assert s['row']['exp_id'] == row.exp_id and s['model']['model'] == model
    assert len(pd.read_csv(tmp_path/row.per_image_csv)) == row.n_test
    nb = nbformat.read(out, as_version=4)
    assert any(row.exp_id in str(o) for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
