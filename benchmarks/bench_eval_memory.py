#!/usr/bin/env python
"""Streaming evaluation: peak memory of `defect_sam.evaluate.evaluate` at 200 and at 2,000 test images.

Each size runs in a fresh process on a generated Severstal-layout dataset (1600x256 strips, the layout of
`bench_severstal_scale.py`, here with distinct noise images so every image is decoded and scored for real) with a cheap
model (a fixed function of the pixels: the point is the evaluator's memory, not a model's), saving predictions as an
experiment does. Printed per size: RSS before the evaluation (after a 2-image warm-up evaluation, so that imports and
first-call allocations are counted before), peak RSS (ru_maxrss), the growth, and the size of the per-image table,
which is the one thing that should grow with the number of images.

    python benchmarks/bench_eval_memory.py [--sizes 200 2000]

Measured (2 shared CPU cores, load average about 9): without the warm-up (RSS taken before the first evaluation)
200 images peak 1012.1 MiB, 2000 images peak 1018.0 MiB (per-image table 0.03 and 0.29 MiB), i.e. +6 MiB for ten
times the images; with the warm-up (this version, --sizes 20 60) RSS 1009.7 MiB before and +13.8 / +13.9 MiB during
the evaluation: the ~775 MiB seen without warm-up are imports and first-call buffers, paid once, not per image.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make(root:Path, n:int, seed:int=0):
    import cv2
    rng = np.random.default_rng(seed)
    (root/'train_images').mkdir(parents=True, exist_ok=True)
    lines = ['ImageId,ClassId,EncodedPixels']
    for k in range(n):
        name = f'{k:08x}.jpg'
        cv2.imwrite(str(root/'train_images'/name), rng.integers(0, 255, (32, 200, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1))
        if k % 2:
            s = int(rng.integers(1, 256 * 1600 - 3000))
            lines.append(f"{name},{1 + k % 4},{s} 800 {s + 1024} 900")
    (root/'train.csv').write_text('\n'.join(lines) + '\n')


def child(n:int, root:Path):
    import psutil
    from defect_sam.data.load import load_dataset
    from defect_sam.evaluation.evaluate import evaluate
    from defect_sam.models.base import Segmenter
    class Cheap(Segmenter):
        name = 'cheap'
        def predict(self, image, **kw): return (image[..., 0].astype(np.float32) / 255) ** 4
    ds = load_dataset('severstal', root, binary=True)
    evaluate(Cheap(), ds.subset(ds.ids[:2]), threshold=0.5, save_dir=root.parent/f'warm{n}', n_figures=0, progress=False)
    ds = ds.subset(ds.ids[:n])
    before = psutil.Process().memory_info().rss / 2**20   # after a 2-image evaluation: imports and first-call costs paid
    t0 = time.perf_counter()
    res = evaluate(Cheap(), ds, threshold=0.5, save_dir=root.parent/f'eval{n}', n_figures=0, progress=False)
    dt = time.perf_counter() - t0
    print(json.dumps(dict(n=len(ds), before=before, peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          seconds=dt, table_mib=res.table.memory_usage(deep=True).sum() / 2**20, mIoU=res.summary['mIoU'])))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--sizes', type=int, nargs='+', default=[200, 2000])
    ap.add_argument('--child', type=int, help=argparse.SUPPRESS)
    ap.add_argument('--root', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child: return child(a.child, Path(a.root))
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)/'severstal'
        t0 = time.perf_counter()
        make(root, max(a.sizes))
        print(f"generated {max(a.sizes)} images (1600x256) in {time.perf_counter() - t0:.0f} s; cheap model, predictions saved, fresh process per size")
        for n in a.sizes:
            out = subprocess.run([sys.executable, __file__, '--child', str(n), '--root', str(root)], capture_output=True, text=True,
                                 env={**os.environ, 'DEFECT_SAM_CACHE': f'{d}/cache'})
            if out.returncode: raise SystemExit(out.stderr[-3000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {r['n']:5d} images: RSS before {r['before']:6.1f} MiB, peak {r['peak']:6.1f} MiB (+{r['peak'] - r['before']:5.1f}), "
                  f"per-image table {r['table_mib']:.2f} MiB, {r['seconds']:.0f} s ({1000 * r['seconds'] / r['n']:.0f} ms/image)")


if __name__ == '__main__':
    main()
