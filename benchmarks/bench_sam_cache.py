"""SamSegmenter's encoder-embedding cache and wrapper overhead, against sam2's own SAM2ImagePredictor, side by side.

1. N synthetic 1600x256 strips x 4 prompt strategies (box, 1, 3 and 5 points): SamSegmenter (one encoder run per
   image, reused by the four strategies) vs the plain way, `set_image` + `predict` once per strategy.
2. One image, one box, the encoder running in both: SamSegmenter with its cache off vs `set_image` + `predict`,
   repetitions interleaved, medians compared (target: overhead <= 5%).

Both use the same SAM2Base module (random weights: timing does not depend on weight values) at the full input size,
under torch.inference_mode. Prompt positions come from the synthetic masks; their content does not affect timing.

    python benchmarks/bench_sam_cache.py [--n 4] [--reps 5] [--size tiny] [--image-size 1024] [--device cpu]
"""
import argparse
import statistics
import time

import numpy as np
import torch

from defect_sam.models.sam.inference import SamSegmenter
from defect_sam.data.synthetic import synth_strip


def strips(n, seed=0):
    "Synthetic strips with one defect each (classes in turn) and its mask."
    out = []
    for k in range(n):
        c = k % 4 + 1
        gray, m = synth_strip(np.random.default_rng([seed, k]), (c,), 256, 1600)
        out.append((np.repeat(gray[..., None], 3, 2), m == c))             # RGB, as the dataset readers give it
    return out


def strategies(mask, rng):
    "Box, 1, 3 and 5 positive points (as SamSegmenter keywords and as SAM2ImagePredictor arguments)."
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
    pick = rng.choice(len(xs), 5, replace=len(xs) < 5)
    pts = np.stack([xs[pick], ys[pick]], 1).astype(np.float32)
    ours = [dict(boxes=box[None])] + [dict(points=pts[None, :k]) for k in (1, 3, 5)]
    plain = [dict(box=box)] + [dict(point_coords=pts[:k], point_labels=np.ones(k, np.int64)) for k in (1, 3, 5)]
    return ours, plain


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--n', type=int, default=4, help='images for the cache comparison')
    ap.add_argument('--reps', type=int, default=5, help='interleaved repetitions for the overhead comparison')
    ap.add_argument('--size', default='tiny')
    ap.add_argument('--image-size', type=int, default=1024)
    ap.add_argument('--device', default='cpu')
    a = ap.parse_args()
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    seg = SamSegmenter(a.size, weights='random', image_size=a.image_size, device=a.device, output='token0')   # as the predictor below: multimask_output=False
    nocache = SamSegmenter(a.size, weights='random', image_size=a.image_size, device=a.device, cache_bytes=0, output='token0')
    nocache.model = seg.model; nocache._module = seg._module                  # one model for all three
    pred = SAM2ImagePredictor(seg.model)
    data = strips(a.n)
    rng = np.random.default_rng(0)
    prompts = [strategies(m, rng) for _, m in data]
    sync = (lambda: torch.cuda.synchronize()) if a.device.startswith('cuda') else (lambda: None)
    print(f'SAM2.1 {a.size}, image_size {a.image_size}, {a.device}, torch threads {torch.get_num_threads()}; '
          f'{a.n} images of 1600x256 x 4 strategies')

    with torch.inference_mode():
        img0, _ = data[0]                                                    # warm-up (allocator, kernels)
        pred.set_image(img0); pred.predict(**prompts[0][1][0], multimask_output=False)
        seg.predict(img0, **prompts[0][0][0]); seg.clear_cache()

        # where a prediction's time goes, for reference (medians of 3)
        encs, decs = [], []
        for _ in range(3):
            t = time.perf_counter(); pred.set_image(img0); sync(); encs.append(time.perf_counter() - t)
            t = time.perf_counter()
            for kw in prompts[0][1]: pred.predict(**kw, multimask_output=False)
            sync(); decs.append((time.perf_counter() - t) / 4)
        enc, dec = statistics.median(encs), statistics.median(decs)
        print(f'sam2 predictor: set_image {enc:.3f} s, predict {dec:.3f} s per prompt set '
              f'({100 * enc / (enc + dec):.1f}% of a one-prompt prediction in the encoder)')

        # 1. four strategies per image; the two ways alternate image by image (and which goes first), so that both
        #    see the same machine load
        seg.clear_cache(); i0 = seg.cache_info()
        t_plain = t_ours = 0.0
        for k, ((img, _), (ours, plain)) in enumerate(zip(data, prompts)):
            for w in ([0, 1] if k % 2 == 0 else [1, 0]):
                t = time.perf_counter()
                if w == 0:
                    for kw in plain: pred.set_image(img); pred.predict(**kw, multimask_output=False)
                else:
                    for kw in ours: seg.predict(img, **kw)
                sync(); dt = time.perf_counter() - t
                if w == 0: t_plain += dt
                else: t_ours += dt
        ci = seg.cache_info()
        print(f'\n[1] {a.n} images x 4 strategies')
        print(f'  SAM2ImagePredictor, set_image per strategy: {t_plain:8.2f} s  ({t_plain / a.n:.2f} s/image)')
        print(f'  SamSegmenter with embedding cache:          {t_ours:8.2f} s  ({t_ours / a.n:.2f} s/image; '
              f'encoder ran on {ci["encoder_images"] - i0["encoder_images"]} images, '
              f'{ci["hits"] - i0["hits"]} hits / {ci["misses"] - i0["misses"]} misses)')
        print(f'  speed-up: {t_plain / t_ours:.2f}x  (expected from the encoder/decoder split above: '
              f'{4 * (enc + dec) / (enc + 4 * dec):.2f}x)')

        # 2. wrapper overhead, encoder running in both, interleaved repetitions
        img, _ = data[0]
        ours_kw, plain_kw = prompts[0][0][0], prompts[0][1][0]
        tp, to = [], []
        for r in range(a.reps):
            order = [0, 1] if r % 2 == 0 else [1, 0]
            for w in order:
                t = time.perf_counter()
                if w == 0: pred.set_image(img); pred.predict(**plain_kw, multimask_output=False)
                else: nocache.predict(img, **ours_kw)
                sync(); (tp if w == 0 else to).append(time.perf_counter() - t)
        mp, mo = statistics.median(tp), statistics.median(to)
        print(f'\n[2] one image, one box, encoder in both ({a.reps} interleaved repetitions, medians)')
        print(f'  SAM2ImagePredictor set_image + predict: {mp:.3f} s  (runs: {", ".join(f"{x:.3f}" for x in tp)})')
        print(f'  SamSegmenter.predict, cache off:        {mo:.3f} s  (runs: {", ".join(f"{x:.3f}" for x in to)})')
        print(f'  overhead: {100 * (mo / mp - 1):+.1f}%  (target <= 5%)')


if __name__ == '__main__':
    main()
