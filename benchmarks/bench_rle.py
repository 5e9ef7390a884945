"""RLE throughput on Severstal-sized masks (1600x256): defect_sam's vectorized rle_decode / rle_encode against a naive
per-pixel reference and the per-run loop common in Kaggle kernels. Prints masks/s and speed-ups measured side by side.

    python benchmarks/bench_rle.py [--n 200] [--naive 3]
"""
import argparse
import time

import numpy as np

from defect_sam.data.rle import rle_decode, rle_encode
from defect_sam.data.synthetic import synth_strip

H, W = 256, 1600


def masks(n, seed=0):
    "Realistic masks: one synthetic defect class per strip (pits, scratches, patches, areas in turn): several runs per column."
    out = []
    for k in range(n):
        c = k % 4 + 1
        _, m = synth_strip(np.random.default_rng([seed, k]), (c,), H, W)
        out.append((m == c).astype(np.uint8))
    return out


def naive_encode(m):
    "Reference: walk the pixels one by one, column-major."
    flat = m.T.ravel().tolist(); runs = []; start = None
    for p, v in enumerate(flat + [0]):
        if v and start is None: start = p
        elif not v and start is not None: runs += [start + 1, p - start]; start = None
    return ' '.join(map(str, runs))


def naive_decode(rle, shape):
    h, w = shape; flat = [0] * (h * w); v = list(map(int, rle.split()))
    for s, l in zip(v[0::2], v[1::2]):
        for p in range(s - 1, s - 1 + l): flat[p] = 1
    return np.array(flat, np.uint8).reshape(w, h).T


def kernel_encode(m):
    "The mask2rle found in most Severstal kernels (vectorized, with a where and a string join)."
    pixels = m.T.flatten(); pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1; runs[1::2] -= runs[::2]
    return ' '.join(str(x) for x in runs)


def kernel_decode(rle, shape):
    "The rle2mask found in most Severstal kernels (a Python loop over runs)."
    h, w = shape; s = rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0::2], s[1::2])]
    starts -= 1; ends = starts + lengths
    img = np.zeros(h * w, dtype=np.uint8)
    for lo, hi in zip(starts, ends): img[lo:hi] = 1
    return img.reshape(w, h).T


def rate(fn, items, repeat=3):
    best = float('inf')
    for _ in range(repeat):
        t = time.perf_counter()
        for x in items: fn(x)
        best = min(best, time.perf_counter() - t)
    return len(items) / best


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--n', type=int, default=200, help='masks for the fast implementations')
    ap.add_argument('--naive', type=int, default=3, help='masks for the per-pixel reference (slow)')
    a = ap.parse_args()
    ms = masks(a.n)
    rles = [rle_encode(m) for m in ms]
    runs = np.array([len(r.split()) // 2 for r in rles]); cols = np.array([np.unique(np.nonzero(m)[1]).size for m in ms])
    print(f"{a.n} masks of {W}x{H}: {runs.mean():.0f} runs per mask on average (max {runs.max()}), "
          f"{(runs / np.maximum(cols, 1)).mean():.2f} runs per non-empty column, {np.mean([m.mean() for m in ms]) * 100:.2f}% defect pixels")
    for r, m in zip(rles, ms):   # all implementations agree
        assert np.array_equal(rle_decode(r, (H, W)), m) and kernel_encode(m) == r and np.array_equal(kernel_decode(r, (H, W)), m)
    for r, m in list(zip(rles, ms))[:a.naive]: assert naive_encode(m) == r and np.array_equal(naive_decode(r, (H, W)), m)
    res = {
        'decode': {'defect_sam': rate(lambda r: rle_decode(r, (H, W)), rles), 'kernel loop': rate(lambda r: kernel_decode(r, (H, W)), rles),
                   'naive per-pixel': rate(lambda r: naive_decode(r, (H, W)), rles[:a.naive], 1)},
        'encode': {'defect_sam': rate(rle_encode, ms), 'kernel loop': rate(kernel_encode, ms),
                   'naive per-pixel': rate(naive_encode, ms[:a.naive], 1)},
    }
    for op, r in res.items():
        ours = r['defect_sam']
        print(f"\n{op}:")
        for k, v in r.items(): print(f"  {k:16s} {v:10.1f} masks/s   defect_sam is {ours / v:7.1f}x")


if __name__ == '__main__':
    main()
