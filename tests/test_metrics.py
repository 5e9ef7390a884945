"""defect_sam.evaluation.metrics checked against independent references: scikit-learn, scikit-image, scipy and plain loops."""
import gc
import math
import weakref

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from skimage.morphology import skeletonize
from sklearn import metrics as skm

from defect_sam.core.errors import ConfigError, DataError
from defect_sam.evaluation.metrics import CALIBRATION_METRICS, SUMMARY_KEYS, MetricAccumulator, ThresholdCalibrator, average_precision_from_histogram, calibrate_threshold, confusion_counts, dice_score, evaluate_masks, f1_score, iou_score, prob_histogram, skeleton_counts, skeleton_scores, skeletonize_mask, threshold_probs

shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))


@st.composite
def mask_sets(draw, num_classes=1, max_images=6):
    "A list of (pred, gt) pairs of one shape, with empty and full masks likely."
    h, w = draw(shapes)
    n = draw(st.integers(1, max_images))
    special = st.sampled_from(['random', 'empty', 'full'])
    def one():
        kind = draw(special)
        if kind == 'empty': return np.zeros((h, w), np.uint8)
        if kind == 'full': return np.full((h, w), draw(st.integers(1, num_classes)), np.uint8)
        return draw(arrays(np.uint8, (h, w), elements=st.integers(0, num_classes)))
    return [(one(), one()) for _ in range(n)]


def ref_image_scores(p, g, C):
    "Per-image IoU/Dice by set operations, summing counts over classes; 1 for both empty."
    tp = sum(np.sum((p == c) & (g == c)) for c in range(1, C + 1))
    fp = sum(np.sum((p == c) & (g != c)) for c in range(1, C + 1))
    fn = sum(np.sum((p != c) & (g == c)) for c in range(1, C + 1))
    if tp + fp + fn == 0: return 1.0, 1.0
    return tp / (tp + fp + fn), 2 * tp / (2 * tp + fp + fn)


@settings(max_examples=120, deadline=None)
@given(st.integers(1, 3).flatmap(lambda C: st.tuples(st.just(C), mask_sets(C))))
def test_summary_matches_references(data):
    C, pairs = data
    res = evaluate_masks((p for p, _ in pairs), (g for _, g in pairs), num_classes=C, skeleton_radius=None)
    t, s = res
    assert list(s) == list(SUMMARY_KEYS)
    ref = np.array([ref_image_scores(p, g, C) for p, g in pairs])
    np.testing.assert_allclose(t.iou, ref[:, 0]); np.testing.assert_allclose(t.dice, ref[:, 1])
    assert s['mIoU'] == pytest.approx(ref[:, 0].mean()) and s['mDice'] == pytest.approx(ref[:, 1].mean())
    for k, v in {'IoU@50': .5, 'IoU@75': .75, 'IoU@90': .9, 'IoU@95': .95}.items():
        assert s[k] == pytest.approx((ref[:, 0] >= v).mean())
    yt = np.concatenate([g.ravel() for _, g in pairs]); yp = np.concatenate([p.ravel() for p, _ in pairs])
    labels = list(range(1, C + 1))
    if np.isin(yp, labels).any():
        assert s['Precision_pooled'] == pytest.approx(skm.precision_score(yt, yp, labels=labels, average='micro', zero_division=0))
    if np.isin(yt, labels).any():
        assert s['Recall_pooled'] == pytest.approx(skm.recall_score(yt, yp, labels=labels, average='micro', zero_division=0))
        assert s['pooled_Dice'] == pytest.approx(skm.f1_score(yt, yp, labels=labels, average='micro', zero_division=0))
    if np.isin(yt, labels).any() or np.isin(yp, labels).any():
        assert s['pooled_IoU'] == pytest.approx(skm.jaccard_score(yt, yp, labels=labels, average='micro', zero_division=0))
    else: assert s['pooled_IoU'] == 1.0 and s['Precision_pooled'] == 1.0 and s['Recall_pooled'] == 1.0
    assert s['F1_pooled'] == pytest.approx(s['pooled_Dice'])
    # the studies' columns: means over images of per-image pixel scores (F1 then equals mDice)
    def img_pr(p, g):
        tp = sum(((p == c) & (g == c)).sum() for c in labels); npred = np.isin(p, labels).sum(); ngt = np.isin(g, labels).sum()
        P = tp / npred if npred else float(ngt == 0); R = tp / ngt if ngt else float(npred == 0)
        return P, R
    pr_ = np.array([img_pr(p, g) for p, g in pairs])
    assert s['Precision'] == pytest.approx(pr_[:, 0].mean()) and s['Recall'] == pytest.approx(pr_[:, 1].mean())
    assert s['F1'] == pytest.approx(s['mDice'])
    # defect images only, counted directly
    has = np.array([bool(np.isin(g, labels).any()) for _, g in pairs])
    if has.any():
        assert s['mIoU_defect'] == pytest.approx(ref[has, 0].mean()) and s['mDice_defect'] == pytest.approx(ref[has, 1].mean())
        assert s['IoU@75_defect'] == pytest.approx((ref[has, 0] >= 0.75).mean())
    else: assert math.isnan(s['mIoU_defect']) and math.isnan(s['IoU@50_defect'])
    # image-level detection, counted directly: flagged = any predicted defect pixel
    flag = np.array([bool(np.isin(p, labels).any()) for p, _ in pairs])
    tp_, fp_, fn_, tn_ = (has & flag).sum(), (~has & flag).sum(), (has & ~flag).sum(), (~has & ~flag).sum()
    if tp_ + fp_: assert s['image_precision'] == pytest.approx(tp_ / (tp_ + fp_))
    if tp_ + fn_: assert s['image_recall'] == pytest.approx(tp_ / (tp_ + fn_))
    if fp_ + tn_: assert s['false_alarm_rate'] == pytest.approx(fp_ / (fp_ + tn_))
    else: assert math.isnan(s['false_alarm_rate'])
    # Kaggle: mean over (image, class) pairs, empty/empty = 1
    kd = []
    for p, g in pairs:
        for c in labels:
            a, b = p == c, g == c
            kd.append(1.0 if not a.any() and not b.any() else 2 * (a & b).sum() / (a.sum() + b.sum()))
    assert s['kaggle_dice'] == pytest.approx(np.mean(kd))
    assert math.isnan(s['AUPRC']) and math.isnan(s['skeleton_IoU'])
    # image-level detection against sklearn
    gd, pd_ = [bool(g.any()) for _, g in pairs], [bool(p.any()) for p, _ in pairs]
    if any(pd_): assert res.extras['detection_precision'] == pytest.approx(skm.precision_score(gd, pd_))
    if any(gd): assert res.extras['detection_recall'] == pytest.approx(skm.recall_score(gd, pd_))
    assert (t.both_empty == [not p.any() and not g.any() for p, g in pairs]).all()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=8))
def test_score_identities_and_ranges(counts):
    tp, fp, fn = np.array(counts).T
    np.testing.assert_allclose(f1_score(tp, fp, fn), dice_score(tp, fp, fn))
    i, d = iou_score(tp, fp, fn), dice_score(tp, fp, fn)
    np.testing.assert_allclose(d, 2 * i / (1 + i))
    assert ((0 <= i) & (i <= 1)).all()


def test_precision_recall_per_image_against_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(50):
        g, p = rng.random((9, 9)) < 0.3, rng.random((9, 9)) < 0.3
        if not (g.any() and p.any()): continue
        row = MetricAccumulator().update(p, g)
        assert row['precision'] == pytest.approx(skm.precision_score(g.ravel(), p.ravel()))
        assert row['recall'] == pytest.approx(skm.recall_score(g.ravel(), p.ravel()))
        assert row['f1'] == pytest.approx(skm.f1_score(g.ravel(), p.ravel()))


def test_empty_and_full_conventions():
    z, o = np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8)
    t, s = evaluate_masks([z, z, o, o], [z, o, z, o], ids=list('abcd'))
    assert t.set_index('id').loc[['a', 'b', 'c', 'd'], 'iou'].tolist() == [1, 0, 0, 1]
    assert t.precision.tolist() == [1, 0, 0, 1] and t.recall.tolist() == [1, 0, 0, 1]
    assert t.both_empty.tolist() == [True, False, False, False]
    assert s['mIoU'] == 0.5 and s['pooled_IoU'] == 16 / 48


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.sampled_from([10, 100, 1000]))
def test_auprc_matches_sklearn(seed, n, bins):
    rng = np.random.default_rng(seed)
    gts = [rng.random((7, 11)) < rng.uniform(0.05, 0.6) for _ in range(n)]
    assume(any(g.any() for g in gts))
    # probabilities at bin centres: the histogram AP is exact
    probs = [((rng.integers(0, bins, g.shape) + 0.5) / bins).astype(np.float32) for g in gts]
    probs = [np.where(g, np.maximum(p, rng.random() * p), p).astype(np.float32) for g, p in zip(gts, probs)]
    probs = [((np.floor(p * bins) + 0.5) / bins).astype(np.float32) for p in probs]
    preds = [p >= 0.5 for p in probs]
    s = evaluate_masks(preds, gts, probs, auprc_bins=bins, skeleton_radius=None).summary
    ref = skm.average_precision_score(np.concatenate([g.ravel() for g in gts]), np.concatenate([p.ravel() for p in probs]))
    assert s['AUPRC'] == pytest.approx(ref, abs=1e-9)


def test_auprc_continuous_probabilities_within_bin_resolution():
    rng = np.random.default_rng(3)
    g = rng.random((200, 300)) < 0.1
    p = np.clip(rng.normal(0.35 + 0.3 * g, 0.2), 0, 1).astype(np.float32)
    ap = average_precision_from_histogram(prob_histogram(p, g, 1000))
    assert ap == pytest.approx(skm.average_precision_score(g.ravel(), p.ravel()), abs=2e-3)
    # class maps: the defect probability is the max over classes
    p3 = np.stack([p, p * 0.5, rng.random(p.shape).astype(np.float32) * p])
    np.testing.assert_array_equal(prob_histogram(p3, g), prob_histogram(p, g))


@settings(max_examples=150, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 30), st.integers(1, 30))))
def test_cropped_skeleton_equals_full_image_skimage(m):
    np.testing.assert_array_equal(skeletonize_mask(m), skeletonize(m))


def ref_skeleton_counts(p, g, r):
    "Brute force: Euclidean distance from each skeleton pixel to the other skeleton."
    sp, sg = skeletonize(p) if p.any() else np.zeros_like(p), skeletonize(g) if g.any() else np.zeros_like(g)
    def matched(a, b):
        if not a.any() or not b.any(): return 0
        d = ndimage.distance_transform_edt(~b)
        return int((a & (d <= r)).sum())
    return [sp.sum(), sg.sum(), matched(sp, sg), matched(sg, sp)]


@settings(max_examples=150, deadline=None)
@given(st.tuples(st.integers(1, 25), st.integers(1, 25)).flatmap(
    lambda s: st.tuples(arrays(np.bool_, s), arrays(np.bool_, s))), st.integers(0, 4))
def test_skeleton_counts_match_brute_force(pg, r):
    p, g = pg
    np.testing.assert_array_equal(skeleton_counts(p, g, r), ref_skeleton_counts(p, g, r))
    iou, prec, rec = skeleton_scores(skeleton_counts(p, g, r))
    assert 0 <= iou <= 1 and 0 <= prec <= 1 and 0 <= rec <= 1
    assert iou == pytest.approx(skeleton_scores(skeleton_counts(g, p, r))[0])   # symmetric
    if r == 0 and (p.any() or g.any()):
        sp, sg = skeletonize(p), skeletonize(g)
        assert iou == pytest.approx(1.0 if not (sp | sg).any() else (sp & sg).sum() / (sp | sg).sum())


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(0, 2**32 - 1), st.integers(1, 4))
def test_calibrator_table_equals_evaluation_at_each_threshold(C, seed, n):
    rng = np.random.default_rng(seed)
    gts = [rng.integers(0, C + 1, (6, 9)).astype(np.uint8) * (rng.random((6, 9)) < 0.5) for _ in range(n)]
    if C == 1: probs = [rng.random((6, 9)).astype(np.float32) for _ in gts]
    else: probs = [rng.random((C, 6, 9)).astype(np.float32) for _ in gts]
    # include values exactly at the thresholds
    th = [0.0, 0.3, 0.5, 0.7, 1.0]
    for p in probs: p.flat[:4] = np.float32([0.3, 0.7, 0.5, 1.0])
    cal = ThresholdCalibrator(th, C)
    for p, g in zip(probs, gts): cal.update(p, g)
    tab = cal.table()
    for t in th:
        s = evaluate_masks([threshold_probs(p, t) for p in probs], gts, num_classes=C, skeleton_radius=None).summary
        for k in CALIBRATION_METRICS: assert tab.loc[t, k] == pytest.approx(s[k], abs=1e-12), (t, k)


def test_calibration_finds_the_separating_threshold():
    rng = np.random.default_rng(0)
    gts = [rng.random((20, 20)) < 0.3 for _ in range(4)]
    probs = [np.where(g, rng.uniform(0.62, 1, g.shape), rng.uniform(0, 0.58, g.shape)).astype(np.float32) for g in gts]
    for metric in ['mIoU', 'pooled_Dice', 'F1', 'kaggle_dice']:
        r = calibrate_threshold(iter(probs), iter(gts), metric=metric)
        # 0.58 ... 0.62 all separate perfectly; ties go to the threshold nearest 0.5
        assert r.threshold == 0.58 and r.score == 1.0, (metric, r.threshold)
        assert (r.table.loc[[0.58, 0.59, 0.6, 0.61, 0.62], metric] == 1).all() and r.table[metric].iloc[0] < 1
    with pytest.raises(ConfigError, match='cannot calibrate'): calibrate_threshold(probs, gts, metric='skeleton_IoU')
    with pytest.raises(DataError, match='different lengths'): calibrate_threshold(probs, gts[:2])


def test_inputs_are_streamed_not_held():
    "Each image is released once processed: a generator of many large images never accumulates."
    refs = []
    def images(n=30):
        for _ in range(n):
            a = np.zeros((512, 512), np.uint8); a[100:200, 100:300] = 1
            refs.append(weakref.ref(a))
            yield a
    def probs(n=30):
        for _ in range(n):
            p = np.full((512, 512), 0.2, np.float32); refs.append(weakref.ref(p)); yield p
    acc = MetricAccumulator()
    gts = images()
    for k, (p, g, pr) in enumerate(zip(images(), gts, probs())):
        acc.update(p, g, pr)
        del p, g, pr
        gc.collect()
        assert sum(r() is not None for r in refs) <= 3 * 2   # at most the current and previous triple alive
    assert acc.summary()['mIoU'] == 1.0


def test_bad_inputs_name_the_image():
    acc = MetricAccumulator()
    with pytest.raises(DataError, match="image 'im7': prediction shape"):
        acc.update(np.zeros((3, 3), bool), np.zeros((3, 4), bool), id='im7')
    with pytest.raises(DataError, match="image 'im8': probabilities must lie"):
        acc.update(np.zeros((3, 3), bool), np.zeros((3, 3), bool), np.full((3, 3), np.nan, np.float32), id='im8')
    with pytest.raises(DataError, match='allows 0..1'): confusion_counts(np.full((2, 2), 2), np.zeros((2, 2), int))
    with pytest.raises(ConfigError): MetricAccumulator(num_classes=0)
    with pytest.raises(ConfigError, match='2 names for 3'): MetricAccumulator(3, class_names=['a', 'b'])


def test_memory_monitor_and_timer_use_cuda_when_torch_has_a_gpu(monkeypatch):
    "The CUDA wiring, with a stand-in torch module (CI has no GPU): peak reset on entry, read on results, synced timer."
    import sys
    from types import SimpleNamespace
    from defect_sam.evaluation.metrics import MemoryMonitor, Timer
    calls = []
    cuda = SimpleNamespace(is_available=lambda: True, reset_peak_memory_stats=lambda: calls.append('reset'),
                           max_memory_allocated=lambda: 3 * 2**20, synchronize=lambda: calls.append('sync'))
    monkeypatch.setitem(sys.modules, 'torch', SimpleNamespace(cuda=cuda))
    with MemoryMonitor(interval=0.001) as mon: pass
    assert mon.results()['cuda_max_allocated_mb'] == 3 and calls == ['reset']
    with Timer(cuda_sync=True): pass
    assert calls == ['reset', 'sync', 'sync']
    monkeypatch.delitem(sys.modules, 'torch')
    with MemoryMonitor(interval=0.001) as mon: pass
    assert mon.results()['cuda_max_allocated_mb'] is None     # without torch imported: no CUDA figure, no import
    assert 'torch' not in sys.modules
