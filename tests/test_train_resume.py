"""A training run killed with SIGKILL after its first checkpoint and started again with the same parameters ends
exactly where an uninterrupted run ends: the same validation numbers, log, kept checkpoints and weights (CPU)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from defect_sam.training.loop import read_checkpoint

HERE = Path(__file__).parent
ROOT = HERE.parent


def _env(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               DEFECT_SAM_CACHE=str(tmp_path/'cache'), OMP_NUM_THREADS='1')
    env.pop('WORLD_SIZE', None)
    return env


def _run(spec, env, **kw):
    return subprocess.Popen([sys.executable, str(HERE/'train_run.py'), json.dumps(spec)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _finish(p, timeout=120):
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out
    return out


def _kill_after_first_checkpoint(spec, env):
    "Start the run, SIGKILL it as soon as last.torch exists; return the step it had reached."
    last = Path(spec['out'])/'last.torch'
    p = _run(dict(spec, slow_after_ckpt=0.4), env)
    t0 = time.time()
    while not last.exists():
        assert p.poll() is None, p.communicate()[0]
        assert time.time() - t0 < 120, 'no checkpoint written'
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    return read_checkpoint(last)['step']


def _same_run(a:Path, b:Path):
    ra, rb = (json.loads((d/'train_result.json').read_text()) for d in (a, b))
    for k in ('best_metrics', 'steps', 'stop_reason', 'top_k', 'params_hash'): assert ra[k] == rb[k], k
    import pandas as pd
    ha, hb = (pd.read_csv(d/'log.csv').drop(columns='time_s') for d in (a, b))
    pd.testing.assert_frame_equal(ha, hb)                                  # losses, lr, val metrics: exactly
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for name in ['last.torch'] + [r['file'] for r in ra['top_k']]:
        ma, mb = read_checkpoint(a/name)['model'], read_checkpoint(b/name)['model']
        assert ma.keys() == mb.keys()
        for k in ma: assert torch.equal(ma[k], mb[k]), (name, k)
    la, lb = read_checkpoint(a/'last.torch'), read_checkpoint(b/'last.torch')
    assert la['rng'][0]['generator'] == lb['rng'][0]['generator']
    for s in la['optimizer']['state']:
        for k, v in la['optimizer']['state'][s].items(): assert torch.equal(v, lb['optimizer']['state'][s][k])


# SAM2 LoRA exercises every random stream: data order, augmentation (flips), simulated point prompts (the loop's
# generator), LoRA dropout (torch), with gradient accumulation and the embedding cache rebuilt by the new process.
CFG = dict(steps=6, batch_size=2, grad_accum=2, lr=1e-3, val_every=3, ckpt_every=2, log_every=2,
           augment={'hflip': 0.5, 'vflip': 0.5}, prompt='points_3', prompt_n_neg=1, progress=False)


def test_killed_run_resumes_to_the_same_result(tmp_path):
    env, cfg = _env(tmp_path), CFG
    spec = dict(model='sam_lora', cfg=cfg)
    ref = _run(dict(spec, out=str(tmp_path/'ref')), env)                   # uninterrupted, alongside
    step = _kill_after_first_checkpoint(dict(spec, out=str(tmp_path/'run')), env)
    assert 0 < step < cfg['steps']
    _finish(_run(dict(spec, out=str(tmp_path/'run'), record=str(tmp_path/'seen')), env))   # the same command again
    seen = json.loads((tmp_path/'seen'/'rank0.json').read_text())
    assert len(seen) == (cfg['steps'] - step) * cfg['grad_accum']           # it resumed: only the remaining batches
    _finish(ref)
    _same_run(tmp_path/'ref', tmp_path/'run')
