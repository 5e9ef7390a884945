"""Locks that hold on shared filesystems (issue 21), with faults injected:

- a lock holder on another node killed with `kill -9`: its lock is kept while its lease runs (a live holder renews it
  past its lifetime), taken over once the lease lapsed, and the run completes exactly once;
- a lock holder killed on this machine: its lock is taken over at once (its process is provably gone);
- two grid commands on one results folder where `flock` is per node (NFS mounted `nolock`, Lustre `localflock`: each
  grid's worker is a "node" whose flock the other does not see), one worker killed mid-run: each run executes exactly
  once (the killed one is resumed once, from its checkpoint) and the table holds one row per run. With `filelock`'s
  flock both grids ran the same runs at once."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from _grid_jobs import counted_run, markers
from defect_sam.core.locks import LeaseLock, LockTimeout, lock_holder
from defect_sam.experiments.grid import expand_grid
from defect_sam.experiments.launch import run_grid, run_lock_path
from defect_sam.experiments.table import read_results

HERE = Path(__file__).parent
TINY = dict(model='sam2_zeroshot', weights='random', sam2_image_size=64, device='cpu', n_figures=0,
            dataset_options={'n_images': 8, 'height': 32, 'width': 96}, split=[0.5, 0.25, 0.25])
UNET = dict(model='unet', weights='random', img_size=64, device='cpu', n_figures=0, steps=4, batch_size=2,
            dataset_options={'n_images': 8, 'height': 32, 'width': 64}, split=[0.5, 0.25, 0.25],
            train_options={'ckpt_every': 2, 'val_every': 4})
HOLDER = r'''
import socket, sys, time
if sys.argv[2] != '-':                                    # pretend to be another node of the cluster
    socket.gethostname = lambda: sys.argv[2]
    socket.getfqdn = lambda *a: sys.argv[2] + '.cluster'
from defect_sam.core.locks import LeaseLock
LeaseLock(sys.argv[1]).acquire(timeout=0)
print('held', flush=True)
time.sleep(600)
'''


def _holder(path, host='-', **env) -> subprocess.Popen:
    "A process that takes lock `path` and keeps it (renewing its lease) until killed."
    p = subprocess.Popen([sys.executable, '-c', HOLDER, str(path), host], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(HERE.parent), **env))
    assert p.stdout.readline().strip() == 'held'
    return p


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv('DEFECT_SAM_CACHE', str(tmp_path/'cache'))
    monkeypatch.setenv('DEFECT_SAM_TEST_MARKER', str(tmp_path/'executions.jsonl'))
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    return tmp_path


def test_a_holder_killed_on_another_node_is_taken_over_after_its_lease(env, monkeypatch):
    monkeypatch.setenv('DEFECT_SAM_LOCK_LIFETIME', '8')
    monkeypatch.setenv('DEFECT_SAM_LOCK_CLOCK_SLOP', '1')
    grid = {'fixed': TINY}
    (r,) = expand_grid(grid, env/'res')
    path = run_lock_path(r.config)
    holder = _holder(path, 'node-b', SLURM_JOB_ID='4242')
    try:
        time.sleep(11)                                                  # past lifetime + allowance: renewed, not stale
        h = lock_holder(path)
        assert (h['host'], h['pid'], h['job'], h['stale']) == ('node-b', holder.pid, '4242', False)
        rep = run_grid(grid, env/'res', notebook=False, runner=counted_run, log=None)
        assert list(rep.table.outcome) == ['busy'] and 'node-b pid' in rep.table.error[0] and 'SLURM job 4242' in rep.table.error[0]
    finally:
        holder.send_signal(signal.SIGKILL); holder.wait()              # kill -9: nothing is released
    killed = time.monotonic()
    with pytest.raises(LockTimeout, match='node-b pid'): LeaseLock(path).acquire(timeout=0)   # its lease still runs
    while not lock_holder(path)['stale']:
        assert time.monotonic() - killed < 60, lock_holder(path)
        time.sleep(0.2)
    assert time.monotonic() - killed > 3                                # at least lifetime - renewal interval - 1 s + allowance
    with pytest.warns(UserWarning, match='took over the lock of node-b'):
        rep = run_grid(grid, env/'res', notebook=False, runner=counted_run, log=None)
    assert list(rep.table.outcome) == ['ran']
    assert [m['exp_id'] for m in markers(env/'executions.jsonl')] == [r.exp_id]   # executed exactly once
    assert list(read_results(env/'res').exp_id) == [r.exp_id]
    assert list(path.parent.iterdir()) == []                            # lock, record and the dead holder's claim are gone


def test_a_holder_killed_on_this_machine_is_taken_over_at_once(tmp_path):
    path = tmp_path/'train.lock'
    holder = _holder(path)                                              # default lifetime: 300 s
    assert lock_holder(path)['alive'] is True
    holder.send_signal(signal.SIGKILL); holder.wait()
    assert lock_holder(path)['alive'] is False and lock_holder(path)['stale']
    with pytest.warns(UserWarning, match='its process is gone'):
        lock = LeaseLock(path).acquire(timeout=0)
    lock.release()
    assert list(tmp_path.iterdir()) == []


NOLOCK = '''import fcntl
def _flock_of_another_node(fd, op): return None   # NFS nolock / Lustre localflock, seen from another node: no lock at all
fcntl.flock = _flock_of_another_node
'''


def meeting_run(cfg):
    "counted_run, once both grids' workers hold a run: they meet on the same runs at the same time."
    b = Path(os.environ['DEFECT_SAM_TEST_MEET'])
    (b/str(os.getpid())).touch()
    end = time.time() + 120
    while len(list(b.iterdir())) < 2 and time.time() < end: time.sleep(0.1)
    counted_run(cfg)


def test_two_grids_with_per_node_flock_run_each_run_once(env, monkeypatch):
    site = env/'site'; site.mkdir()
    (site/'sitecustomize.py').write_text(NOLOCK)
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(site), str(HERE), str(HERE.parent), os.environ.get('PYTHONPATH', '')]))
    (env/'meet').mkdir(); monkeypatch.setenv('DEFECT_SAM_TEST_MEET', str(env/'meet'))
    grid = {'fixed': UNET, 'axes': {'seed': [0, 1, 2]}}
    ids = [r.exp_id for r in expand_grid(grid, env/'res')]
    victim = ids[0]
    monkeypatch.setenv('DEFECT_SAM_TEST_KILL', f'{victim}:3')          # the worker running it dies after step 3 (last.torch: step 2)
    reps = {}
    def grid_command(k): reps[k] = run_grid(grid, env/'res', launcher='local', jobs=1, notebook=False, runner=meeting_run, log=None)
    threads = [threading.Thread(target=grid_command, args=(k,)) for k in (0, 1)]
    for t in threads: t.start()
    for t in threads: t.join()
    runs = markers(env/'executions.jsonl')
    assert sorted(m['exp_id'] for m in runs) == sorted(ids)             # each run started once: none by both grids
    assert len({m['pid'] for m in runs}) == 2
    outcomes = sorted(o for rep in reps.values() for o in rep.table.outcome)
    assert outcomes.count('ran') == 2 and outcomes.count('busy') >= 1   # the survivor ran the other two; the victim was busy to it

    monkeypatch.delenv('DEFECT_SAM_TEST_KILL')
    again = run_grid(grid, env/'res', notebook=False, runner=counted_run, log=None)   # takes over the dead worker's locks
    assert again.table.set_index('exp_id').outcome.to_dict() == {victim: 'ran', ids[1]: 'skipped', ids[2]: 'skipped'}
    runs = markers(env/'executions.jsonl')
    assert sorted(m['exp_id'] for m in runs) == sorted(ids + [victim])
    assert [m['start_step'] for m in runs if m['exp_id'] == victim] == [0, 2]   # resumed once, from its checkpoint
    table = read_results(env/'res')
    assert sorted(table.exp_id) == sorted(ids) and table.test_mIoU.notna().all()
    assert list((env/'res'/'.locks').iterdir()) == []
