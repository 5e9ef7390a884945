"""Decoder-only LoRA training of SAM2 through `defect_sam.training.loop.train`, with the embedding cache vs without.

The same N synthetic strips for E epochs (no augmentation, so every epoch shows the encoder the same images), SAM2.1
with random weights (timing does not depend on the weight values), LoRA `decoder` strategy (frozen encoder):

- cached: the default SamSegmenter; the encoder runs once per image, later epochs read the in-memory float32 cache;
- uncached: `cache_bytes=0`; the encoder runs on every image of every step (under no_grad, as with the cache).

Both runs are the same training (seeds, prompts, data order); the script checks they end with identical adapters,
then prints both wall times, the encoder work and the ratio.

    python benchmarks/bench_train_cache.py [--n 8] [--epochs 10] [--batch-size 2] [--image-size 256] [--size tiny]

Measured (2 shared CPU cores, load average about 6 from other jobs; SAM2.1 tiny, image_size 256, 8 strips 512x128,
10 epochs, batch 2 = 40 steps): with cache 164.7 s (8 encoder images), without 282.6 s (80 encoder images), 1.72x,
identical final adapters. The gain grows with the encoder's share of a step: larger SAM2 sizes have larger encoders
and the same mask decoder.
"""
import argparse
import os
import tempfile
import time

import torch

from defect_sam.data.load import load_dataset
from defect_sam.models.registry import build_model
from defect_sam.training.loop import TrainConfig, read_checkpoint, train


def run(data, a, out, **model_kw):
    m = build_model('sam2_lora', size=a.size, weights='random', image_size=a.image_size, device=a.device, **model_kw)
    steps = a.epochs * len(data) // a.batch_size
    cfg = TrainConfig(steps=steps, batch_size=a.batch_size, lr=1e-4, val_every=None, ckpt_every=steps, augment=None,
                      progress=False)
    t0 = time.perf_counter()
    res = train(m, data, None, cfg, out)
    return time.perf_counter() - t0, m.cache_info()['encoder_images'], read_checkpoint(res.last_checkpoint)['model'], steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--n', type=int, default=8, help='training images')
    ap.add_argument('--epochs', type=int, default=10)
    ap.add_argument('--batch-size', type=int, default=2)
    ap.add_argument('--image-size', type=int, default=256, help='SAM2 input side (1024 as trained)')
    ap.add_argument('--height', type=int, default=128, help='strip height (width = 4 x height)')
    ap.add_argument('--size', default='tiny')
    ap.add_argument('--device', default='cpu')
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        os.environ.setdefault('DEFECT_SAM_CACHE', f'{d}/cache')
        data = load_dataset('synthetic', n_images=a.n, seed=0, height=a.height, width=4 * a.height, binary=True)
        t_c, enc_c, w_c, steps = run(data, a, f'{d}/cached')
        t_u, enc_u, w_u, _ = run(data, a, f'{d}/uncached', cache_bytes=0)
    same = all(torch.equal(w_c[k], w_u[k]) for k in w_c)
    print(f"SAM2.1 {a.size}, image_size {a.image_size}, {a.n} strips {4 * a.height}x{a.height}, {a.epochs} epochs, "
          f"batch {a.batch_size}: {steps} steps, torch threads {torch.get_num_threads()}")
    print(f"  with cache:    {t_c:7.1f} s  ({enc_c} encoder images)")
    print(f"  without cache: {t_u:7.1f} s  ({enc_u} encoder images)")
    print(f"  speed-up: {t_u / t_c:.2f}x   identical final adapters: {same}")
    if not same: raise SystemExit('the cached and uncached runs differ')


if __name__ == '__main__':
    main()
