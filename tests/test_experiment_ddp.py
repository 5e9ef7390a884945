"""One run in two CPU processes (`accelerate launch --multi_gpu --num_processes 2`, gloo): DDP training, rank 0 alone
evaluates and writes. One row, one per-image table, one set of figures and checkpoints. The row equals the one-process
row in every column that does not depend on the trained weights or the clock; the evaluation is exact: re-evaluating
the saved checkpoint in one process gives rank 0's metrics and per-image table to the last digit."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from defect_sam.experiments.config import ExperimentConfig
from defect_sam.experiments.model import build_experiment_model
from defect_sam.experiments.data import experiment_data
from defect_sam.experiments.table import read_results
from defect_sam.experiments.run import run_experiment
from defect_sam.experiments.scoring import validate_and_test
from defect_sam.training.loop import load_checkpoint, read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
CFG = dict(model='unet', weights='random', img_size=64, device='cpu', n_figures=1, steps=4, batch_size=2,
           dataset_options={'n_images': 12, 'height': 32, 'width': 64}, split=[0.5, 0.25, 0.25])
SAME = ['exp_id', 'model', 'params_hash', 'train_key', 'inference_key', 'n_train', 'n_val', 'n_test', 'steps', 'batch_size',
        'lr', 'wd', 'threshold', 'threshold_from', 'img_size', 'variant', 'weights', 'dataset', 'seed']


def _opts(d:dict) -> list:
    out = []
    for k, v in d.items(): out += [f"--{k.replace('_', '-')}", json.dumps(v) if isinstance(v, (dict, list)) else str(v)]
    return out


def test_two_processes_write_one_row_with_rank0_evaluation(tmp_path, monkeypatch):
    monkeypatch.setenv('DEFECT_SAM_CACHE', str(tmp_path/'cache'))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS='1')
    res = tmp_path/'ddp'
    cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
           '--mixed_precision', 'no', '--dynamo_backend', 'no', '-m', 'defect_sam.cli', 'run', '--no-notebook',
           *_opts(CFG), '--results-dir', str(res)]
    p = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count('done unet-') == 1 and '(2 processes)' in p.stdout            # rank 0 reports, once

    table = read_results(res)
    assert len(table) == 1
    row = table.iloc[0]
    run_dir = res/row.exp_id
    assert len(list(run_dir.glob('exp_*.csv'))) == 1 and (run_dir/'done.json').exists()
    assert sorted(f.name for f in (run_dir/'test'/'figures').glob('*.png') if f.name.startswith('synth')) != []
    ck_dir = (res/row.ckpt_path).parent
    assert sorted(f.name for f in ck_dir.iterdir() if not f.name.startswith('best_')) == ['last.torch', 'log.csv', 'train_result.json']   # train.lock: released
    assert len(list(ck_dir.glob('best_*.torch'))) == 1
    assert read_checkpoint(ck_dir/'last.torch')['params']['num_processes'] == 2        # trained by DDP in two processes

    single = run_experiment(dict(CFG, results_dir=str(tmp_path/'one')), progress=False).row
    assert {k: row[k] for k in SAME} == {k: single[k] for k in SAME}

    cfg = ExperimentConfig(**CFG, results_dir=str(res))                                 # rank 0's evaluation, redone in one process
    parts = experiment_data(cfg)
    model = build_experiment_model(cfg, parts['train'])
    load_checkpoint(model, res/row.ckpt_path)
    val, test, thr, _ = validate_and_test(cfg, model, parts, tmp_path/'again', progress=False)
    saved = json.loads((run_dir/'summary.json').read_text())
    assert test.summary == saved['test']['summary'] and val.summary == saved['validation']['summary']
    cols = [c for c in test.table.columns if c not in ('infer_s',)]
    per_image = pd.read_csv(next(run_dir.glob('exp_*.csv')))
    pd.testing.assert_frame_equal(per_image[cols], pd.read_csv(tmp_path/'again'/'test'/'per_image.csv')[cols])
