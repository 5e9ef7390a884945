"""A failing rank ends every rank of a launched run (issue 21): two CPU processes (torchrun, gloo) train a tiny U-Net and
one of them raises. The failing process is made to linger after its error (a thread that never ends, as a process does
whose NCCL teardown or logging thread hangs), so nothing but the library can end the other rank: with the old 48-hour
process-group timeout and a plain barrier, both hung for two days.

- rank 0 raises while evaluating: its failure is posted to rank 1, which stops at once; FAILED.json names the error;
- rank 1 raises while training: rank 0, waiting in a collective, ends by the configured timeout
  ($DEFECT_SAM_DDP_TIMEOUT_MIN); FAILED.json holds rank 1's error under `other_ranks`."""
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from defect_sam.experiments.config import ExperimentConfig

ROOT = Path(__file__).resolve().parent.parent
CFG = dict(model='unet', weights='random', img_size=64, device='cpu', n_figures=0, steps=3, batch_size=2,
           dataset_options={'n_images': 8, 'height': 32, 'width': 64}, split=[0.5, 0.25, 0.25])
DRIVER = r'''
import json, os, sys, threading, time
spec = json.loads(sys.argv[1])
rank = int(os.environ['RANK'])
import defect_sam.experiments.run as R
import defect_sam.models.base as models
def linger(): threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()   # the process outlives its error
if spec['fail'] == 'rank0-evaluate' and rank == 0:
    def boom(*a, **k):
        linger(); raise RuntimeError('injected: rank 0 failed while evaluating')
    R.validate_and_test = boom
if spec['fail'] == 'rank1-train' and rank == 1:
    def boom(self):
        linger(); raise RuntimeError('injected: rank 1 failed in a training step')
    models.TrainableSegmenter.after_optimizer_step = boom
R.run_experiment(spec['cfg'], progress=False)
'''


def _launch(tmp_path, fail: str, timeout_min: float, limit_s: float = 240):
    "torchrun 2 processes of DRIVER; (return code, seconds, output). A launch still running after `limit_s` is a hang."
    (tmp_path/'driver.py').write_text(DRIVER)
    spec = {'fail': fail, 'cfg': dict(CFG, results_dir=str(tmp_path/'res'))}
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS='1',
               DEFECT_SAM_CACHE=str(tmp_path/'cache'), DEFECT_SAM_DDP_TIMEOUT_MIN=str(timeout_min))
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--standalone',
                          str(tmp_path/'driver.py'), json.dumps(spec)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try: out, _ = p.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        for q in [*psutil.Process(p.pid).children(recursive=True), psutil.Process(p.pid)]:   # torchrun's workers have sessions of their own
            with contextlib.suppress(psutil.NoSuchProcess): q.kill()
        out, _ = p.communicate()
        pytest.fail(f"the launched run still ran after {limit_s} s: a failing rank did not end the others\n{out[-3000:]}")
    return p.returncode, time.monotonic() - t0, out


def _failed(tmp_path) -> dict:
    eid = ExperimentConfig(**CFG, results_dir=str(tmp_path/'res')).exp_id
    return json.loads((tmp_path/'res'/eid/'FAILED.json').read_text())


def test_a_rank0_exception_ends_both_processes_at_once(tmp_path):
    rc, secs, out = _launch(tmp_path, 'rank0-evaluate', timeout_min=1)
    assert rc != 0, out[-3000:]
    assert 'RankFailed: rank 0 failed: RuntimeError: injected: rank 0 failed while evaluating' in out, out[-3000:]   # rank 1 was told
    f = _failed(tmp_path)
    assert (f['stage'], f['error'], f['message']) == ('evaluate', 'RuntimeError', 'injected: rank 0 failed while evaluating')
    assert 'other_ranks' not in f                                       # rank 1 only followed rank 0


def test_a_rank1_exception_ends_rank0_by_the_timeout_and_is_named_in_failed_json(tmp_path):
    rc, secs, out = _launch(tmp_path, 'rank1-train', timeout_min=0.4)  # 24 s
    assert rc != 0, out[-3000:]
    f = _failed(tmp_path)
    assert f['stage'] == 'train'                                        # rank 0's own view: its collective timed out
    (r1,) = f['other_ranks']
    assert (r1['rank'], r1['stage'], r1['error'], r1['message']) == (1, 'train', 'RuntimeError', 'injected: rank 1 failed in a training step')
    assert not list((tmp_path/'res'/'.attempts').glob('*.rank1.FAILED.json'))   # folded into FAILED.json
