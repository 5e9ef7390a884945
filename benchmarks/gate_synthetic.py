#!/usr/bin/env python
"""A class-aware U-Net with and without the image-level gate, on the synthetic steel set in the Severstal layout
(4 classes, half the strips defect-free), from random initialisation on a CPU: what the gate changes in the Kaggle
mean Dice and in the other columns. The numbers come from random-init models on synthetic data; they say what the
pipeline does, not how well a pretrained model would do on Severstal.

    python benchmarks/gate_synthetic.py [--out DIR] [--n 120] [--steps 150]

Runs, in one results folder: the gate (ResNet18, threshold calibrated on val for image F1), the U-Net, and the U-Net
behind the gate (re-using the U-Net's training). Prints the rows side by side.
"""
import argparse
import tempfile
import time

import pandas as pd

from defect_sam.experiments.run import run_experiment


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', help='results folder (default: a temporary one)')
    ap.add_argument('--n', type=int, default=120, help="synthetic strips")
    ap.add_argument('--steps', type=int, default=150, help="optimizer steps of the gate and of the U-Net")
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix='gate_synthetic_')
    base = dict(dataset='synthetic', dataset_options={'n_images': a.n, 'height': 32, 'width': 200}, class_aware=True,
                weights='random', img_size=128, device='cpu', steps=a.steps, batch_size=8, n_figures=0, results_dir=out,
                augment={}, threshold='val')
    t0 = time.time()
    gate = run_experiment({**base, 'model': 'gate'}, progress=False)
    unet = run_experiment({**base, 'model': 'unet', 'lr': 1e-3}, progress=False)
    gated = run_experiment({**base, 'model': 'unet', 'lr': 1e-3, 'gate': gate.row['exp_id']}, progress=False)
    cols = ['exp_id', 'kaggle_dice', 'test_mIoU', 'test_Dice', 'Precision', 'Recall', 'threshold', 'image_AUROC', 'gate_thresholds',
            'avg_inference_time', 'n_test']
    with pd.option_context('display.width', 250, 'display.max_columns', None, 'display.max_colwidth', 45):
        print(pd.DataFrame([gate.row, unet.row, gated.row])[cols].to_string(index=False))
    lvl = gate.test.extras['image_level']
    print(f"gate on test: precision {lvl['precision']:.3f}, recall {lvl['recall']:.3f}, F1 {lvl['F1']:.3f}, "
          f"false alarms {lvl['false_alarm_rate']:.3f}, AUROC {lvl['AUROC']:.3f} ({lvl['tp']} tp, {lvl['fp']} fp, {lvl['fn']} fn, {lvl['tn']} tn)")
    g = gated.test.extras['model']['gate']
    print(f"gated U-Net: {g['n_gated']} of {g['n_images']} val+test images never reached the segmenter")
    print(f"results in {out}; {time.time() - t0:.0f} s (random-init models, synthetic data)")


if __name__ == '__main__':
    main()
