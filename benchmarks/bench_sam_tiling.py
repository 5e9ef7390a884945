"""Plain resize vs tiling for SAM2 on wide strips (synthetic 1600x256 steel, class 2 = scratches).

1. What the mask grid allows (no weights needed): SAM2 predicts masks on an (image_size/4)^2 grid laid over the
   resized image (or over each tile) and upsamples it bilinearly. For every defect (connected component of a class
   mask) we build the best such grid from the ground truth itself (`lowres_oracle_iou`: cell coverage minus a
   threshold, upsampled exactly as SAM2 does, best threshold) and report its IoU with the defect, per class, for plain
   resize and for tiles. Scratches are also split by orientation (flat: < 10 degrees from horizontal).
2. What tiling costs: image-encoder runs and wall time per image, one box prompt per defect, cold cache (random
   weights; timing does not depend on weight values).
3. With real weights (`--weights auto` or a checkpoint path): the IoU of SAM2's actual predictions (box prompts from
   the ground truth, `prompts.boxes_from_mask`, threshold 0.5) for each geometry. With the default `--weights random` this part is skipped:
   a random model's IoU says nothing.

    python benchmarks/bench_sam_tiling.py [--n 100] [--n-time 3] [--weights random|auto|PATH] [--size tiny]
"""
import argparse
import time

import cv2
import numpy as np
import torch

from defect_sam.data.load import load_dataset
from defect_sam.evaluation.metrics import confusion_counts, iou_score
from defect_sam.evaluation.prompts import boxes_from_mask
from defect_sam.models.sam.inference import SamSegmenter
from defect_sam.models.sam.tiling import lowres_oracle_iou

GEOMETRIES = {'resize': None, 'tile 256/32': dict(tile=256, overlap=32), 'tile 512/64': dict(tile=512, overlap=64)}


def components(mask):
    "Connected components (8-connectivity) of a binary mask: list of (component mask, angle in degrees from horizontal)."
    n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    out = []
    for k in range(1, n):
        comp = lab == k
        ys, xs = np.nonzero(comp)
        ang = 0.0
        if len(xs) > 2:
            v = np.linalg.eigh(np.cov(np.stack([xs, ys]).astype(float)))[1][:, -1]    # principal axis
            ang = abs(np.degrees(np.arctan2(v[1], v[0]))); ang = min(ang, 180 - ang)
        out.append((comp, ang))
    return out


def iou(pred, gt): return float(iou_score(*confusion_counts(pred, gt)[0]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--n', type=int, default=100, help='synthetic images for the oracle (and the real-weights IoU)')
    ap.add_argument('--n-time', type=int, default=3, help='images with scratches for the compute-cost timing')
    ap.add_argument('--weights', default='random', help="random (oracle and cost only), auto, or a checkpoint path")
    ap.add_argument('--size', default='tiny')
    ap.add_argument('--image-size', type=int, default=1024)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--seed', type=int, default=42)
    a = ap.parse_args()
    ds = load_dataset('synthetic', n_images=a.n, seed=a.seed)
    names = ds.classes
    print(f'synthetic set: {len(ds)} strips {ds[0].image.shape[1]}x{ds[0].image.shape[0]}, classes {names[1:]}; '
          f'SAM2 input {a.image_size} (mask grid {a.image_size // 4}^2)')

    # 1. oracle IoU per defect
    rows = []
    for s in ds:
        for c in s.classes_present():
            for comp, ang in components(s.mask == c):
                rows.append(dict(cls=c, ang=ang, **{g: lowres_oracle_iou(comp, a.image_size, t) for g, t in GEOMETRIES.items()}))
    print(f'\n[1] best IoU the low-res mask grid allows (oracle), mean over defects')
    head = f'  {"defects":<28}{"n":>5}' + ''.join(f'{g:>14}' for g in GEOMETRIES)
    print(head)
    groups = [(names[c], lambda r, c=c: r['cls'] == c) for c in range(1, len(names))]
    groups += [('scratches, flat (<10 deg)', lambda r: r['cls'] == 2 and r['ang'] < 10),
               ('scratches, oblique (>=10 deg)', lambda r: r['cls'] == 2 and r['ang'] >= 10)]
    for name, f in groups:
        sel = [r for r in rows if f(r)]
        if sel: print(f'  {name:<28}{len(sel):>5}' + ''.join(f'{np.mean([r[g] for r in sel]):>14.3f}' for g in GEOMETRIES))

    # 2. compute cost
    timed = [s for s in ds if 2 in s.classes_present()][:a.n_time]
    print(f'\n[2] cost per image, one box per defect, cold cache ({len(timed)} images with scratches, '
          f'{a.size}, random weights, {a.device})')
    seg = SamSegmenter(a.size, weights='random', image_size=a.image_size, device=a.device)
    with torch.inference_mode():
        seg.predict(timed[0].image, boxes=[[0, 0, 10, 10]])                    # warm-up
        for g, t in GEOMETRIES.items():
            seg.tiling = None if t is None else dict(t, blend='mean')
            seg.clear_cache(); e0 = seg.encoder_images
            t0 = time.perf_counter()
            for s in timed:
                boxes = boxes_from_mask(s.mask > 0)
                if len(boxes): seg.predict(s.image, boxes=boxes)
            dt = (time.perf_counter() - t0) / len(timed)
            print(f'  {g:<14} encoder runs/image {(seg.encoder_images - e0) / len(timed):5.2f}   time/image {dt:6.2f} s')

    # 3. real IoU with trained weights
    if a.weights == 'random':
        print('\n[3] skipped: random weights (pass --weights auto or a checkpoint path for SAM2\'s real IoU per geometry)')
        return
    print(f'\n[3] SAM2.1 {a.size} ({a.weights}) zero-shot, box prompt per defect from the ground truth, threshold 0.5: '
          f'mean IoU per image and class')
    res = {g: {} for g in GEOMETRIES}
    for g, t in GEOMETRIES.items():
        seg = SamSegmenter(a.size, weights=a.weights, image_size=a.image_size, device=a.device, tiling=t)
        for s in ds:
            for c in s.classes_present():
                gt = s.mask == c
                boxes = boxes_from_mask(gt)
                if not len(boxes): continue                                 # all components under min_area
                p = seg.predict(s.image, boxes=boxes) >= 0.5
                res[g].setdefault(c, []).append(iou(p, gt))
    print(f'  {"class":<14}' + ''.join(f'{g:>14}' for g in GEOMETRIES))
    for c in range(1, len(names)):
        if c in res['resize']: print(f'  {names[c]:<14}' + ''.join(f'{np.mean(res[g][c]):>14.3f}' for g in GEOMETRIES))


if __name__ == '__main__':
    main()
