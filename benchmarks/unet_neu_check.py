"""Real-data check of the U-Net baseline: train a U-Net-family model from scratch on NEU-Seg (neu_seg_mini, binary) with
the shared training loop for a CPU time budget, then score it on the val split with the one evaluation function.

    python benchmarks/unet_neu_check.py --minutes 5

The number of optimizer steps is fitted to the budget from a short probe run of the same loop (its steps are timed,
then discarded). Prints the data, the settings, the training time and the val metrics (mIoU, mDice, pooled IoU/Dice).
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from defect_sam.data.load import load_dataset
from defect_sam.evaluation.evaluate import evaluate
from defect_sam.models.registry import build_model
from defect_sam.training.loop import TrainConfig, train


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--minutes', type=float, default=5.0, help='training budget in minutes (wall clock, after the probe)')
    ap.add_argument('--model', default='unet', help='registered U-Net-family name: unet, unet_r50, unetpp, dsc_unet')
    ap.add_argument('--data', default=None, help='neu_seg_mini folder (default: $DEFECT_SAM_SHARED_DATA/neu_seg_mini)')
    ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--batch-size', type=int, default=8)
    ap.add_argument('--img-size', type=int, nargs=2, default=[128, 512], metavar=('H', 'W'),
                    help='letterbox box: NEU 200x200 images become 128x128 (the model default 256 1024 gives 256x256, ~4x slower)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--probe-steps', type=int, default=3, help='steps timed to fit the budget')
    ap.add_argument('--out', default=None, help='run folder (default: a temporary folder)')
    a = ap.parse_args()

    root = Path(a.data or Path(os.environ.get('DEFECT_SAM_SHARED_DATA', '../shared/data'))/'neu_seg_mini')
    tr = load_dataset('folder', root, images='img_dir/train', masks='ann_dir/train', binary=True)
    va = load_dataset('folder', root, images='img_dir/val', masks='ann_dir/val', binary=True)
    out = Path(a.out or tempfile.mkdtemp(prefix='unet_neu_'))
    print(f"data: {root} train {len(tr)}, val {len(va)} (binary); torch threads {torch.get_num_threads()}; out {out}")
    params = dict(encoder_weights=None, img_size=tuple(a.img_size), seed=a.seed)

    probe = build_model(a.model, **params)
    pr = train(probe, tr, None, TrainConfig(steps=a.probe_steps + 1, batch_size=a.batch_size, lr=a.lr, seed=a.seed, log_every=1,
                                            val_every=None, ckpt_every=10**9, progress=False), out/'probe', resume=False)
    t = pr.history[pr.history.kind == 'train'].time_s.to_numpy()
    per_step = float(t[-1] - t[0]) / (len(t) - 1)          # the first step carries the setup
    steps = max(a.probe_steps, int(a.minutes * 60 / per_step))
    print(f"probe: {per_step:.2f} s/step -> {steps} steps for {a.minutes} min of training (validation comes on top)")

    model = build_model(a.model, **params)
    cfg = TrainConfig(steps=steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, val_every=max(steps // 2, 1),
                      ckpt_every=steps, progress=True)
    t1 = time.perf_counter()
    res = train(model, tr, va, cfg, out/'train', resume=False)
    train_s = time.perf_counter() - t1
    ev = evaluate(model, va, progress=False)
    s = ev.summary
    print(f"trained {res.steps} steps in {train_s / 60:.1f} min (lr {a.lr}, batch {a.batch_size}, "
          f"{res.steps * a.batch_size / len(tr):.1f} epochs); best checkpoint: {res.best_metrics}")
    print(json.dumps({'model': a.model, 'steps': res.steps, 'train_min': round(train_s / 60, 2),
                      **{k: round(float(s[k]), 4) for k in ('mIoU', 'mDice', 'pooled_IoU', 'pooled_Dice', 'AUPRC')}}))


if __name__ == '__main__':
    main()
