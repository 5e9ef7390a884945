"""How the soft Dice term should reduce over a batch: `image` (per image, smooth 1), `batch` (over the batch, classes absent
from it left out: smp's DiceLoss, nnU-Net's batch Dice) or `present` (per image, only where the target holds a defect:
sam2's "object present"), side by side on the same data, the same U-Net, the same seed and steps.

Datasets (binary):
- `synthetic`: the package's synthetic steel strips, half of them defect-free (its default `defect_fraction` 0.5),
  `--synthetic-train` strips for training, another seed's 24 for validation and a third seed's 48 for test, 64 x 256 px;
- `neu`: `../shared/data/neu_seg_mini`, its train split less 20 images for validation, its val split as test, 200 x 200
  (letterboxed to 128), every image with a defect.

For each run it prints the test defect mIoU (`mIoU_defect`: images with a defect), the `false_alarm_rate` (defect-free
images given any defect pixel), the image mIoU, and how soon the model stops predicting nothing: the first validation
step (every `--val-every` steps, on the validation images) at which at least half of the defect images get a non-empty
prediction. The test figures are of the best validation's weights (the loop's rule). Every model is a U-Net (ResNet34 encoder) from random weights: the numbers compare the three reductions and
are not results of any trained model worth quoting.

    python benchmarks/bench_dice_reduction.py [--steps 300] [--datasets synthetic neu]
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import defect_sam.training.loop as loop
from defect_sam.data.load import load_dataset
from defect_sam.evaluation.evaluate import evaluate
from defect_sam.models.registry import build_model
from defect_sam.training.losses import DICE_REDUCTIONS
from defect_sam.training.loop import TrainConfig, train


def datasets(shared: Path, names, n_synth: int):
    out = {}
    for n in names:
        if n == 'synthetic':
            kw = dict(height=64, width=256, binary=True)
            out[n] = (load_dataset('synthetic', n_images=n_synth, seed=0, **kw), load_dataset('synthetic', n_images=24, seed=2, **kw),
                      load_dataset('synthetic', n_images=48, seed=1, **kw), (64, 256))
        elif n == 'neu':
            r = shared/'neu_seg_mini'
            tr = load_dataset('folder', r, images='img_dir/train', masks='ann_dir/train', binary=True)
            out[n] = (tr.subset(tr.ids[:-20]), tr.subset(tr.ids[-20:]), load_dataset('folder', r, images='img_dir/val', masks='ann_dir/val',
                      binary=True), (128, 128))
        else: raise SystemExit(f'unknown dataset {n!r}')
    return out


def run(tr, va, te, box, reduction: str, a) -> dict:
    "Train one U-Net with `reduction`; record, at every validation, the share of defect images with a non-empty prediction."
    seen = []
    real = loop.evaluate
    def watched(model, ds, **kw):                         # the loop's own validation, on the test images, recorded
        r = real(model, ds, **kw)
        d = r.table[r.table.gt_defect]
        seen.append(float(d.pred_defect.mean()) if len(d) else float('nan'))
        return r
    loop.evaluate = watched
    try:
        model = build_model('unet', encoder_weights=None, img_size=box, seed=a.seed, num_classes=1)
        cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, val_every=a.val_every, ckpt_every=a.steps,
                          dice_reduction=reduction, progress=False)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d: train(model, tr, va, cfg, d, resume=False)
        secs = time.perf_counter() - t0
    finally:
        loop.evaluate = real
    s = evaluate(model, te, progress=False).summary                # the best validation's weights
    steps = [a.val_every * (k + 1) for k in range(len(seen))]
    first = next((st for st, f in zip(steps, seen) if f >= 0.5), None)
    return dict(reduction=reduction, mIoU_defect=s['mIoU_defect'], false_alarm_rate=s['false_alarm_rate'], mIoU=s['mIoU'],
                first_step_half_found=first, found_share=' '.join(f'{f:.2f}' for f in seen), train_s=secs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--data', type=Path, default=Path(os.environ.get('DEFECT_SAM_SHARED_DATA', '../shared/data')))
    ap.add_argument('--datasets', nargs='+', default=['synthetic', 'neu'])
    ap.add_argument('--reductions', nargs='+', default=list(DICE_REDUCTIONS))
    ap.add_argument('--steps', type=int, default=300)
    ap.add_argument('--val-every', type=int, default=25)
    ap.add_argument('--batch-size', type=int, default=8)
    ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--synthetic-train', type=int, default=96)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', type=Path, default=Path('bench_dice_reduction.csv'))
    a = ap.parse_args()
    print(f"U-Net (ResNet34, random init), {a.steps} steps of batch {a.batch_size}, lr {a.lr}, seed {a.seed}; torch threads {torch.get_num_threads()}")
    rows = []
    for name, (tr, va, te, box) in datasets(a.data, a.datasets, a.synthetic_train).items():
        clean = sum(not s.mask.any() for s in te)
        print(f"\n{name}: train {len(tr)}, val {len(va)}, test {len(te)} ({clean} defect-free), box {box[0]}x{box[1]}")
        for r in a.reductions:
            row = dict(dataset=name, **run(tr, va, te, box, r, a))
            rows.append(row)
            print(f"  {r:8s} defect mIoU {row['mIoU_defect']:.3f}  false alarms {row['false_alarm_rate']:.3f}  mIoU {row['mIoU']:.3f}  "
                  f"half the defects found at step {row['first_step_half_found']}  (found share per validation: {row['found_share']})  "
                  f"{row['train_s']:.0f} s", flush=True)
        pd.DataFrame(rows).to_csv(a.out, index=False)
    df = pd.DataFrame(rows)
    print('\n' + df[['dataset', 'reduction', 'mIoU_defect', 'false_alarm_rate', 'mIoU', 'first_step_half_found']].to_string(index=False,
          float_format=lambda v: f'{v:.3f}'))
    print(f"written: {a.out}")


if __name__ == '__main__':
    main()
