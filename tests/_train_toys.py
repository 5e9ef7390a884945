"""Small trainable models and data for the training-loop tests, shared by the tests and their subprocess script."""
import numpy as np
import torch
from torch import nn

from defect_sam.data.sample import DefectDataset, Sample
from defect_sam.data.load import load_dataset
from defect_sam.data.splits import split_dataset
from defect_sam.models.base import TrainableSegmenter, TrainOutput


class _Net(nn.Module):
    "2 x (conv, ReLU) -> dropout -> 1-channel head, and optionally a half-resolution auxiliary head."
    def __init__(self, width, dropout, aux):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                  nn.Dropout2d(dropout))
        self.head = nn.Conv2d(width, 1, 3, padding=1)
        self.aux = nn.Conv2d(width, 1, 1) if aux else None
    def forward(self, x):
        f = self.body(x)
        out = self.head(f)
        return out if self.aux is None else (out, self.aux(nn.functional.avg_pool2d(f, 2)))


class TinySeg(TrainableSegmenter):
    "A tiny binary conv net (dropout: uses torch's RNG in training); options to record batches and to inject NaN."
    default_weight_decay = 1e-4
    def __init__(self, width=8, dropout=0.1, seed=0, aux=False, nan_at=(), grad_accum=1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = _Net(width, dropout, aux)
        self.nan_at, self.ga, self.calls, self.seen = set(nan_at), grad_accum, 0, []
    @property
    def module(self): return self.net
    def _x(self, images):
        dev = next(self.net.parameters()).device
        return torch.stack([torch.from_numpy(np.array(i)).permute(2, 0, 1).float() / 127.5 - 1 for i in images]).to(dev)
    def forward_batch(self, samples, rng, module):
        self.calls += 1
        self.seen.append([s.id for s in samples])
        x = self._x([s.image for s in samples])
        y = torch.stack([torch.from_numpy(s.mask > 0)[None].float() for s in samples]).to(x.device)
        o = module(x)
        main, aux = (o, None) if self.net.aux is None else (o[0], [(0.4, o[1])])
        if (self.calls - 1) // self.ga + 1 in self.nan_at: main = main * float('nan')
        return TrainOutput(main, y, aux=aux)
    @torch.no_grad()
    def predict(self, image, **kw):
        was = self.net.training; self.net.eval()
        try:
            o = self.net(self._x([image]))
            return torch.sigmoid(o if self.net.aux is None else o[0])[0, 0].cpu().numpy()
        finally: self.net.train(was)


def tiny_data(n=24, seed=0, binary=True, height=32, width=96):
    "Synthetic strips split 50/25/25: (train, val)."
    ds = load_dataset('synthetic', n_images=n, seed=seed, height=height, width=width, binary=binary)
    sp = split_dataset(ds, (0.5, 0.25, 0.25), seed=0)
    return sp['train'], sp['val']


class _Visible:
    "Loader of the toy set: gray noise with brighter rectangles (the defects), every third image defect-free."
    def __init__(self, seed, h, w): self.seed, self.h, self.w = seed, h, w
    def __call__(self, id):
        k = int(id.split('_')[1])
        rng = np.random.default_rng([self.seed, k])
        img = rng.integers(60, 120, (self.h, self.w, 3)).astype(np.uint8)
        m = np.zeros((self.h, self.w), np.uint8)
        for _ in range(0 if k % 3 == 0 else int(rng.integers(1, 3))):
            y, x = int(rng.integers(0, self.h - 8)), int(rng.integers(0, self.w - 12))
            m[y:y + int(rng.integers(4, 9)), x:x + int(rng.integers(6, 13))] = 1
        img[m > 0] += 90
        return Sample(id, img, m)


def visible_data(n=12, seed=0, h=24, w=48):
    "A toy set whose defects are visible locally (a tiny conv net can learn it): (train, val) halves."
    ds = DefectDataset([f'toy_{k}' for k in range(n)], _Visible(seed, h, w), ['background', 'defect'], name='toy')
    return ds.subset(ds.ids[:n // 2]), ds.subset(ds.ids[n // 2:])


def make_model(kind):
    "'tiny' (TinySeg) or 'sam_lora' (SAM2.1 tiny, random weights, image_size 64, decoder LoRA rank 4)."
    if kind == 'tiny': return TinySeg()
    if kind == 'sam_lora':
        from defect_sam.models.registry import build_model
        return build_model('sam2_lora', weights='random', image_size=64, lora_rank=4)
    raise ValueError(kind)
