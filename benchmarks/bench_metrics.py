"""Time the metric suite on a Severstal-sized synthetic test set.

Evaluates N synthetic 256x1600 (prediction, ground truth, probability) triples, streamed one at a time, and prints
the seconds of the full suite (`MetricAccumulator.update` on every image + summary + extras) and of each part
measured separately on the same images: pixel counts, AUPRC histogramming, skeleton IoU, the class-index counts
behind the Kaggle dice, and one-pass threshold calibration (99 thresholds).

Images are drawn from a pool of distinct random triples (cycled), so generating them does not dominate the run;
40% have an empty ground truth, as on Severstal. Target: the full suite, skeleton IoU included, under 60 s on 2 cores.

    python benchmarks/bench_metrics.py                 # 2000 x 256x1600
    python benchmarks/bench_metrics.py --n 200         # quick look
"""
import argparse
import time

import cv2
import numpy as np

from defect_sam.evaluation.metrics import MemoryMonitor, MetricAccumulator, ThresholdCalibrator, confusion_counts, prob_histogram, skeleton_counts


def synthetic_triple(rng, H, W, C=4):
    "A class-index ground truth (cracks and blobs, or empty), a noisy prediction and a probability map."
    gt = np.zeros((H, W), np.uint8)
    if rng.random() > 0.4:
        for _ in range(rng.integers(1, 5)):
            c = int(rng.integers(1, C + 1))
            if rng.random() < 0.5:   # crack: a thin polyline
                pts = np.cumsum(rng.integers(-40, 41, (6, 2)), 0) + [rng.integers(0, W), rng.integers(0, H)]
                cv2.polylines(gt, [pts.astype(np.int32)], False, c, int(rng.integers(1, 6)))
            else:                    # blob
                cv2.ellipse(gt, (int(rng.integers(0, W)), int(rng.integers(0, H))),
                            (int(rng.integers(5, 120)), int(rng.integers(5, 60))), float(rng.uniform(0, 180)), 0, 360, c, -1)
    pred = np.roll(gt, tuple(rng.integers(-3, 4, 2)), (0, 1))
    pred = cv2.dilate(pred, np.ones((3, 3), np.uint8)) if rng.random() < 0.5 else cv2.erode(pred, np.ones((2, 2), np.uint8))
    for _ in range(rng.poisson(1.0)):   # false positives
        cv2.circle(pred, (int(rng.integers(0, W)), int(rng.integers(0, H))), int(rng.integers(2, 20)), int(rng.integers(1, C + 1)), -1)
    noise = cv2.GaussianBlur(rng.random((H, W), np.float32), (0, 0), 3)
    prob = np.clip(0.75 * (pred > 0) + 0.5 * (noise - 0.5) + 0.1, 0, 1).astype(np.float32)
    return pred, gt, prob


def timed(label, fn, results):
    t0 = time.perf_counter(); out = fn(); results[label] = time.perf_counter() - t0
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=2000, help='images evaluated')
    ap.add_argument('--height', type=int, default=256)
    ap.add_argument('--width', type=int, default=1600)
    ap.add_argument('--pool', type=int, default=64, help='distinct synthetic triples, cycled')
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    t0 = time.perf_counter()
    pool = [synthetic_triple(rng, a.height, a.width) for _ in range(a.pool)]
    binary = [((p > 0).astype(np.uint8), (g > 0).astype(np.uint8), pr) for p, g, pr in pool]
    print(f'{a.n} images of {a.height}x{a.width} ({a.pool} distinct, generated in {time.perf_counter() - t0:.1f} s)')
    stream = lambda src: (src[k % len(src)] for k in range(a.n))
    r = {}

    def full(src, C):
        acc = MetricAccumulator(num_classes=C)
        for k, (p, g, pr) in enumerate(stream(src)): acc.update(p, g, pr, id=str(k))
        return acc.summary(), acc.extras()
    with MemoryMonitor() as mon:
        s, _ = timed('full suite, binary (counts + AUPRC + skeleton IoU + summary)', lambda: full(binary, 1), r)
    timed('full suite, 4 classes (per-class counts and skeletons, Kaggle dice)', lambda: full(pool, 4), r)
    timed('  part: pixel counts, binary', lambda: [confusion_counts(p, g) for p, g, _ in stream(binary)], r)
    timed('  part: pixel counts, 4 classes (Kaggle dice inputs)', lambda: [confusion_counts(p, g, 4) for p, g, _ in stream(pool)], r)
    timed('  part: AUPRC histogramming (1000 bins)', lambda: [prob_histogram(pr, g) for _, g, pr in stream(binary)], r)
    timed('  part: skeleton IoU (radius 2)', lambda: [skeleton_counts(p, g, 2) for p, g, _ in stream(binary)], r)

    def calib():
        cal = ThresholdCalibrator()
        for p, g, pr in stream(binary): cal.update(pr, g)
        return cal.best('mIoU')
    timed('one-pass threshold calibration, 99 thresholds (not part of the suite)', calib, r)

    w = max(map(len, r))
    for k, v in r.items(): print(f'{k:<{w}}  {v:7.2f} s  ({1000 * v / a.n:.2f} ms/image)')
    mem = mon.results()
    print(f"peak RSS during the binary suite: {mem['peak_rss_mb']:.0f} MiB (+{mem['peak_rss_increase_mb']:.0f} MiB)")
    print('summary (binary):', {k: round(v, 4) for k, v in s.items()})
    verdict = 'meets' if r['full suite, binary (counts + AUPRC + skeleton IoU + summary)'] < 60 * a.n / 2000 else 'MISSES'
    print(f'target: full suite under 60 s for 2000 images -> {verdict} it')


if __name__ == '__main__':
    main()
