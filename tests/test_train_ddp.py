"""Two CPU processes (torchrun, gloo): disjoint data shards, one set of files written by rank 0, and a saved model with
the single-process run's keys and shapes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from _train_toys import TinySeg, tiny_data
from defect_sam.training.loop import TrainConfig, epoch_batches, read_checkpoint, train

HERE = Path(__file__).parent
ROOT = HERE.parent
CFG = dict(steps=6, batch_size=2, lr=1e-2, val_every=3, ckpt_every=3, log_every=3, progress=False)


def test_two_processes_shard_the_data_and_save_one_model(tmp_path, monkeypatch):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               DEFECT_SAM_CACHE=str(tmp_path/'cache'), OMP_NUM_THREADS='1')
    spec = dict(model='tiny', cfg=CFG, out=str(tmp_path/'ddp'), record=str(tmp_path/'seen'))
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--standalone',
                        str(HERE/'train_run.py'), json.dumps(spec)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    seen = [json.loads((tmp_path/'seen'/f'rank{r}.json').read_text()) for r in (0, 1)]
    monkeypatch.setenv('DEFECT_SAM_CACHE', str(tmp_path/'cache'))
    train_ds, val_ds = tiny_data()
    per = len(epoch_batches(len(train_ds), CFG['batch_size'], 42, 0, 0, 2))
    assert len(seen[0]) == len(seen[1]) == CFG['steps']
    for e in range(0, CFG['steps'], per):                                   # each epoch: disjoint shards
        ids = [{i for b in s[e:e + per] for i in b} for s in seen]
        assert ids[0] and ids[1] and not ids[0] & ids[1]
    files = sorted(f.name for f in (tmp_path/'ddp').iterdir())
    assert [f for f in files if not f.startswith('best_')] == ['last.torch', 'log.csv', 'train_result.json']
    last = read_checkpoint(tmp_path/'ddp'/'last.torch')
    assert len(last['rng']) == 2 and last['params']['num_processes'] == 2   # both ranks' random streams
    assert last['rng'][0]['generator'] != last['rng'][1]['generator']

    single = train(TinySeg(), train_ds, val_ds, TrainConfig(**CFG), tmp_path/'single')
    one = read_checkpoint(single.last_checkpoint)['model']
    assert {k: tuple(v.shape) for k, v in last['model'].items()} == {k: tuple(v.shape) for k, v in one.items()}
    best = read_checkpoint(json.loads((tmp_path/'ddp'/'train_result.json').read_text())['best_checkpoint'])
    assert best['model'].keys() == one.keys() and not any(k.startswith('module.') for k in best['model'])
