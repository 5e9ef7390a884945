"""Split and few-shot properties: disjoint, complete, exact sizes, stratified, nested, seeded, manifests reused and checked."""
import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from defect_sam.core.errors import ConfigError, DataError
from defect_sam.data.sample import DefectDataset, Sample
from defect_sam.data.splits import SPLITS, fewshot_order, fewshot_subset, fewshot_subsets, ids_hash, split_dataset, stratify

COMBOS = [frozenset(), frozenset({3}), frozenset({1}), frozenset({4}), frozenset({2}), frozenset({3, 4}), frozenset({1, 3}),
          frozenset({1, 2, 3}), frozenset({2, 4})]


def _never(i): raise AssertionError('splitting must not read samples when labels are known')


def make_ds(labels):
    return DefectDataset(list(labels), _never, ['background', 'a', 'b', 'c', 'd'], name='toy', labels=labels)


@st.composite
def label_sets(draw, min_n=1, max_n=400):
    n = draw(st.integers(min_n, max_n))
    w = draw(st.lists(st.floats(0, 1), min_size=len(COMBOS), max_size=len(COMBOS)).filter(lambda v: sum(v) > 0))
    p = np.array(w) / sum(w)
    idx = np.random.default_rng(draw(st.integers(0, 2**16))).choice(len(COMBOS), n, p=p)
    return {f'id{k:04d}': COMBOS[c] for k, c in enumerate(idx)}


fractions = st.sampled_from([(0.8, 0.1, 0.1), (0.7, 0.15, 0.15), (0.6, 0.2, 0.2), (0.9, 0.1, 0.0), (1.0, 0.0, 0.0)])


@settings(max_examples=120, deadline=None)
@given(label_sets(), fractions, st.integers(0, 1000))
def test_split_properties(labels, fr, seed):
    ds = make_ds(labels)
    sp = split_dataset(ds, fr, seed=seed)
    ids = [set(sp[k].ids) for k in SPLITS]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])          # disjoint
    assert set().union(*ids) == set(labels)                                     # complete
    n = len(labels)
    for k, f in zip(SPLITS, fr): assert abs(len(sp[k]) - n * f) < 1 + 1e-9        # exact sizes (largest remainders)
    # stratified: every stratum of at least 1/min(fraction) images is split in proportion (within 1 image + rounding)
    strata = stratify(labels, int(np.ceil(1 / min(f for f in fr if f > 0) - 1e-9)))
    sizes = Counter(strata.values())
    for k, f in zip(SPLITS, fr):
        got = Counter(strata[i] for i in sp[k].ids)
        for s, ns in sizes.items():
            assert abs(got[s] - ns * f) <= 2, (s, ns, k, got[s])
    assert split_dataset(ds, fr, seed=seed)['test'].ids == sp['test'].ids           # seeded


def test_rare_combinations_do_not_crash_and_are_pooled():
    labels = {f'{k}': COMBOS[1] for k in range(50)} | {'r1': COMBOS[7], 'r2': COMBOS[8], 'r3': frozenset({1, 4})}
    strata = stratify(labels, 10)
    assert {strata['r1'], strata['r2'], strata['r3']} == {'3'}    # a pool of 3 < 10 goes into the largest stratum
    labels |= {f'x{k}': COMBOS[7] for k in range(4)} | {f'y{k}': COMBOS[8] for k in range(4)} | {f'z{k}': COMBOS[5] for k in range(3)}
    strata = stratify(labels, 10)
    assert strata['r1'] == strata['x0'] == strata['y0'] == strata['z0'] == 'rare'
    sp = split_dataset(make_ds(labels), seed=0)
    assert sum(len(v) for v in sp.values()) == len(labels)
    assert split_dataset(make_ds({'only': COMBOS[0]}), seed=0)['train'].ids == ['only']


def test_manifest_reused_and_checked(tmp_path):
    labels = {f'id{k:03d}': COMBOS[k % 4] for k in range(100)}
    ds = make_ds(labels)
    sp = split_dataset(ds, seed=7, manifest_dir=tmp_path)
    man = tmp_path/'split_seed7.json'
    m = json.loads(man.read_text())
    assert m['fractions'] == [0.8, 0.1, 0.1] and m['ids_hash'] == ids_hash(ds.ids) and m['n_ids'] == 100
    assert {k: sorted(v) for k, v in m['splits'].items()} == {k: sorted(sp[k].ids) for k in SPLITS}
    # reused: a hand-edited manifest wins over recomputation (so every model sees exactly the same test images)
    m['splits']['test'], m['splits']['train'] = m['splits']['train'][:10], m['splits']['train'][10:] + m['splits']['test']
    man.write_text(json.dumps(m))
    assert split_dataset(ds, seed=7, manifest_dir=tmp_path)['test'].ids == m['splits']['test']
    assert split_dataset(ds.as_binary(), seed=7, manifest_dir=tmp_path)['test'].ids == m['splits']['test']
    # names ids missing from the dataset
    with pytest.raises(DataError, match=r'split_seed7.json: names 20 ids missing'): split_dataset(ds[:80], seed=7, manifest_dir=tmp_path)
    # the dataset has ids the manifest does not know
    bigger = make_ds(labels | {'new': COMBOS[0]})
    with pytest.raises(DataError, match=r"split_seed7.json: made for 100 ids .* 1 of them not in the manifest, e.g. \['new'\]"):
        split_dataset(bigger, seed=7, manifest_dir=tmp_path)
    # other fractions
    with pytest.raises(DataError, match='split_seed7.json: made with seed 7 and fractions'):
        split_dataset(ds, (0.6, 0.2, 0.2), seed=7, manifest_dir=tmp_path)
    m2 = dict(m, splits=dict(m['splits'], val=m['splits']['val'] + m['splits']['test'][:1]))
    man.write_text(json.dumps(m2))
    with pytest.raises(DataError, match=r'split_seed7.json: lists 1 ids more than once'): split_dataset(ds, seed=7, manifest_dir=tmp_path)
    man.write_text('{not json')
    with pytest.raises(DataError, match='split_seed7.json: unreadable manifest'): split_dataset(ds, seed=7, manifest_dir=tmp_path)


def test_bad_fractions():
    ds = make_ds({'a': COMBOS[0], 'b': COMBOS[1]})
    for fr in [(0.5, 0.5), (0.8, 0.3, 0.1), (0.0, 0.5, 0.5), (1.1, -0.1, 0.0)]:
        with pytest.raises(ConfigError, match='fractions'): split_dataset(ds, fr)


@settings(max_examples=80, deadline=None)
@given(label_sets(min_n=30, max_n=400), st.integers(0, 1000), st.data())
def test_fewshot_nested_stratified(labels, seed, data):
    train = make_ds(labels)
    n = len(labels)
    sizes = sorted(data.draw(st.sets(st.integers(1, n), min_size=1, max_size=5)))
    fs = fewshot_subsets(train, sizes, seed=seed)
    assert list(fs) == sizes
    for a, b in zip(sizes, sizes[1:]): assert set(fs[a].ids) < set(fs[b].ids)     # nested
    order = fewshot_order(train, seed)
    assert sorted(order) == sorted(labels)
    strata = stratify(labels)
    total = Counter(strata.values())
    for size in sizes:
        assert len(fs[size]) == size and set(fs[size].ids) == set(order[:size])
        got = Counter(strata[i] for i in fs[size].ids)
        for s, ns in total.items(): assert abs(got[s] - size * ns / n) < 2, (s, got[s], size * ns / n)   # every prefix stratified
    assert fewshot_subsets(train, sizes, seed=seed)[sizes[-1]].ids == fs[sizes[-1]].ids


def test_fewshot_too_large_and_manifest(tmp_path):
    labels = {f'id{k:03d}': COMBOS[k % 3] for k in range(150)}
    train = make_ds(labels)
    with pytest.raises(ConfigError, match=r'few-shot size 200 is larger than the train split \(150 samples\)'):
        fewshot_subsets(train, (100, 200))
    fs = fewshot_subsets(train, (10, 50), seed=3, manifest_dir=tmp_path)
    m = json.loads((tmp_path/'fewshot_seed3.json').read_text())
    assert set(m['subsets']) == {'10', '50'} and len(m['order']) == 150 and m['train_ids_hash'] == ids_hash(train.ids)
    assert sorted(m['subsets']['10']) == fs[10].ids
    # a later call with a new size extends the manifest, keeping the order
    assert set(fewshot_subset(train, 100, seed=3, manifest_dir=tmp_path).ids) > set(fs[50].ids)
    m2 = json.loads((tmp_path/'fewshot_seed3.json').read_text())
    assert set(m2['subsets']) == {'10', '50', '100'} and m2['order'] == m['order']
    # a manifest of another train split is refused
    with pytest.raises(DataError, match='fewshot_seed3.json: names 50 ids missing from train split'):
        fewshot_subsets(make_ds(dict(list(labels.items())[:100])), (10,), seed=3, manifest_dir=tmp_path)


def test_splits_of_real_loader_keep_samples_readable(tmp_path, monkeypatch):
    monkeypatch.setenv('DEFECT_SAM_CACHE', str(tmp_path))
    from defect_sam.data.load import load_dataset
    ds = load_dataset('synthetic', n_images=30, seed=2, height=32, width=96)
    sp = split_dataset(ds, seed=1, manifest_dir=tmp_path/'m')
    s = sp['test'][0]
    assert s.id in sp['test'].ids and s.mask.shape == (32, 96)
    assert sp['train'].info['split'] == 'train' and sp['train'].info['split_manifest'].endswith('split_seed1.json')
    fs = fewshot_subsets(sp['train'], (6, 12), seed=0)
    assert fs[6].info['fewshot_size'] == 6 and fs[6][0].image.shape == (32, 96, 3)
