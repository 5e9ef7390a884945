"""The grid runner: the shipped grids expand, runs execute through papermill (one executed notebook each), finished
runs are skipped, failures are reported without stopping the grid, interrupted runs resume from their checkpoints."""
import json
from pathlib import Path

import pytest
import yaml

from defect_sam.core.errors import ConfigError
from defect_sam.experiments.table import read_results
from defect_sam.experiments.run import run_status
from defect_sam.experiments.grid import expand_grid, grid_status
from defect_sam.experiments.launch import run_grid

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(model='sam2_zeroshot', weights='random', sam2_image_size=64, device='cpu', n_figures=0,
            dataset_options={'n_images': 8, 'height': 32, 'width': 96}, split=[0.5, 0.25, 0.25])


def test_shipped_grids_expand(grid_data):
    runs = expand_grid(grid_data(ROOT/'grids'/'thesis.yaml'))
    assert len(runs) == len({r.exp_id for r in runs}) > 100
    by = {}
    for r in runs: by.setdefault(r.sweep, []).append(r.config)
    assert {c.sam2_size for c in by['zeroshot']} == {'tiny', 'small', 'base_plus', 'large'}
    assert {(c.lora_strategy, c.lora_rank) for c in by['lora']} == {(s, r) for s in ('decoder', 'encoder_decoder', 'all') for r in (4, 8, 16)}
    assert {c.subset_size for c in by['fewshot']} == {100, 200, 500, 1000, 2000, 4000}
    assert {c.lr for c in by['unets']} == {1e-3, 1e-4} and {c.lr for c in by['yolo']} == {1e-3, 5e-4, 1e-4}
    assert {r.config.model for r in runs} >= {'sam2_zeroshot', 'sam2_lora', 'sam2_full', 'unet', 'unetpp', 'dsc_unet', 'yolo_seg', 'yolo_det', 'yolo_sam2'}
    assert all(c.split_seed == 42 and c.dataset == 'severstal' for c in (r.config for r in runs))
    assert len(expand_grid(ROOT/'grids'/'example.yaml')) == 4
    demo = [r.config for r in expand_grid(ROOT/'grids'/'demo.yaml')]   # the README figures: offline, so nothing pretrained
    assert len(demo) == 14 and {c.weights for c in demo} == {'random'} and {c.device for c in demo} == {'cpu'}
    # the Severstal thesis's point protocol: k positives with as many negatives
    assert {(c.prompt, c.prompt_kwargs['n_neg']) for s in ('zeroshot_points_neg3', 'zeroshot_points_neg5') for c in by[s]} == \
           {('points_3', 3), ('points_5', 5)}
    assert {c.eval_seed for c in (r.config for r in runs)} == {42} and {str(c.augment) for c in (r.config for r in runs)} == {'{}'}
    # the Crack500 study's zero-shot protocol: boxes expanded by 5%, min_area 10, 1/3/5 points per component, its test list
    crack = [r.config for r in expand_grid(grid_data(ROOT/'grids'/'crack500.yaml'))]
    assert len(crack) == 16 and {c.prompt for c in crack} == {'box', 'points_1', 'points_3', 'points_5'}
    assert all(c.prompt_kwargs == {'expand_ratio': 0.05, 'min_area': 10, 'per_component': True} and c.test_options == {'split': 'test'}
               for c in crack)


def test_ids_do_not_depend_on_the_machine(tmp_path):
    a = [r.exp_id for r in expand_grid(ROOT/'grids'/'example.yaml', tmp_path/'a')]
    b = [r.exp_id for r in expand_grid(ROOT/'grids'/'example.yaml', tmp_path/'b')]
    assert a == b


@pytest.mark.parametrize('grid, msg', [
    ({'axes': {'model': ['unet']}, 'modles': {}}, "unknown grid keys ['modles']"),
    ({'axes': {'model': ['unet'], 'lr': ['fast']}}, "parameter 'lr' must be of type float"),
    ({'sweeps': [{'name': 'x', 'axis': {}}]}, "unknown keys ['axis']"),
    ({'sweeps': []}, 'non-empty list'),
    ({'fixed': {'model': 'unet'}, 'axes': {'model': ['unet']}}, 'both fixed and an axis'),
    ({'axes': {'model': ['unet']}, 'models': {'sam2_lora': {'lora_rank': 4}}}, "models ['sam2_lora'] that no sweep runs"),
    ('fixed: [1, 2', 'not valid YAML'),
])
def test_bad_grids_fail_before_running(grid, msg, tmp_path):
    with pytest.raises(ConfigError, match=msg.replace('[', r'\[').replace(']', r'\]').replace('(', r'\(')):
        run_grid(grid, tmp_path, dry_run=True)


def test_grid_file_errors_name_the_file(tmp_path):
    p = tmp_path/'g.yaml'
    p.write_text('axes: {model: [unet], seeed: [1]}\n')
    with pytest.raises(ConfigError, match=f"{p}: sweep 'grid', model 'unet'"): expand_grid(p)


def test_papermill_grid_skips_done_and_reports_failures(tmp_path):
    "Each run in its own papermill kernel: the good run leaves its notebook and row, the bad one is reported, the grid goes on."
    (tmp_path/'broken.pt').write_bytes(b'not a checkpoint')
    grid = {'fixed': TINY, 'axes': {'weights': ['random', str(tmp_path/'broken.pt')]}}
    log = []
    rep = run_grid(grid, tmp_path, log=log.append)
    assert list(rep.table.outcome) == ['failed', 'ran'] or list(rep.table.outcome) == ['ran', 'failed']
    ok, bad = (rep.table[rep.table.outcome == k].exp_id.iloc[0] for k in ('ran', 'failed'))
    assert (tmp_path/ok/'run_experiment.ipynb').exists() and (tmp_path/bad/'run_experiment.ipynb').exists()
    assert 'DataError during model' in rep.failed.error.iloc[0] and 'broken.pt' in rep.failed.error.iloc[0]
    assert list(read_results(tmp_path).exp_id) == [ok] and not rep.ok
    assert any('FAILED' in l for l in log)
    again = run_grid(grid, tmp_path, notebook=False, rerun_failed=False, log=None)
    assert dict(zip(again.table.exp_id, again.table.outcome)) == {ok: 'skipped', bad: 'failed'}
    st = grid_status(expand_grid(grid, tmp_path))
    assert dict(zip(st.exp_id, st.status)) == {ok: 'done', bad: 'failed'}
    assert run_grid(grid, tmp_path, dry_run=True).table.set_index('exp_id').outcome.to_dict() == {ok: 'skip (done)', bad: 'would run'}


def test_partial_run_is_run_again(tmp_path):
    "A run folder without done.json (interrupted) is not done: the grid runs it."
    grid = {'fixed': TINY}
    (eid,) = [r.exp_id for r in expand_grid(grid, tmp_path)]
    (tmp_path/eid).mkdir(parents=True)
    (tmp_path/eid/'params.yaml').write_text('interrupted: true\n')
    assert run_status(tmp_path, eid) == 'partial'
    rep = run_grid(grid, tmp_path, notebook=False, log=None)
    assert list(rep.table.outcome) == ['ran'] and run_status(tmp_path, eid) == 'done'


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    "A run killed (SIGKILL) during training is 'partial'; the grid runs it again and training resumes from `last`."
    import subprocess, sys
    import defect_sam.training.loop as tr
    from defect_sam.experiments.config import ExperimentConfig
    from defect_sam.experiments.model import checkpoint_dir
    cfg = dict(TINY, model='sam2_lora', steps=10, batch_size=2, lora_rank=4, results_dir=str(tmp_path),
               train_options={'ckpt_every': 4, 'val_every': 10})
    script = (
        "import os, signal\n"
        "import defect_sam.models.sam.inference as sam\n"
        "orig, n = sam.SamSegmenter.after_optimizer_step, [0]\n"
        "def step(self):\n"
        "    orig(self); n[0] += 1\n"
        "    if n[0] == 6: os.kill(os.getpid(), signal.SIGKILL)   # killed after step 6; last.torch holds step 4\n"
        "sam.SamSegmenter.after_optimizer_step = step\n"
        "from defect_sam.experiments.run import run_experiment\n"
        f"run_experiment({cfg!r}, progress=False)\n")
    r = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
    assert r.returncode == -9, r.stderr[-2000:]
    c = ExperimentConfig(**cfg)
    last = checkpoint_dir(c)/'last.torch'
    assert tr.read_checkpoint(last)['step'] == 4 and run_status(tmp_path, c.exp_id) == 'partial'
    reads, real = [], tr.read_checkpoint
    monkeypatch.setattr(tr, 'read_checkpoint', lambda p: reads.append((Path(p).name, real(p)['step'])) or real(p))
    rep = run_grid({'fixed': cfg}, log=None, notebook=False)
    assert list(rep.table.status) == ['partial'] and list(rep.table.outcome) == ['ran']
    assert ('last.torch', 4) in reads                      # resumed from the step-4 state, not from scratch
    assert real(last)['step'] == 10 and run_status(tmp_path, c.exp_id) == 'done'
    row = read_results(tmp_path).iloc[0]
    assert row.steps == 10 and (tmp_path/row.ckpt_path).exists()
