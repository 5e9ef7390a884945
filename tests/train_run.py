"""Run one training from a JSON spec (argv[1]); used by the resume (kill -9) and the 2-process tests.

spec: model ('tiny' | 'sam_lora'), out (run folder), cfg (TrainConfig fields), data (tiny_data keywords),
slow_after_ckpt (sleep this many seconds per batch once last.torch exists, so a test can kill the run mid-way),
record (folder: each process writes the sample ids of its batches to rank{r}.json)."""
import json
import os
import sys
import time
from pathlib import Path

from _train_toys import make_model, tiny_data
from defect_sam.training.loop import TrainConfig, train

spec = json.loads(sys.argv[1])
model = make_model(spec['model'])
out = Path(spec['out'])
seen, fb = [], model.forward_batch
def forward_batch(samples, rng, module):
    if spec.get('slow_after_ckpt') and (out/'last.torch').exists(): time.sleep(spec['slow_after_ckpt'])
    seen.append([s.id for s in samples])
    return fb(samples, rng, module)
model.forward_batch = forward_batch
train_ds, val_ds = tiny_data(**spec.get('data', {}))
cfg = TrainConfig(**spec['cfg'])
train(model, train_ds, val_ds, cfg, out)
if spec.get('record'):
    rank = int(os.environ.get('RANK', 0))
    Path(spec['record']).mkdir(parents=True, exist_ok=True)
    (Path(spec['record'])/f'rank{rank}.json').write_text(json.dumps(seen))
