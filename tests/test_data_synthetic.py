"""The synthetic set: deterministic per seed (byte-identical files), Severstal-like, cached, written atomically."""
import os
import threading
from pathlib import Path

import numpy as np
import pytest

import defect_sam.data.synthetic as syn
from defect_sam.core.errors import ConfigError, DataError
from defect_sam.data.load import load_dataset
from defect_sam.data.supervisely import write_supervisely
from defect_sam.data.synthetic import load_synthetic, make_synthetic, synth_plan


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('DEFECT_SAM_CACHE', str(tmp_path/'cache'))
    return tmp_path/'cache'


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob('*')) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = files(make_synthetic(tmp_path/'a', n_images=8, seed=5, height=48, width=160))
    b = files(make_synthetic(tmp_path/'b', n_images=8, seed=5, height=48, width=160))
    c = files(make_synthetic(tmp_path/'c', n_images=8, seed=6, height=48, width=160))
    assert a == b
    assert a.keys() == c.keys()
    assert a['train.csv'] != c['train.csv']
    assert all(a[k] != c[k] for k in a if k.startswith('train_images/'))


def test_strip_i_does_not_depend_on_set_size(tmp_path):
    "Strip i is drawn from the generator seeded (seed, i); the plan decides its defects."
    small = load_synthetic(n_images=10, seed=1, height=32, width=96)
    rng = np.random.default_rng([1, 3])
    img, mask = syn.synth_strip(rng, synth_plan(10, 1)[3], 32, 96)
    s = small['synth_00003.jpg']
    assert np.array_equal(s.mask, mask)
    assert np.abs(s.image[..., 0].astype(int) - img).mean() < 3          # JPEG round trip of the same pixels


def test_severstal_like(cache):
    ds = load_dataset('synthetic', n_images=40, seed=0, height=128, width=512)
    assert ds.classes == ['background', 'pits', 'scratches', 'patches', 'areas']
    assert ds.info['kind'] == 'synthetic' and ds.info['params']['n_images'] == 40
    labels = ds.labels
    assert sum(1 for l in labels.values() if not l) == 20                # half defect-free
    assert set().union(*labels.values()) == {1, 2, 3, 4}
    s = ds[0]
    assert s.image.shape == (128, 512, 3) and s.image.dtype == np.uint8
    assert (s.image[..., 0] == s.image[..., 1]).all()                    # grayscale-looking
    for s in ds:                                                          # labels match the decoded masks
        assert s.classes_present() == labels[s.id]
    # the files are the Severstal layout and the real reader reads them
    root = ds.root
    assert (root/'train.csv').read_text().startswith('ImageId,ClassId,EncodedPixels\n')
    assert len(list((root/'train_images').glob('*.jpg'))) == 40
    assert load_dataset('severstal', root).labels == labels


def test_defect_shapes_are_plausible():
    rng = np.random.default_rng(0)
    _, m = syn.synth_strip(rng, (2,), 256, 1600)
    ys, xs = np.nonzero(m == 2)
    assert xs.max() - xs.min() > 100                                      # scratches are long
    per_col = np.bincount(xs, minlength=1600)
    assert np.median(per_col[per_col > 0]) <= 6                          # and thin (1-3 px, a few lines)
    area = {c: np.mean([(syn.synth_strip(np.random.default_rng(k), (c,), 128, 800)[1] == c).sum() for k in range(8)]) for c in (1, 3, 4)}
    assert area[1] < area[3] < area[4] and area[4] > 10 * area[1]         # pits small, patches medium, areas large


def test_cached_and_reused(cache):
    a = load_synthetic(n_images=6, seed=0, height=32, width=96)
    assert a.root.parent == cache/'synthetic'
    mtime = (a.root/'train.csv').stat().st_mtime_ns
    b = load_synthetic(n_images=6, seed=0, height=32, width=96)
    assert b.root == a.root and (b.root/'train.csv').stat().st_mtime_ns == mtime
    assert load_synthetic(n_images=6, seed=1, height=32, width=96).root != a.root
    with pytest.raises(DataError, match='params.json: the synthetic set .* other parameters'):
        load_synthetic(a.root, n_images=7, seed=0, height=32, width=96)


def test_killed_generation_leaves_nothing(cache, monkeypatch):
    real = syn.synth_strip
    calls = []
    def dying(rng, defects, h, w):
        calls.append(1)
        if len(calls) == 4: raise KeyboardInterrupt('killed')
        return real(rng, defects, h, w)
    monkeypatch.setattr(syn, 'synth_strip', dying)
    with pytest.raises(KeyboardInterrupt): load_synthetic(n_images=6, seed=0, height=32, width=96)
    assert not (cache/'synthetic').exists() or not any((cache/'synthetic').iterdir())   # no half set, no temp folder
    monkeypatch.setattr(syn, 'synth_strip', real)
    assert len(load_synthetic(n_images=6, seed=0, height=32, width=96)) == 6


def test_concurrent_first_use(cache):
    out, errs = [], []
    def go():
        try: out.append(load_synthetic(n_images=8, seed=9, height=32, width=96).root)
        except Exception as e: errs.append(e)
    ts = [threading.Thread(target=go) for _ in range(3)]
    for t in ts: t.start()
    for t in ts: t.join()
    assert not errs and len(set(out)) == 1
    assert sorted(p.name for p in (cache/'synthetic').iterdir()) == [out[0].name]


def test_written_as_supervisely(tmp_path):
    ds = load_synthetic(n_images=6, seed=0, height=32, width=96)
    back = load_dataset('supervisely', write_supervisely(ds, tmp_path/'sly'))
    assert back.classes == ds.classes
    for a, b in zip(ds, back): assert np.array_equal(a.mask, b.mask) and np.array_equal(a.image, b.image)


def test_bad_parameters():
    with pytest.raises(ConfigError, match='n_images'): synth_plan(0)
    with pytest.raises(ConfigError, match='class_weights'): synth_plan(10, class_weights=(1, 1))
    with pytest.raises(ConfigError, match='height and width >= 16'): load_synthetic(n_images=2, height=8, width=64)
    plan = synth_plan(100, 0, class_weights=(0, 0, 1, 0), multi_fraction=0)
    assert {p for p in plan if p} == {(3,)}
