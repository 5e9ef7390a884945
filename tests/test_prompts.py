"""Property tests of defect_sam.evaluation.prompts against independent references (scipy labelling, brute-force geometry)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from defect_sam.core.errors import ConfigError, DataError
from defect_sam.evaluation.prompts import PROMPT_KINDS, Prompts, boxes_from_mask, full_image_box, grid_points, innermost_point, make_prompts, points_from_mask

masks = arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24)))
class_masks = arrays(np.uint8, st.tuples(st.integers(1, 20), st.integers(1, 20)), elements=st.integers(0, 3))
EIGHT = np.ones((3, 3), int)


def ref_boxes(m, min_area):
    "Inclusive boxes of 8-connected components, by scipy (raster order of first pixel)."
    lab, n = ndimage.label(m, EIGHT)
    out = []
    for k in range(1, n + 1):
        ys, xs = np.nonzero(lab == k)
        if len(ys) >= min_area: out.append((ys.min() * 10_000 + xs[ys == ys.min()].min(), [xs.min(), ys.min(), xs.max(), ys.max()]))
    return np.array([b for _, b in sorted(out)], np.float32).reshape(-1, 4)


@settings(max_examples=150, deadline=None)
@given(masks, st.integers(1, 6))
def test_boxes_match_scipy_components(m, min_area):
    test = boxes_from_mask(m, min_area=min_area)
    ref = ref_boxes(m, min_area)
    assert test.dtype == np.float32 and test.shape == ref.shape
    np.testing.assert_array_equal(test, ref)


@settings(max_examples=100, deadline=None)
@given(masks, st.floats(0, 1), st.floats(0, 0.5), st.integers(0, 2**31))
def test_boxes_expanded_jittered_stay_valid(m, ratio, jitter, seed):
    H, W = m.shape
    b = boxes_from_mask(m, min_area=1, expand_ratio=ratio, jitter=jitter, seed=seed)
    assert ((b[:, 0] >= 0) & (b[:, 2] <= W - 1) & (b[:, 1] >= 0) & (b[:, 3] <= H - 1)).all()
    assert ((b[:, 0] <= b[:, 2]) & (b[:, 1] <= b[:, 3])).all()
    if jitter == 0:   # expansion never shrinks a box
        t = boxes_from_mask(m, min_area=1)
        assert (b[:, :2] <= t[:, :2]).all() and (b[:, 2:] >= t[:, 2:]).all()


def test_box_convention_indexes_object_pixels():
    "Inclusive indices: slicing [y0:y1+1, x0:x1+1] recovers exactly the object's pixels."
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = np.zeros((30, 40), bool)
        y, x, h, w = rng.integers(0, 20), rng.integers(0, 30), rng.integers(1, 10), rng.integers(1, 10)
        m[y:y + h, x:x + w] = True
        x0, y0, x1, y1 = boxes_from_mask(m, min_area=1)[0].astype(int)
        assert m[y0:y1 + 1, x0:x1 + 1].all() and m[y0:y1 + 1, x0:x1 + 1].sum() == m.sum()


@settings(max_examples=150, deadline=None)
@given(masks.filter(lambda m: m.any()))
def test_innermost_point_is_a_distance_maximum(m):
    x, y = innermost_point(m)
    assert m[y, x]
    d = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]   # image edge counts as background
    assert d[y, x] == pytest.approx(d.max(), abs=1e-3)


@settings(max_examples=120, deadline=None)
@given(masks, st.integers(1, 5), st.integers(0, 3), st.booleans(), st.integers(0, 1000))
def test_points_inside_and_outside(m, n_pos, n_neg, per_comp, seed):
    pts, lab = points_from_mask(m, n_pos, n_neg, per_component=per_comp, seed=seed, min_area=1)
    n = ndimage.label(m, EIGHT)[1] if per_comp else int(m.any())
    assert pts.shape == (n, n_pos + n_neg, 2) and lab.shape == (n, n_pos + n_neg)
    x, y = pts[..., 0].astype(int), pts[..., 1].astype(int)
    assert (pts == np.round(pts)).all()
    assert m[y[lab == 1], x[lab == 1]].all()
    assert not m[y[lab == 0], x[lab == 0]].any()
    assert (lab[:, :n_pos] == 1).all()
    if n and not (~m).any(): assert (lab[:, n_pos:] == -1).all()      # no background: padding
    if n and (~m).any(): assert (lab[:, n_pos:] == 0).all()
    if per_comp and n:   # positives of a prompt belong to the same component
        labimg = ndimage.label(m, EIGHT)[0]
        comp = labimg[y[:, :n_pos], x[:, :n_pos]]
        assert (comp == comp[:, :1]).all()


@settings(max_examples=80, deadline=None)
@given(class_masks, st.sampled_from(['box', 'points_1', 'points_3', 'points_5']), st.integers(0, 50))
def test_class_aware_prompts_carry_their_class(cm, kind, seed):
    p = make_prompts(cm, kind, seed=seed, class_aware=True, num_classes=3, min_area=1, n_neg=1)
    assert p.num_classes == 3 and len(p.classes) == len(p)
    assert sum(ndimage.label(cm == c, EIGHT)[1] for c in (1, 2, 3)) == len(p)
    assert (np.diff(p.classes) >= 0).all()
    if kind == 'box':
        for (x0, y0, x1, y1), c in zip(p.boxes.astype(int), p.classes): assert (cm[y0:y1 + 1, x0:x1 + 1] == c).any()
    else:
        x, y = p.points[..., 0].astype(int), p.points[..., 1].astype(int)
        for i, c in enumerate(p.classes):
            pos = p.labels[i] == 1
            assert (cm[y[i, pos], x[i, pos]] == c).all()
            assert (cm[y[i, p.labels[i] == 0], x[i, p.labels[i] == 0]] == 0).all()   # negatives avoid every defect
    assert p.is_empty == (not cm.any())
    q = make_prompts(cm, kind, seed=seed, class_aware=True, num_classes=3, min_area=1, n_neg=1)
    for a, b in zip(p.as_kwargs().values(), q.as_kwargs().values()): np.testing.assert_array_equal(a, b)


def test_binary_prompts_ignore_classes_and_min_area_drops_noise():
    cm = np.zeros((30, 30), np.uint8); cm[0:5, 0:5] = 1; cm[5:10, 5:10] = 2   # touching diagonally -> one object
    cm[20, 20] = 3
    p = make_prompts(cm, 'box')
    assert p.classes is None and p.num_classes is None and len(p) == 1
    np.testing.assert_array_equal(p.boxes, [[0, 0, 9, 9]])
    assert len(make_prompts(cm, 'box', min_area=1)) == 2


@pytest.mark.parametrize('kind', PROMPT_KINDS)
def test_every_kind_builds_and_as_kwargs_is_sam2_ready(kind):
    m = np.zeros((64, 96), np.uint8); m[10:30, 20:50] = 1
    p = make_prompts(m, kind, seed=0, points_per_side=4)
    kw = p.as_kwargs()
    assert p.kind == kind and p.source == 'gt' and not p.is_empty
    if 'boxes' in kw: assert kw['boxes'].dtype == np.float32 and kw['boxes'].shape[1] == 4
    if 'points' in kw:
        assert kw['points'].dtype == np.float32 and kw['labels'].dtype == np.int32
        assert kw['points'].shape[:2] == kw['labels'].shape
    assert 'classes' not in kw and 'num_classes' not in kw


def test_prompt_free_kinds_never_empty():
    z = np.zeros((10, 40), np.uint8)
    assert len(make_prompts(z, 'full_image')) == 1
    np.testing.assert_array_equal(make_prompts(z, 'full_image').boxes, full_image_box(z.shape))
    pts, _ = grid_points(z.shape, (8, 2))
    assert ((pts[..., 0] >= 0) & (pts[..., 0] <= 39) & (pts[..., 1] >= 0) & (pts[..., 1] <= 9)).all()


def test_bad_inputs_raise_project_errors():
    with pytest.raises(ConfigError, match='valid kinds'): make_prompts(np.zeros((4, 4)), 'points_2')
    with pytest.raises(ConfigError, match='num_classes'): make_prompts(np.ones((4, 4)), 'box', class_aware=True)
    with pytest.raises(DataError, match='HxW'): make_prompts(np.zeros((4, 4, 3)), 'box')
    with pytest.raises(DataError, match='empty'): innermost_point(np.zeros((3, 3)))
    with pytest.raises(DataError, match='background shape'): points_from_mask(np.ones((3, 3)), 1, 1, background=np.ones((2, 2)))
    with pytest.raises(DataError, match='disagree'): Prompts(points=np.zeros((2, 3, 2)), labels=np.zeros((2, 2)))
