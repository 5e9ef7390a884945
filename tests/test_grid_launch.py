"""The grid on submitit's local executor (CPU): two workers share four tiny U-Net runs, each run executes once and
leaves one whole row; a worker killed mid-run is reported with its job's reason, and re-running the grid resumes
that run from its checkpoint. Two grid invocations sharing a results folder never run one run at once."""
import os
from pathlib import Path

import pandas as pd
import pytest

from _grid_jobs import counted_run, markers
from defect_sam.core.errors import ConfigError
from defect_sam.experiments.table import RESULT_COLUMNS, read_results
from defect_sam.experiments.config import ExperimentConfig
from defect_sam.experiments.model import checkpoint_dir
from defect_sam.experiments.run import run_status
from defect_sam.experiments.grid import expand_grid
from defect_sam.experiments.launch import run_grid
from defect_sam.experiments.launch import GridWorker, launcher_config, run_lock, sbatch_preview
from defect_sam.training.loop import read_checkpoint

HERE = Path(__file__).parent
UNET = dict(model='unet', weights='random', img_size=64, device='cpu', n_figures=0, steps=4, batch_size=2,
            dataset_options={'n_images': 8, 'height': 32, 'width': 64}, split=[0.5, 0.25, 0.25],
            train_options={'ckpt_every': 2, 'val_every': 4})


@pytest.fixture
def worker_env(tmp_path, monkeypatch):
    "The worker processes import this folder's runner and use the test's cache; one thread each (2 workers, 2 cores)."
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get('PYTHONPATH', '')]))
    monkeypatch.setenv('DEFECT_SAM_CACHE', str(tmp_path/'cache'))
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    monkeypatch.setenv('DEFECT_SAM_TEST_MARKER', str(tmp_path/'executions.jsonl'))
    return tmp_path


def test_local_workers_run_each_run_once_and_resume_a_killed_one(worker_env):
    tmp = worker_env
    grid = {'name': 'four', 'fixed': UNET, 'axes': {'seed': [0, 1, 2, 3]}}
    ids = [r.exp_id for r in expand_grid(grid, tmp/'res')]
    victim = ids[0]
    os.environ['DEFECT_SAM_TEST_KILL'] = f'{victim}:3'      # monkeypatch restores the rest; this one is popped below
    try:
        rep = run_grid(grid, tmp/'res', launcher='local', jobs=2, gpus='0,1', notebook=False, runner=counted_run, log=None)
    finally: os.environ.pop('DEFECT_SAM_TEST_KILL')
    t = rep.table.set_index('exp_id')
    assert t.loc[victim, 'outcome'] == 'failed' and t.loc[victim, 'error'].startswith('job ') and 'ended' in t.loc[victim, 'error']
    assert t.loc[victim, 'log'] and Path(t.loc[victim, 'log']).exists()             # the dead worker's log is named
    assert (t.drop(victim).outcome == 'ran').all() and run_status(tmp/'res', victim) == 'partial'
    runs = markers(tmp/'executions.jsonl')
    assert sorted(r['exp_id'] for r in runs) == sorted(ids)                          # each run executed exactly once
    assert len({r['pid'] for r in runs}) == 2                                        # by two worker processes
    assert {r['gpus'] for r in runs} == {'0', '1'} and all(len({x['gpus'] for x in runs if x['pid'] == p}) == 1 for p in {r['pid'] for r in runs})
    ck = read_checkpoint(checkpoint_dir(ExperimentConfig(**UNET, seed=0, results_dir=str(tmp/'res')))/'last.torch')
    assert ck['step'] == 2                                                           # killed after step 3: last.torch holds step 2

    again = run_grid(grid, tmp/'res', launcher='local', jobs=2, notebook=False, runner=counted_run, log=None)
    a = again.table.set_index('exp_id')
    assert a.loc[victim, 'outcome'] == 'ran' and (a.drop(victim).outcome == 'skipped').all() and again.ok
    runs = markers(tmp/'executions.jsonl')
    assert [r['start_step'] for r in runs if r['exp_id'] == victim] == [0, 2]       # resumed from its checkpoint
    assert sorted(r['exp_id'] for r in runs) == sorted(ids + [victim])
    table = read_results(tmp/'res')                                                  # four whole rows, none torn
    assert sorted(table.exp_id) == sorted(ids) and list(table.columns[:len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)
    assert table.test_mIoU.notna().all() and (table.steps == 4).all()


def test_a_run_locked_by_another_invocation_is_left_to_it(tmp_path):
    grid = {'fixed': dict(UNET, steps=1, train_options=None)}
    (r,) = expand_grid(grid, tmp_path)
    with run_lock(r.config):                                                         # another grid is running it
        rep = run_grid(grid, tmp_path, notebook=False, log=None)
    assert list(rep.table.outcome) == ['busy'] and run_status(tmp_path, r.exp_id) == 'new'
    assert 'another grid is running it' in rep.table.error.iloc[0]


def test_requeue_returns_the_same_worker(tmp_path):
    "submitit's checkpoint hook: the requeued job is this worker, with its token, so it takes back its own claim."
    (r,) = expand_grid({'fixed': UNET}, tmp_path)
    w = GridWorker([r], str(tmp_path/'inv'), notebook=False)
    assert w.claim(r)
    other = GridWorker([r], str(tmp_path/'inv'), notebook=False)
    assert not other.claim(r)
    sub = w.checkpoint()
    again = sub.function
    assert again is w or again.token == w.token
    assert again.claim(r)


def test_slurm_dry_run_shows_the_job_array(tmp_path, capsys):
    grid = {'name': 'g', 'fixed': UNET, 'axes': {'seed': [0, 1, 2]},
            'launcher': {'partition': 'gpu', 'account': 'proj', 'mem_gb': 32, 'time_min': 600, 'cpus_per_task': 4}}
    rep = run_grid(grid, tmp_path, launcher='slurm', jobs=2, dry_run=True)
    assert list(rep.table.outcome) == ['would submit'] * 3
    out = capsys.readouterr().out
    for line in ('--partition=gpu', '--account=proj', '--mem=32768MB', '--time=600', '--cpus-per-task=4', '--array=0-2%2',
                 '--gpus-per-node=1', '--signal=USR2@120'):
        assert f'#SBATCH {line}' in out, line
    with pytest.raises(ConfigError, match=r"unknown launcher keys \['partion'\]"):
        run_grid({**grid, 'launcher': {'partion': 'gpu'}}, tmp_path, launcher='slurm', dry_run=True)
