#!/usr/bin/env python
"""Fine-tuning SAM2 from the proxy-pretrained SAM2.1-tiny (`tools/pretrain_proxy.py`), side by side in one run.

Rows: the proxy zero-shot, LoRA `decoder`, LoRA `encoder_decoder` and full fine-tuning, each trained and evaluated with
box prompts and with `points_3` prompts; on the datasets with defect-free test images (`--full-image-datasets`, the
synthetic strips: half are clean) also prompt-free, with the `full_image` prompt, trained with `loss: sam2`, and scored
with the object-score rule (its default after that loss) and without it. Columns, per dataset: test mIoU, defect-image
mIoU, pooled IoU and the false-alarm rate (defect-free images given any defect pixel), from the one evaluation
function (threshold 0.5, the same evaluation prompts for every row: `seed` fixed). Datasets (binary):

- `synthetic`: the synthetic steel set (train: `--synthetic-train` strips, test: another seed), strips 128x512;
- `neu`: `../shared/data/neu_seg_mini`, train split for training, val split as test;
- `crack500`: `../shared/data/crack500_mini`, its train and test lists.

Every fine-tuned row must beat the zero-shot row of its prompt on every dataset; the script prints which do not.
Then two studies on `--study-data` (NEU by default), each a pair of LoRA `encoder_decoder` runs that differ in one option:

- `loss: sam2` vs the default Dice+focal (box prompts): Spearman correlation of the predicted IoU of each test prompt's
  mask with its true IoU against that prompt's own object;
- clicks: the evaluation's IoU-per-click curve (`correction_study`, 5 clicks) of the proxy itself (box start and point
  start: it was pretrained with corrective clicks), and after fine-tuning (box prompts) with `correction_iters: 3` and
  without.

    python tools/pretrain_proxy.py                        # once (cached)
    python benchmarks/bench_finetune.py [--steps 150] [--proxy PATH] [--out DIR]

Measured figures and what they show: README, "A proxy-pretrained SAM2: the fine-tuning testbed". Every number it
prints is a *proxy-pretrained* number (SAM2.1-tiny pretrained here from random weights on a generated
corpus), never a result of the official SAM2 weights.
"""
import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from defect_sam.core.io import cache_dir, write_json_atomic
from defect_sam.data.load import load_dataset
from defect_sam.evaluation.evaluate import evaluate
from defect_sam.evaluation.metrics import confusion_counts, iou_score
from defect_sam.models.registry import build_model
from defect_sam.evaluation.prompts import make_prompts
from defect_sam.models.sam.correction import correction_study
from defect_sam.models.sam.objective import prompt_targets
from defect_sam.training.loop import TrainConfig, train

METHODS = {'LoRA decoder': ('sam2_lora', dict(lora_strategy='decoder', lora_rank=16, lora_alpha=32)),
           'LoRA encoder_decoder': ('sam2_lora', dict(lora_strategy='encoder_decoder', lora_rank=16, lora_alpha=32)),
           'full fine-tuning': ('sam2_full', {})}
COLS = {'test_mIoU': 'mIoU', 'test_mIoU_defect': 'mIoU_defect', 'test_pooled_IoU': 'pooled_IoU', 'false_alarm_rate': 'false_alarm_rate'}


def datasets(shared: Path, names, n_synth: int):
    out = {}
    for n in names:
        if n == 'synthetic':
            kw = dict(height=128, width=512, binary=True)
            out[n] = (load_dataset('synthetic', n_images=n_synth, seed=0, **kw), load_dataset('synthetic', n_images=48, seed=1, **kw))
        elif n == 'neu':
            r = shared/'neu_seg_mini'
            out[n] = (load_dataset('folder', r, images='img_dir/train', masks='ann_dir/train', binary=True),
                      load_dataset('folder', r, images='img_dir/val', masks='ann_dir/val', binary=True))
        elif n == 'crack500':
            r = shared/'crack500_mini'
            out[n] = (load_dataset('crack500', r, split='train', binary=True), load_dataset('crack500', r, split='test', binary=True))
        else: raise SystemExit(f'unknown dataset {n!r}')
    return out


def markdown(df: pd.DataFrame) -> str:
    "A pipe table of a frame whose index and columns may be tuples (no tabulate needed)."
    head = [' / '.join(map(str, i)) if isinstance(i, tuple) else str(i) for i in [df.index.names, *df.columns]]
    head[0] = ' / '.join(n or '' for n in df.index.names)
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for idx, r in df.iterrows():
        lab = ' / '.join(map(str, idx)) if isinstance(idx, tuple) else str(idx)
        lines.append('| ' + ' | '.join([lab, *(f'{v:.3f}' for v in r)]) + ' |')
    return '\n'.join(lines)


def build(name, proxy, a, **kw):
    return build_model(name, weights=str(proxy), image_size=a.image_size, device=a.device, **kw)


def fit(model, data, a, out, prompt, lr, **opts):
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=lr, seed=a.seed, val_every=None, ckpt_every=a.steps, log_every=10,
                      prompt=prompt, progress=True, **opts)
    t0 = time.perf_counter()
    res = train(model, data, None, cfg, out, resume=False)
    loss = res.history[res.history.kind == 'train'].loss.to_numpy()
    return time.perf_counter() - t0, float(loss[:2].mean()), float(loss[-2:].mean())


def score(model, data, prompt, seed):
    s = evaluate(model, data, prompt=prompt, seed=seed, progress=False).summary
    return {c: float(s[k]) for c, k in COLS.items()}


def has_clean(ds) -> bool: return any(not s.mask.any() for s in ds)


def iou_ranking(model, data, seed):
    "Spearman correlation of predicted and true IoU over every box prompt of `data` (each prompt against its own object)."
    pred, true = [], []
    for i, s in enumerate(data):
        if not s.mask.any(): continue
        p = make_prompts(s.mask, 'box', seed=seed + i)
        if p.is_empty: continue
        t, _ = prompt_targets(s.mask, p)
        o = model.predict_prompts(s.image, boxes=p.boxes)
        for prob, iou, tg in zip(o['probs'], o['iou'], t > 0):
            pred.append(float(iou)); true.append(float(iou_score(*confusion_counts(prob >= 0.5, tg)[0])))
    return float(pd.Series(pred).corr(pd.Series(true), method='spearman')), len(pred)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--proxy', type=Path, default=None, help="proxy checkpoint (default: cache_dir('proxy')/tiny_128/sam2.1_tiny_proxy.pt)")
    ap.add_argument('--data', type=Path, default=Path(os.environ.get('DEFECT_SAM_SHARED_DATA', '../shared/data')))
    ap.add_argument('--datasets', nargs='+', default=['synthetic', 'neu', 'crack500'])
    ap.add_argument('--prompts', nargs='+', default=['box', 'points_3'])
    ap.add_argument('--steps', type=int, default=150)
    ap.add_argument('--batch-size', type=int, default=4)
    ap.add_argument('--lora-lr', type=float, default=1e-4, help='peak lr of the LoRA rows and the studies (1e-3 lowers crack500 IoU)')
    ap.add_argument('--full-lr', type=float, default=1e-4, help='peak lr of full fine-tuning')
    ap.add_argument('--image-size', type=int, default=128, help="SAM2 input side (the proxy's)")
    ap.add_argument('--synthetic-train', type=int, default=64)
    ap.add_argument('--study-data', default='neu', help='dataset of the loss and click studies; none: skip them')
    ap.add_argument('--study-steps', type=int, default=None, help='steps of each study run (default: --steps)')
    ap.add_argument('--study-method', default='LoRA encoder_decoder', choices=list(METHODS), help='what the study runs train')
    ap.add_argument('--studies', nargs='+', default=['spearman', 'clicks'], choices=['spearman', 'clicks'])
    ap.add_argument('--full-image-datasets', nargs='*', default=['synthetic'], help='datasets with defect-free test images: add full_image rows')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--out', type=Path, default=Path('bench_finetune_out'))
    a = ap.parse_args()
    proxy = a.proxy or cache_dir('proxy')/f'tiny_{a.image_size}'/'sam2.1_tiny_proxy.pt'
    if not proxy.exists(): raise SystemExit(f'{proxy} not found: run python tools/pretrain_proxy.py first')
    meta = proxy.parent/'proxy.json'
    info = json.loads(meta.read_text()) if meta.exists() else {}
    a.out.mkdir(parents=True, exist_ok=True)
    print(f"PROXY-PRETRAINED numbers (not official SAM2 weights): {proxy} "
          f"(held-out box mIoU {info.get('heldout_mIoU_after', float('nan')):.3f}); image_size {a.image_size}, {a.steps} steps "
          f"of batch {a.batch_size}; torch threads {torch.get_num_threads()}")
    data = datasets(a.data, a.datasets, a.synthetic_train)
    rows = []
    for dn, (tr, te) in data.items():
        print(f"{dn}: train {len(tr)}, test {len(te)}")
        zs = build('sam2_zeroshot', proxy, a)
        full = dn in a.full_image_datasets and has_clean(te)
        for p in a.prompts + (['full_image'] if full else []):
            rows.append(dict(dataset=dn, method='proxy zero-shot', prompt=p, **score(zs, te, p, a.seed)))
        for mn, (reg, kw) in METHODS.items():
            lr = a.full_lr if reg == 'sam2_full' else a.lora_lr
            for p in a.prompts:
                m = build(reg, proxy, a, **kw)
                t, l0, l1 = fit(m, tr, a, a.out/'runs'/f'{dn}-{mn.replace(" ", "_")}-{p}', p, lr)
                rows.append(dict(dataset=dn, method=mn, prompt=p, **score(m, te, p, a.seed), train_s=t, loss_first=l0, loss_last=l1))
                print(f"  {mn:22s} {p:9s} {t:6.0f} s  loss {l0:.3f} -> {l1:.3f}  " +
                      '  '.join(f"{k} {rows[-1][k]:.3f}" for k in COLS), flush=True)
            if full:                                      # prompt-free: sam2's loss, with and without the object-score rule
                m = build(reg, proxy, a, **kw)
                t, l0, l1 = fit(m, tr, a, a.out/'runs'/f'{dn}-{mn.replace(" ", "_")}-full_image', 'full_image', lr, loss='sam2')
                rows.append(dict(dataset=dn, method=mn, prompt='full_image, loss sam2', **score(m, te, 'full_image', a.seed), train_s=t,
                                 loss_first=l0, loss_last=l1))
                m.use_object_score = False
                rows.append(dict(dataset=dn, method=mn, prompt='full_image, loss sam2, no object-score rule', **score(m, te, 'full_image', a.seed)))
                print(f"  {mn:22s} full_image (sam2 loss) {t:6.0f} s  false alarms {rows[-2]['false_alarm_rate']:.3f} with the "
                      f"object-score rule, {rows[-1]['false_alarm_rate']:.3f} without; defect mIoU {rows[-2]['test_mIoU_defect']:.3f} / "
                      f"{rows[-1]['test_mIoU_defect']:.3f}", flush=True)
        df = pd.DataFrame(rows); df.to_csv(a.out/'table.csv', index=False)
    df = pd.DataFrame(rows)
    wide = df.pivot_table(index=['method', 'prompt'], columns='dataset', values=list(COLS), sort=False, dropna=False)
    wide = wide.reorder_levels([1, 0], axis=1)[[(d, c) for d in data for c in COLS]].dropna(how='all')   # rows of combinations never run
    print('\nPROXY-PRETRAINED SAM2.1-tiny (not official weights): test metrics, threshold 0.5')
    print(markdown(wide))
    zs = df[df.method == 'proxy zero-shot'].set_index(['dataset', 'prompt'])
    worse = [f"{r.method}/{r.prompt}/{r.dataset}/{c}" for r in df[(df.method != 'proxy zero-shot') & df.prompt.isin(a.prompts)].itertuples()
             for c in ('test_mIoU_defect', 'test_pooled_IoU') if getattr(r, c) <= zs.loc[(r.dataset, r.prompt), c]]
    print('every fine-tuned row beats the zero-shot of its prompt (defect mIoU and pooled IoU): ' + ('yes' if not worse else f"NO: {worse}"))
    summary = dict(proxy=str(proxy), proxy_info=info, args={k: str(v) for k, v in vars(a).items()}, table=rows, not_better=worse)
    if a.study_data != 'none':
        tr, te = data.get(a.study_data) or datasets(a.data, [a.study_data], a.synthetic_train)[a.study_data]
        sa = argparse.Namespace(**{**vars(a), 'steps': a.study_steps or a.steps})
        reg, kw = METHODS[a.study_method]
        lr = a.full_lr if reg == 'sam2_full' else a.lora_lr
        if 'spearman' in a.studies:
            rank = {}
            for loss in ('dice_focal', 'sam2'):
                m = build(reg, proxy, sa, **kw)
                fit(m, tr, sa, a.out/'runs'/f'study-loss-{loss}', 'box', lr, loss=loss)
                rank[loss] = iou_ranking(m, te, a.seed)
            rank['proxy zero-shot'] = iou_ranking(build('sam2_zeroshot', proxy, sa), te, a.seed)
            print(f"\npredicted vs true IoU, Spearman over {rank['sam2'][1]} box prompts of {a.study_data} test: " +
                  ', '.join(f"{k} {v[0]:.3f}" for k, v in rank.items()))
            summary |= dict(spearman={k: v[0] for k, v in rank.items()}, spearman_n=rank['sam2'][1])
        curves = {}
        if 'clicks' in a.studies:
            zs = build('sam2_zeroshot', proxy, sa)
            for start in ('box', 'point'): curves[f'proxy zero-shot, {start} start'] = correction_study(zs, te, start=start, k=5)[1]
        for k in ((0, 3) if 'clicks' in a.studies else ()):
            m = build(reg, proxy, sa, **kw)
            fit(m, tr, sa, a.out/'runs'/f'study-clicks-{k}', 'box', lr, correction_iters=k)
            curves[f'correction_iters={k}, box start'] = correction_study(m, te, start='box', k=5)[1]
        if curves:
            cv = pd.DataFrame(curves).T
            print(f"IoU per corrective click, {a.study_data} test (the proxy; {a.study_method} trained with box prompts):")
            print(markdown(cv))
            summary |= dict(click_curves={k: v.tolist() for k, v in curves.items()})
    write_json_atomic(a.out/'summary.json', summary)
    print(f"written: {a.out/'table.csv'}, {a.out/'summary.json'}")


if __name__ == '__main__':
    main()
