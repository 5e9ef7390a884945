#!/usr/bin/env python
"""Pretrain a *proxy* SAM2.1-tiny from random weights, where the official checkpoint cannot be downloaded.

It trains with the package's own loop (`defect_sam.training.loop.train`, full fine-tuning of the image path) on a generic
promptable-segmentation corpus generated on the fly: several non-overlapping objects per image (ellipses, rotated
rectangles, star polygons, rings, thick curves), each a colour whose luminance differs from what it covers by 0.15-0.7
(hue free) with its own texture on top (flat, gradient, stripes, checker, smooth noise, amplitude up to 0.4), on a
textured background (amplitude 0.1-0.6); sometimes blurred, always a little noise; about one image in ten holds no
object. It is not the package's defect generator (`synthetic`) and shares no image with any evaluation set.

It trains on every input a SAM2 is later given, as sam2's own trainer samples them: per image a box (half the time) or
1, 3 or 5 points (`--prompt mixed`, the loop's `MIXED_PROMPTS`), then `--correction-iters` corrective clicks drawn
uniformly from the error with the previous mask as input (sam2: 7); images without an object get a random prompt whose
answer is "nothing", which trains the object-score head; the loss is sam2's (`--loss sam2`: focal 20, Dice 1, IoU 1,
object score 1, the lowest-loss of the three masks for a one-point prompt).

What mattered (probes of 300-400 steps, batch 4, 128 px, held-out box mIoU from 0.20-0.23 at random init): the
corpus's contrast. With each object a random blend (alpha 0.35-1) of two random colours over a random texture, many
objects were nearly invisible and nothing was learned (0.196 -> 0.187 at lr 3e-4 in 400 steps; 0.094 with lr 1e-3 and
the sam2 loss); with every object standing out from what it covers by a luminance step of at least 0.25, 300 steps
reached 0.795 (lr 3e-4) and 0.791 (lr 1e-3). The proxy the benchmarks use keeps that rule with a wider range
(0.15-0.7) and stronger textures, and trains longer.

    python tools/pretrain_proxy.py --steps 1800             # the proxy the benchmarks use (cached)
    python tools/pretrain_proxy.py --minutes 2 --out /tmp/p  # a weak proxy for a quick check

The run resumes when interrupted (same --out and options): the plan (steps from the time budget, measured once) is
kept in `plan.json`, the training state in `last.torch`. The result is `sam2.1_tiny_proxy.pt`, an official-format
checkpoint (`{"model": state_dict}`) that `weights=<path>` loads strictly at any `sam2_image_size`, and `proxy.json`
with, on held-out generated images before and after: the zero-shot mIoU per prompt kind (box, points_1, points_3,
points_5; the oracle protocol of `evaluate`, 64 images), and on 400 held-out images the object-score AUROC of a box on
each object against a random box on each defect-free image (what the head is trained for, as in sam2) and, apart,
against a random box on the background of an image with objects (never a training target). A number from this model
is a proxy-pretrained number: say so wherever it appears.

Measured (`python tools/pretrain_proxy.py --steps 1800 --device cpu`, one torch thread, about 70 min
beside other jobs, resumed once): held-out zero-shot mIoU
box 0.233 -> 0.387, points_1 0.230 -> 0.441, points_3 0.229 -> 0.439, points_5 0.232 -> 0.430; object-score AUROC
against boxes on defect-free images 0.408 -> 1.000 (1,232 object prompts, 32 on clean images; every object prompt
scored positive, every clean one not), against boxes on the background of images with objects 0.490 -> 0.469 (not
learned, and not trained: sam2 has no such negative either). The box-only proxy of before (3000 steps, Dice + focal,
no empty images, no clicks) reached box mIoU 0.859: the mixed prompts, corrective clicks and the sam2 loss learn
masks more slowly per step on this corpus, and 1,800 steps were what the session's budget allowed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

OUT_NAME = 'sam2.1_tiny_proxy.pt'


# ---- the corpus ----------------------------------------------------------------------------------------------------
def _texture(rng, h, w):
    "An h x w x 3 float texture in [0, 1]: flat, gradient, stripes, checker or smooth noise, in two random colours."
    a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    kind = rng.integers(5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0: t = np.zeros((h, w), np.float32)
    elif kind == 1:
        th = rng.uniform(0, np.pi)
        t = np.cos(th) * xx + np.sin(th) * yy
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
    elif kind == 2:
        th, f = rng.uniform(0, np.pi), rng.uniform(0.05, 0.5)
        t = 0.5 + 0.5 * np.sin(f * (np.cos(th) * xx + np.sin(th) * yy))
    elif kind == 3:
        s = int(rng.integers(3, 16))
        t = (((xx // s) + (yy // s)) % 2).astype(np.float32)
    else:
        n = rng.normal(size=(h, w)).astype(np.float32)
        t = cv2.GaussianBlur(n, (0, 0), float(rng.uniform(1, 8)))
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
    out = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    return np.clip(out + rng.normal(0, rng.uniform(0, 0.05), (h, w, 3)), 0, 1)


def _shape(rng, h, w):
    "One object's mask: ellipse, rotated rectangle, star polygon, ring or thick curve, of random size and width."
    m = np.zeros((h, w), np.uint8)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    r = rng.uniform(0.05, 0.3) * min(h, w)
    kind = rng.integers(5)
    if kind == 0:
        cv2.ellipse(m, (int(cx), int(cy)), (max(int(r), 2), max(int(r * rng.uniform(0.2, 1)), 2)), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 1:
        box = cv2.boxPoints(((cx, cy), (r * rng.uniform(0.5, 2), r * rng.uniform(0.1, 1)), float(rng.uniform(0, 180))))
        cv2.fillPoly(m, [box.astype(np.int32)], 1)
    elif kind == 2:
        k = int(rng.integers(3, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = r * rng.uniform(0.3, 1, k)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
        cv2.fillPoly(m, [pts], 1)
    elif kind == 3:
        cv2.circle(m, (int(cx), int(cy)), max(int(r), 3), 1, max(int(r * rng.uniform(0.15, 0.5)), 1))
    else:
        n = int(rng.integers(3, 8))
        steps = rng.normal(0, r * 0.6, (n, 2)).cumsum(0) + (cx, cy)
        cv2.polylines(m, [steps.astype(np.int32)], False, 1, int(rng.integers(2, max(3, int(r * 0.4)))))
    return m.astype(bool)


def _contrasting(rng, ref):
    "A colour whose luminance differs from `ref`'s by 0.15-0.7 (up or down, as room allows), hue free."
    lum = float(ref.mean())
    d = rng.uniform(0.15, 0.7)
    sign = 1 if lum + d <= 1 and (lum - d < 0 or rng.uniform() < 0.5) else -1
    target = np.clip(lum + sign * d, 0, 1)
    c = np.clip(target + rng.normal(0, 0.12, 3), 0, 1)
    return c - c.mean() + target                                  # keep the luminance step, vary the hue


def proxy_sample(sid: str, size: int = 128, max_objects: int = 6):
    "The generated image (uint8 RGB) and binary mask of sample id `sid` (a pure function of the id)."
    from defect_sam.data.sample import Sample
    rng = np.random.default_rng(int(hashlib.sha1(sid.encode()).hexdigest()[:12], 16))
    h = w = size
    img = _texture(rng, h, w)
    img = img.mean((0, 1), keepdims=True) + rng.uniform(0.1, 0.6) * (img - img.mean((0, 1), keepdims=True))   # a quiet background
    mask = np.zeros((h, w), bool)
    n = 0 if rng.uniform() < 0.1 else int(rng.integers(1, max_objects + 1))
    for _ in range(n * 4):                                         # non-overlapping objects: one component each
        m = _shape(rng, h, w)
        if m.sum() < 30 or (cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & mask).any(): continue
        col = _contrasting(rng, img[m].mean(0))                   # the object stands out from what it covers
        tex = _texture(rng, h, w)
        fill = col[None, None] + rng.uniform(0, 0.4) * (tex - tex.mean((0, 1), keepdims=True))
        img[m] = np.clip(fill[m], 0, 1)
        mask |= m
        n -= 1
        if n == 0: break
    if rng.uniform() < 0.3: img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), float(rng.uniform(0.5, 1.5)))
    img = np.clip(img + rng.normal(0, rng.uniform(0, 0.04), img.shape), 0, 1)
    return Sample(sid, (img * 255).astype(np.uint8), mask.astype(np.uint8), {'source': 'proxy-corpus'})


def proxy_corpus(split: str, n: int, size: int = 128):
    "A `DefectDataset` of `n` generated images; `split` ('train' or 'heldout') namespaces the ids."
    from defect_sam.data.sample import DefectDataset
    ids = [f'proxy-{split}-{i:06d}' for i in range(n)]
    return DefectDataset(ids, lambda sid: proxy_sample(sid, size), ['background', 'object'], name=f'proxy-{split}', binary=True)


# ---- the run -------------------------------------------------------------------------------------------------------
KINDS = ('box', 'points_1', 'points_3', 'points_5')


def _zero_shot(seg, ds) -> dict:
    "Held-out mIoU per prompt kind (the evaluation's oracle prompts, seed 0)."
    from defect_sam.evaluation.evaluate import evaluate
    return {k: float(evaluate(seg, ds, prompt=k, seed=0, progress=False).summary['mIoU']) for k in KINDS}


def object_score_auroc(seg, ds, seed: int = 0) -> dict:
    """AUROC of the object score, a box on each object (positive) against a random box
    - on each defect-free image (`object_score_auroc`): what the head is trained for, as in sam2, where a prompt with no
      object is a prompt on a frame (here an image) that holds none;
    - on the background of each image with objects (`object_score_auroc_background`): never a training target, so
      no claim; recorded so that nobody reads the first figure as this one."""
    from sklearn.metrics import roc_auc_score
    from defect_sam.evaluation.prompts import boxes_from_mask
    rng = np.random.default_rng(seed)
    pos, clean, bg = [], [], []
    for s in ds:
        H, W = s.mask.shape
        for _ in range(50):                                     # a random box that touches no object (a few tries)
            w, h = rng.uniform(0.1, 0.5) * W, rng.uniform(0.1, 0.5) * H
            x0, y0 = rng.uniform(0, W - w), rng.uniform(0, H - h)
            b = np.array([x0, y0, x0 + w, y0 + h], np.float32)
            if not s.mask[int(y0):int(y0 + h) + 1, int(x0):int(x0 + w) + 1].any(): break
        else: b = None
        objs = boxes_from_mask(s.mask, min_area=10)
        boxes = list(objs) + ([b] if b is not None else [])
        if not boxes: continue
        sc = seg.predict_prompts(s.image, boxes=np.stack(boxes))['object_score'].tolist()
        pos += sc[:len(objs)]
        if b is not None: (bg if len(objs) else clean).append(sc[-1])
    auc = lambda neg: float(roc_auc_score([1] * len(pos) + [0] * len(neg), pos + neg)) if pos and neg else float('nan')
    return {'object_score_auroc': auc(clean), 'object_score_auroc_background': auc(bg), 'prompts_with_object': len(pos),
            'prompts_on_clean_images': len(clean), 'prompts_on_background': len(bg),
            'object_prompts_scored_positive': float(np.mean(np.array(pos) > 0)) if pos else float('nan'),
            'clean_prompts_scored_positive': float(np.mean(np.array(clean) > 0)) if clean else float('nan')}


def pretrain(out: Path, minutes: float, image_size: int = 128, batch_size: int = 4, lr: float = 3e-4, n_images: int = 50000,
             prompt: str = 'mixed', loss: str = 'sam2', correction_iters: int = 3, seed: int = 0, eval_images: int = 64,
             auroc_images: int = 400,
             device: str = 'auto', steps: int | None = None, progress: bool = True) -> dict:
    "Pretrain (or resume, or reuse) the proxy; returns what proxy.json records."
    from defect_sam.core.errors import ConfigError
    from defect_sam.core.io import torch_save_atomic, write_json_atomic
    from defect_sam.models.sam.inference import SamSegmenter, build_sam2
    from defect_sam.training.loop import TrainConfig, train
    out.mkdir(parents=True, exist_ok=True)
    args = dict(image_size=image_size, batch_size=batch_size, lr=lr, n_images=n_images, prompt=prompt, loss=loss,
                correction_iters=correction_iters, seed=seed, minutes=minutes, steps=steps)
    done, plan_p = out/'proxy.json', out/'plan.json'
    if done.exists() and (out/OUT_NAME).exists() and json.loads(done.read_text())['args'] == args:
        rec = json.loads(done.read_text())
        print(f"cached: {out/OUT_NAME} (zero-shot box mIoU {rec['heldout_mIoU_before']:.3f} -> {rec['heldout_mIoU_after']:.3f})")
        return rec
    heldout = proxy_corpus('heldout', eval_images, image_size)
    scored = proxy_corpus('heldout', auroc_images, image_size)   # 400: ~40 defect-free images for the AUROC
    mk = lambda: build_sam2('full', 'tiny', 'random', device, image_size=image_size, seed=seed, cache_bytes=0)
    cfg = lambda n: TrainConfig(steps=n, batch_size=batch_size, lr=lr, warmup_ratio=0.05, min_lr_ratio=0.1, seed=seed,
                                val_every=None, ckpt_every=25, log_every=10, augment=None, prompt=prompt, prompt_jitter=0.1,
                                loss=loss, correction_iters=correction_iters, progress=progress, weight_decay=0.05)
    corpus = proxy_corpus('train', n_images, image_size)
    if plan_p.exists():
        plan = json.loads(plan_p.read_text())
        if plan['args'] != args:
            raise ConfigError(f"{out} holds a proxy run with other options {plan['args']}; use another --out or the same options")
    else:
        seg = mk()
        before = {**_zero_shot(seg, heldout), **object_score_auroc(seg, scored)}
        if steps is None:                                               # measure the step time once, then fix the plan
            t0 = time.perf_counter()
            train(seg, corpus, None, cfg(3), out/'probe', resume=False)
            per = (time.perf_counter() - t0) / 3
            steps = max(int(minutes * 60 / per), 1)
        plan = {'args': args, 'steps': steps, 'before': before}
        write_json_atomic(plan_p, plan)
    if 'object_score_auroc_background' not in plan['before']:          # a plan from before the two AUROCs: score the random init again
        plan['before'] |= object_score_auroc(mk(), scored)
        write_json_atomic(plan_p, plan)
    seg = mk()
    t0 = time.perf_counter()
    res = train(seg, corpus, None, cfg(plan['steps']), out/'train', resume=True)
    torch_save_atomic({'model': {k: v.detach().cpu() for k, v in seg.model.state_dict().items()}}, out/OUT_NAME)
    check = SamSegmenter('tiny', weights=str(out/OUT_NAME), device=device, image_size=image_size, cache_bytes=0)   # strict load
    after = {**_zero_shot(check, heldout), **object_score_auroc(check, scored)}
    hist = res.history[res.history.kind == 'train']
    rec = {'checkpoint': str(out/OUT_NAME), 'args': args, 'steps': res.steps, 'image_size': image_size,
           'train_time_s': time.perf_counter() - t0, 'heldout_images': eval_images, 'before': plan['before'], 'after': after,
           'heldout_mIoU_before': plan['before']['box'], 'heldout_mIoU_after': after['box'],
           'final_loss': float(hist.loss.iloc[-1]) if len(hist) else None,
           'note': 'proxy-pretrained SAM2.1-tiny, not the official weights; zero-shot mIoU with the oracle prompts of evaluate'}
    write_json_atomic(done, rec)
    print(f"{out/OUT_NAME}: {res.steps} steps at {image_size} px (PROXY-PRETRAINED, not the official weights); held-out zero-shot mIoU "
          + ', '.join(f"{k} {plan['before'][k]:.3f} -> {after[k]:.3f}" for k in KINDS)
          + f"; object-score AUROC against boxes on defect-free images {plan['before']['object_score_auroc']:.3f} -> "
          f"{after['object_score_auroc']:.3f} ({after['prompts_with_object']} object prompts, {after['prompts_on_clean_images']} on "
          f"clean images; positive scores: objects {after['object_prompts_scored_positive']:.2f}, clean "
          f"{after['clean_prompts_scored_positive']:.2f}); against boxes on the background of images with objects (never a "
          f"training target) {plan['before']['object_score_auroc_background']:.3f} -> {after['object_score_auroc_background']:.3f}")
    return rec


def main(argv=None):
    from defect_sam.core.io import cache_dir
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--minutes', type=float, default=50, help='training budget (the step count is fixed from it once)')
    p.add_argument('--steps', type=int, default=None, help='a fixed step count instead of the time budget')
    p.add_argument('--out', type=Path, default=None, help="folder (default: cache_dir('proxy')/tiny_<image size>)")
    p.add_argument('--image-size', type=int, default=128)
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--lr', type=float, default=3e-4)
    p.add_argument('--n-images', type=int, default=50000, help='generated training images (ids; drawn on the fly)')
    p.add_argument('--prompt', default='mixed', choices=['mixed', 'box', 'points_1', 'points_3', 'points_5'])
    p.add_argument('--loss', default='sam2', choices=['sam2', 'dice_focal'])
    p.add_argument('--correction-iters', type=int, default=3, help='corrective clicks per training prompt (sam2: 7)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--eval-images', type=int, default=64, help='held-out images of the zero-shot mIoU per prompt kind')
    p.add_argument('--auroc-images', type=int, default=400, help='held-out images of the object-score AUROC (a tenth are defect-free)')
    p.add_argument('--device', default='auto')
    a = p.parse_args(argv)
    out = a.out or cache_dir('proxy')/f'tiny_{a.image_size}'
    pretrain(out, a.minutes, image_size=a.image_size, batch_size=a.batch_size, lr=a.lr, n_images=a.n_images, prompt=a.prompt,
             loss=a.loss, correction_iters=a.correction_iters, seed=a.seed, eval_images=a.eval_images,
             auroc_images=a.auroc_images, device=a.device, steps=a.steps)


if __name__ == '__main__':
    sys.exit(main())
