#!/usr/bin/env python
"""LoRA `decoder` training from the on-disk embedding store vs re-encoding every image at every step, with the
per-step time breakdown, and the float16 store's effect on predictions.

For each N: SAM2.1 (random weights: timing does not depend on weight values) with the memory tier off
(`cache_bytes=0`, the case of a training set the memory tier cannot hold, e.g. 200 Severstal strips at 1024 px),
trained through `defect_sam.train.train` for E epochs without augmentation:

- store: a fresh float32 `EmbeddingStore`; the encoder runs in the first epoch only, later epochs read the files;
- re-encode: no cache; the encoder runs on every image of every step.

Printed: both wall times, the ratio, the encoder calls, the measured per-image encoder time `e` and per-step time
without encoding `d`, and the limit of the ratio, (S(d + b e)) / (S d + N e) for these S steps (b images per step), and
(d + b e) / d for many epochs. The breakdown of a store step: feature fetch (read + device copy; encoder calls in
epoch 1), decoder forward, upsampling, loss, and the rest (backward, optimizer, prompt simulation, data).
Finally the float16 store's effect: evaluation with box prompts from float32 vs float16 stored features.

    python benchmarks/bench_sam_store.py [--sizes 16 64] [--epochs 2] [--image-size 128] [--height 64] [--size tiny]

Measured with `--sizes 8 16 --epochs 3` (SAM2.1 tiny, random weights, image_size 128, 2 CPU cores shared with five
other jobs, load average about 8: the timings are dominated by that load and are NOT a speed result; 1024 px and
N = 200 were out of reach of this machine). Identical adapters in both runs of both sizes (float32 store: exact).
N=8, 12 steps: store 29.4 s (8 encoder images), re-encode 58.4 s (24), 1.99x; N=16, 24 steps: store 49.1 s (16),
re-encode 31.8 s (48), 0.65x. The per-image encoder time measured in the two re-encoding runs differs by 4x
(1.506 s vs 0.365 s), which is the noise. Store step breakdown (N=16): feature fetch 270 ms, decoder forward 739 ms,
upsampling 3 ms, loss 23 ms, backward/optimizer/rest 770 ms. float16 store vs float32 (evaluation, 8 images, random
weights): max |probability difference| 1.06e-05, mIoU 0.515841 vs 0.515840.
"""
import argparse
import collections
import os
import tempfile
import time

import numpy as np
import torch

import defect_sam.sam as sam
import defect_sam.train as tr
from defect_sam.data import load_dataset
from defect_sam.evaluate import evaluate
from defect_sam.models import build_model

T = collections.defaultdict(float)


def timed(owner, name, key):
    f = getattr(owner, name)
    def g(*a, **k):
        t0 = time.perf_counter()
        try: return f(*a, **k)
        finally: T[key] += time.perf_counter() - t0
    setattr(owner, name, g)


timed(sam.SamSegmenter, '_features', 'fetch')
timed(sam.SamImageModule, 'forward', 'decoder forward')
timed(sam, 'upsample_logits', 'upsampling')
timed(tr, 'segmentation_losses', 'loss')


def run(data, a, out, **kw):
    m = build_model('sam2_lora', size=a.size, weights='random', image_size=a.image_size, device=a.device, lora_strategy='decoder',
                    cache_bytes=0, **kw)
    steps = a.epochs * len(data) // a.batch_size
    cfg = tr.TrainConfig(steps=steps, batch_size=a.batch_size, lr=1e-4, val_every=None, ckpt_every=steps, augment=None, progress=False)
    T.clear()
    t0 = time.perf_counter()
    res = tr.train(m, data, None, cfg, out)
    wall = time.perf_counter() - t0
    return wall, m.encoder_images, dict(T), steps, tr.read_checkpoint(res.last_checkpoint)['model'], m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--sizes', type=int, nargs='+', default=[16, 64], help='training images N')
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--batch-size', type=int, default=2)
    ap.add_argument('--image-size', type=int, default=128, help='SAM2 input side (1024 as trained)')
    ap.add_argument('--height', type=int, default=64, help='strip height (width = 4 x height)')
    ap.add_argument('--size', default='tiny')
    ap.add_argument('--device', default='cpu')
    a = ap.parse_args()
    print(f"SAM2.1 {a.size} (random weights), image_size {a.image_size}, strips {4 * a.height}x{a.height}, {a.epochs} epochs, "
          f"batch {a.batch_size}, memory tier off, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as d:
        os.environ.setdefault('DEFECT_SAM_CACHE', f'{d}/cache')
        warm = load_dataset('synthetic', n_images=2, seed=2, height=a.height, width=4 * a.height, binary=True)
        run(warm, argparse.Namespace(**{**vars(a), 'epochs': 1}), f'{d}/warm')   # first-call costs (allocator, kernels) off the clock
        for n in a.sizes:
            data = load_dataset('synthetic', n_images=n, seed=0, height=a.height, width=4 * a.height, binary=True)
            ts, es, bs, steps, ws, m = run(data, a, f'{d}/s{n}', disk_cache=f'{d}/store{n}', disk_cache_dtype='float32')
            tu, eu, bu, _, wu, _ = run(data, a, f'{d}/u{n}')
            same = all(torch.equal(ws[k], wu[k]) for k in ws)
            e = bu['fetch'] / eu                                   # encoder seconds per image (re-encoding run)
            dstep = (ts - bs['fetch']) / steps                     # a store step without its feature fetch
            fetch_read = (bs['fetch'] - es * e) / steps            # per step: reading stored features (epoch 1 encodes)
            d_ = dstep + fetch_read
            lim = steps * (d_ + a.batch_size * e) / (steps * d_ + n * e)
            print(f"N={n}: {steps} steps")
            print(f"  store:     {ts:7.1f} s, {es:4d} encoder images ({m.cache.store.info()['bytes'] / 2**20:.1f} MiB on disk)")
            print(f"  re-encode: {tu:7.1f} s, {eu:4d} encoder images    identical adapters: {same}")
            print(f"  ratio {tu / ts:.2f}x; encoder {e:.3f} s/image, step without encoding {d_:.3f} s -> limit {lim:.2f}x "
                  f"for {a.epochs} epochs ({tu / ts / lim:.0%} of it), {(d_ + a.batch_size * e) / d_:.2f}x for many epochs")
            parts = {'feature fetch (read)': fetch_read, **{k: bs[k] / steps for k in ('decoder forward', 'upsampling', 'loss')}}
            parts['backward, optimizer, rest'] = d_ - sum(parts.values())
            print('  store step breakdown: ' + ', '.join(f'{k} {1000 * v:.0f} ms' for k, v in parts.items()))
            if not same: raise SystemExit('the store and re-encoding runs differ')
        data = load_dataset('synthetic', n_images=a.sizes[0], seed=1, height=a.height, width=4 * a.height, binary=True)
        probs, res = {}, {}
        for dt_ in ('float32', 'float16'):
            m = build_model('sam2_zeroshot', size=a.size, weights='random', image_size=a.image_size, cache_bytes=0,
                            disk_cache=f'{d}/eval_{dt_}', disk_cache_dtype=dt_)
            evaluate(m, data, prompt='box', progress=False)                      # fills the store
            res[dt_] = evaluate(m, data, prompt='box', progress=False, quantize_probs=False)   # reads it
            probs[dt_] = [m.predict(s.image, boxes=np.array([[0, 0, s.image.shape[1] - 1, s.image.shape[0] - 1]])) for s in data]
        diff = max(float(np.abs(p - q).max()) for p, q in zip(probs['float32'], probs['float16']))
        print(f"float16 store vs float32 (evaluation, random weights, {len(data)} images): max |prob difference| {diff:.2e}, "
              f"mIoU {res['float32'].summary['mIoU']:.6f} vs {res['float16'].summary['mIoU']:.6f}")


if __name__ == '__main__':
    main()
