#!/usr/bin/env python
"""LoRA `decoder` training from the on-disk embedding store vs re-encoding every image at every step, with the
per-step time breakdown, and the float16 store's effect on predictions.

For each N: SAM2.1 (random weights: timing does not depend on weight values) with the memory tier off
(`cache_bytes=0`, the case of a training set the memory tier cannot hold, e.g. 200 Severstal strips at 1024 px),
trained through `defect_sam.training.loop.train` for E epochs without augmentation:

- store: a fresh float32 `EmbeddingStore`; the encoder runs in the first epoch only, later epochs read the files;
- re-encode: no cache; the encoder runs on every image of every step.

Printed: both training-loop times, the ratio, the encoder calls, the measured per-image encoder time `e` and the time
`d` of a store step without encoding (measured in epochs 2.. when there are any, else estimated from the timers), and
the limit of the ratio, (S(d + b e)) / (S d + N e) for these S steps (b images per step), and (d + b e) / d for many
epochs. The breakdown of a store step: feature fetch (a read of stored features, timed on the calls that ran no
encoder), decoder forward (of which LoRA's input dropout), upsampling, loss, and the rest (backward, optimizer, prompt
simulation, data). At N = 200 and 1024 px, 10 epochs of both runs take hours on a CPU: `--measure-epochs 2
--reencode-epochs 1` trains fewer epochs and extrapolates (store: epoch 1 + 9 x the later epochs' mean; re-encoding:
10 x its epoch), saying so. Finally the float16 store's effect: evaluation with box prompts from float32 vs float16
stored features.

    python benchmarks/bench_sam_store.py [--sizes 16 64] [--epochs 2] [--image-size 128] [--height 64] [--size tiny]
    python benchmarks/bench_sam_store.py --sizes 16 --epochs 10 --image-size 1024 --height 256 --width 1600 --skip-float16
    python benchmarks/bench_sam_store.py --sizes 200 --epochs 10 --measure-epochs 2 --reencode-epochs 1 \
        --image-size 1024 --height 256 --width 1600 --skip-float16

Measured (SAM2.1 tiny, random weights, 1600x256 strips at 1024 px, batch 2, one torch thread while another job used
the second core; the two commands above, run before the fetch timer and `d` were made direct, figures re-derived
from their printed epoch times):
N=16, 80 steps: store 303.2 s (16 encoder images, 256 MiB on disk), re-encode 753.4 s (160), 2.48x, identical
adapters; e = 3.008 s, d = 3.156 s (epochs 2-10) -> limit 2.44x (102% of it). Breakdown: fetch read ~18 ms, decoder
forward 2018 ms (LoRA dropout 531 ms), upsampling 4 ms, loss 11 ms, backward/optimizer/rest 1137 ms.
N=200, 1000 steps (extrapolated): store 2728.2 s (200 encoder images, 3200 MiB; epochs 818.5, 212.2 s), re-encode
7540.9 s (2000; epoch 754.1 s), 2.76x; e = 2.745 s, d = 2.122 s -> limit 2.85x (97% of it), 3.59x for many epochs.
Earlier, with `--sizes 8 16 --epochs 3` at 128 px under a load of about 8: float16 store vs float32 (evaluation,
8 images, random weights): max |probability difference| 1.06e-05, mIoU 0.515841 vs 0.515840.
"""
import argparse
import collections
import os
import tempfile
import time

import numpy as np
import torch

import defect_sam.models.sam.inference as sam
import defect_sam.training.loop as tr
from defect_sam.data.load import load_dataset
from defect_sam.evaluation.evaluate import evaluate
from defect_sam.models.registry import build_model

T = collections.defaultdict(float)


def timed(owner, name, key):
    f = getattr(owner, name)
    def g(*a, **k):
        t0 = time.perf_counter()
        try: return f(*a, **k)
        finally: T[key] += time.perf_counter() - t0
    setattr(owner, name, g)


timed(sam.SamSegmenter, '_features', 'fetch')


def _split_fetch():
    "Time the calls of `_features` that ran no encoder apart ('fetch (read)'): a pure read of stored features."
    f = sam.SamSegmenter._features
    def g(self, *a, **k):
        n, t0 = self.encoder_images, time.perf_counter()
        try: return f(self, *a, **k)
        finally:
            if self.encoder_images == n: T['fetch (read)'] += time.perf_counter() - t0; T['reads'] += 1
    sam.SamSegmenter._features = g


_split_fetch()
timed(sam.SamImageModule, 'forward', 'decoder forward')
timed(sam, 'upsample_logits', 'upsampling')
timed(tr, 'segmentation_losses', 'loss')
timed(torch.nn.Dropout, 'forward', 'LoRA dropout')   # the adapters' input dropout (SAM2's decoder has none in training)


def run(data, a, out, epochs, **kw):
    "Train for `epochs` epochs; (loop seconds, per-epoch loop seconds, encoder images, timers, steps, last weights, model)."
    m = build_model('sam2_lora', size=a.size, weights='random', image_size=a.image_size, device=a.device, lora_strategy='decoder',
                    cache_bytes=0, **kw)
    per = len(data) // a.batch_size
    steps = epochs * per
    cfg = tr.TrainConfig(steps=steps, batch_size=a.batch_size, lr=1e-4, val_every=None, ckpt_every=steps, log_every=per,
                         augment=None, progress=False)
    T.clear()
    res = tr.train(m, data, None, cfg, out)
    t = res.history[res.history.kind == 'train'].time_s.to_numpy()          # loop time at the end of each epoch
    ep = np.diff(np.concatenate([[0.0], t]))
    return float(t[-1]), ep, m.encoder_images, dict(T), steps, tr.read_checkpoint(res.last_checkpoint)['model'], m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--sizes', type=int, nargs='+', default=[16, 64], help='training images N')
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--measure-epochs', type=int, default=None,
                    help='epochs the store run really trains (>= 2; default --epochs); later epochs are extrapolated from its 2nd..last')
    ap.add_argument('--reencode-epochs', type=int, default=None,
                    help='epochs the re-encoding run really trains (default --measure-epochs); all its epochs cost the same')
    ap.add_argument('--batch-size', type=int, default=2)
    ap.add_argument('--image-size', type=int, default=128, help='SAM2 input side (1024 as trained)')
    ap.add_argument('--height', type=int, default=64, help='strip height (width = 4 x height)')
    ap.add_argument('--width', type=int, default=None, help='strip width (default 4 x height; Severstal: 1600 x 256)')
    ap.add_argument('--size', default='tiny')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--skip-float16', action='store_true', help='skip the float16-vs-float32 evaluation check')
    a = ap.parse_args()
    E = a.epochs
    Ks = min(a.measure_epochs or E, E)
    Kr = min(a.reencode_epochs or Ks, E)
    if Ks < E and Ks < 2: raise SystemExit('--measure-epochs must be >= 2 to extrapolate (epoch 1 encodes, later ones read)')
    W = a.width or 4 * a.height
    print(f"SAM2.1 {a.size} (random weights), image_size {a.image_size}, strips {W}x{a.height}, {E} epochs, "
          f"batch {a.batch_size}, memory tier off, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    if Ks < E or Kr < E:
        print(f"  measured: store {Ks} epochs, re-encode {Kr}; {E}-epoch times EXTRAPOLATED: store = epoch 1 + {E - 1} x mean of "
              f"epochs 2..{Ks}, re-encode = {E} x its mean epoch")
    with tempfile.TemporaryDirectory() as d:
        os.environ.setdefault('DEFECT_SAM_CACHE', f'{d}/cache')
        warm = load_dataset('synthetic', n_images=a.batch_size, seed=2, height=a.height, width=W, binary=True)
        run(warm, a, f'{d}/warm', 1)                   # first-call costs (allocator, kernels) off the clock
        for n in a.sizes:
            if n % a.batch_size: raise SystemExit(f'N={n} must be a multiple of the batch size {a.batch_size}')
            data = load_dataset('synthetic', n_images=n, seed=0, height=a.height, width=W, binary=True)
            ls, eps, es, bs, steps, ws, m = run(data, a, f'{d}/s{n}', Ks, disk_cache=f'{d}/store{n}', disk_cache_dtype='float32')
            lu, epu, eu, bu, _, wu, _ = run(data, a, f'{d}/u{n}', Kr)
            same = all(torch.equal(ws[k], wu[k]) for k in ws) if Ks == Kr else None
            e = bu['fetch'] / eu                                   # encoder seconds per image (re-encoding run)
            fetch_read = bs.get('fetch (read)', 0.0) / max(bs.get('reads', 0), 1)   # a step's read of stored features (no encoder call)
            per = n // a.batch_size
            d_ = (float(np.mean(eps[1:])) / per if Ks >= 2         # a store step without encoding: measured in epochs 2.. (reads only)
                  else (ls - bs['fetch']) / steps + fetch_read)    # else estimated from the timers
            ts = ls if Ks == E else eps[0] + (E - 1) * float(np.mean(eps[1:]))
            tu = lu if Kr == E else E * float(np.mean(epu))
            S = E * per
            lim = S * (d_ + a.batch_size * e) / (S * d_ + n * e)
            x = '' if (Ks == E and Kr == E) else ' (extrapolated)'
            print(f"N={n}: {S} steps over {E} epochs")
            print(f"  store:     {ts:7.1f} s{x}, {es:4d} encoder images ({m.cache.store.info()['bytes'] / 2**20:.1f} MiB on disk); "
                  f"epochs measured: {', '.join(f'{v:.1f}' for v in eps)} s")
            print(f"  re-encode: {tu:7.1f} s{x}, {E * n if Kr < E else eu:4d} encoder images; epochs measured: "
                  f"{', '.join(f'{v:.1f}' for v in epu)} s" + ('' if same is None else f"    identical adapters: {same}"))
            print(f"  ratio {tu / ts:.2f}x; encoder {e:.3f} s/image, step without encoding {d_:.3f} s -> limit {lim:.2f}x "
                  f"for {E} epochs ({tu / ts / lim:.0%} of it), {(d_ + a.batch_size * e) / d_:.2f}x for many epochs")
            parts = {'feature fetch (read)': fetch_read, **{k: bs[k] / steps for k in ('decoder forward', 'upsampling', 'loss')}}   # per step, all epochs
            parts['backward, optimizer, rest'] = d_ - sum(parts.values())
            print('  store step breakdown: ' + ', '.join(f'{k} {1000 * v:.0f} ms' for k, v in parts.items()) +
                  f" (the decoder forward includes LoRA dropout {1000 * bs.get('LoRA dropout', 0.0) / steps:.0f} ms)")
            if same is False: raise SystemExit('the store and re-encoding runs differ')
        if a.skip_float16: return
        data = load_dataset('synthetic', n_images=a.sizes[0], seed=1, height=a.height, width=W, binary=True)
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
