"""Experiment tracking and terminal progress, end to end (tiny CPU runs: random-init U-Net, 64-pixel synthetic images,
two steps; the numbers measure nothing): a grid's runs in one MLflow experiment with the row and log.csv read back,
TensorBoard event files through tensorboard's reader, and `defect-sam run` showing phases and steps on stderr only."""
import math
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

mlflow = pytest.importorskip('mlflow')
pytest.importorskip('tensorboard')

from defect_sam.experiments.model import checkpoint_dir
from defect_sam.experiments.table import read_results
from defect_sam.experiments.grid import expand_grid
from defect_sam.experiments.launch import run_grid
from defect_sam.core.progress import PHASES
from defect_sam.experiments.tracking import metric_name, tracking_uri

TINY = dict(model='unet', weights='random', img_size=64, device='cpu', n_figures=1, steps=2, batch_size=2,
            dataset_options={'n_images': 12, 'height': 32, 'width': 64}, split=[0.5, 0.25, 0.25],
            train_options={'val_every': 1, 'log_every': 1})


def _runs(rdir, experiment):
    client = mlflow.MlflowClient(tracking_uri(rdir))
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f'no MLflow experiment {experiment!r}'
    return client, client.search_runs([exp.experiment_id])


def test_grid_is_one_mlflow_experiment_with_rows_and_curves(tmp_path, monkeypatch):
    monkeypatch.delenv('MLFLOW_TRACKING_URI', raising=False)
    grid = {'name': 'tiny-grid', 'fixed': {**TINY, 'track': ['mlflow', 'tensorboard']}, 'axes': {'threshold': [0.5, 0.3]}}
    lines = []
    rep = run_grid(grid, tmp_path, notebook=False, log=lines.append)
    assert rep.ok, rep.table
    assert any('0 ran, 1 to do after it' in l for l in lines), lines
    client, runs = _runs(tmp_path, 'tiny-grid')
    table = read_results(tmp_path)
    assert sorted(r.data.tags['exp_id'] for r in runs) == sorted(table.exp_id)
    log = pd.read_csv(checkpoint_dir(expand_grid(grid, tmp_path)[0].config)/'log.csv')
    for run in runs:
        row = table[table.exp_id == run.data.tags['exp_id']].iloc[0]
        assert run.info.status == 'FINISHED' and run.info.run_name == row.exp_id
        assert run.data.params['threshold'] == str(row.threshold) and run.data.tags['caveats'] == 'random weights, synthetic data'
        assert run.data.tags['git_commit'] == str(row.git_commit) or row.git_commit != row.git_commit
        for c in ('test_mIoU', 'test_Dice', 'IoU@50', 'Precision', 'val_mIoU', 'total_time_s', 'n_test'):
            assert run.data.metrics[metric_name(c)] == row[c], c
        # the second run reuses the first one's training: its curve comes from log.csv, so both runs carry it
        for key, kind, col in (('train/loss', 'train', 'loss'), ('train/lr', 'train', 'lr'), ('val/mIoU', 'val', 'val_mIoU')):
            hist = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            want = [(int(s), float(v)) for s, v in log[log.kind == kind][['step', col]].itertuples(index=False)]
            assert hist == want, (key, hist, want)
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {'summary.json', 'log.csv', 'figures', Path(row.per_image_csv).name} <= arts, arts
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ev = EventAccumulator(str(checkpoint_dir(expand_grid(grid, tmp_path)[0].config)/'tiny-grid')); ev.Reload()
    tb = [(e.step, e.value) for e in ev.Scalars('train/loss')]
    want = [(int(s), float(v)) for s, v in log[log.kind == 'train'][['step', 'loss']].itertuples(index=False)]
    assert [s for s, _ in tb] == [s for s, _ in want] and all(math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(tb, want))


def test_failed_run_is_marked_failed(tmp_path, monkeypatch):
    "Also: train_options: {log_with: mlflow} alone opens the run (the experiment's MLflow run, not Accelerate's own)."
    from defect_sam.core.errors import DataError
    from defect_sam.experiments.run import run_experiment
    monkeypatch.delenv('MLFLOW_TRACKING_URI', raising=False)
    (tmp_path/'broken.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(DataError):
        run_experiment({**TINY, 'weights': str(tmp_path/'broken.pt'), 'results_dir': str(tmp_path),
                        'train_options': {**TINY['train_options'], 'log_with': 'mlflow'}}, progress=False)
    _, runs = _runs(tmp_path, 'defect-sam')
    assert len(runs) == 1 and runs[0].info.status == 'FAILED' and runs[0].data.tags['failed_stage'] == 'model'


def test_cli_run_shows_phases_and_steps_on_the_terminal_not_in_the_notebook(tmp_path):
    args = ['run', '--model', 'unet', '--weights', 'random', '--img-size', '64', '--device', 'cpu', '--n-figures', '0', '--steps', '1',
            '--batch-size', '2', '--dataset-options', '{n_images: 12, height: 32, width: 64}', '--split', '[0.5, 0.25, 0.25]',
            '--results-dir', str(tmp_path)]
    r = subprocess.run([sys.executable, '-c', 'import sys; from defect_sam.cli import main; sys.exit(main())', *args],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for k, p in enumerate(PHASES, 1): assert f' {k}/{len(PHASES)} {p}' in r.stderr, (p, r.stderr[-3000:])
    assert 'train: 100%' in r.stderr and '1/1' in r.stderr, r.stderr[-3000:]
    eid = read_results(tmp_path).exp_id[0]
    nb = nbformat.read(tmp_path/eid/'run_experiment.ipynb', as_version=4)
    text = '\n'.join(str(o) for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
    assert eid in text and '[defect-sam]' not in text and 'train:' not in text
