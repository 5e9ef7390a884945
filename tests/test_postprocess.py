"""defect_sam.evaluation.postprocess: morphological properties, references from scipy, spec round trips, class-index masks, CRF."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from defect_sam.core.errors import ConfigError, DataError
from defect_sam.evaluation.metrics import threshold_probs
from defect_sam.evaluation.postprocess import PostProcess, closing, dense_crf, fill_holes, opening, remove_small

masks = arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24)))


@settings(max_examples=120, deadline=None)
@given(masks, st.sampled_from([1, 3, 5, 7]))
def test_opening_and_closing_are_morphological(m, k):
    o, c = opening(m, k).astype(bool), closing(m, k).astype(bool)
    assert not (o & ~m).any()                          # opening is anti-extensive
    assert not (m & ~c).any()                          # closing is extensive
    np.testing.assert_array_equal(opening(o, k), o)    # both idempotent
    np.testing.assert_array_equal(closing(c, k), c)


@settings(max_examples=120, deadline=None)
@given(masks, st.integers(1, 20))
def test_remove_small_matches_scipy_components(m, n):
    lab, k = ndimage.label(m, np.ones((3, 3)))
    sizes = ndimage.sum(m, lab, range(1, k + 1))
    ref = np.isin(lab, 1 + np.flatnonzero(np.asarray(sizes) >= n))
    np.testing.assert_array_equal(remove_small(m, n).astype(bool), ref)


@settings(max_examples=120, deadline=None)
@given(masks)
def test_fill_holes_matches_border_flood(m):
    bg, k = ndimage.label(~m)   # 4-connected background
    border = set(np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))) - {0}
    ref = m | ((bg > 0) & ~np.isin(bg, list(border)))
    np.testing.assert_array_equal(fill_holes(m).astype(bool), ref)


steps = st.fixed_dictionaries({'open': st.sampled_from([0, 3, 5]), 'close': st.sampled_from([0, 3]),
                               'fill_holes': st.booleans(), 'min_area': st.sampled_from([0, 5, 50]), 'crf': st.booleans()})


@settings(max_examples=100, deadline=None)
@given(steps, st.randoms())
def test_spec_round_trips(kw, r):
    pp = PostProcess(**kw)
    assert PostProcess.from_spec(str(pp)) == pp
    assert PostProcess.from_spec(pp.to_dict()) == pp
    toks = str(pp).split(',')
    r.shuffle(toks)
    assert PostProcess.from_spec(','.join(toks).upper()) == pp          # order and case do not matter


@settings(max_examples=80, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(2, 20), st.integers(2, 20)), elements=st.integers(0, 3)), steps)
def test_class_masks_cleaned_per_class(cm, kw):
    kw['crf'] = False
    pp = PostProcess(**kw)
    out = pp(cm)
    assert out.dtype == np.uint8 and out.shape == cm.shape and set(np.unique(out)) <= {0, 1, 2, 3}
    for c in (1, 2, 3):   # every class's pixels come from that class's own cleaned mask
        assert not ((out == c) & ~pp._clean_binary(cm == c).astype(bool)).any()
    keep = np.isin(out, [0]) | (out == cm)                               # unchanged where the original class survived
    if not pp.active: np.testing.assert_array_equal(out, cm)
    assert keep.any() or cm.size == 0


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 16), st.integers(1, 16)), elements=st.floats(0, 1, width=32)),
       st.floats(0, 1))
def test_no_steps_is_the_threshold(p, t):
    np.testing.assert_array_equal(PostProcess()(p, threshold=t), threshold_probs(p, t))
    np.testing.assert_array_equal(PostProcess.from_spec('none')(p, threshold=t), threshold_probs(p, t))


def test_crf_keeps_confident_probabilities_and_needs_a_matching_image():
    img = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    p = np.zeros((20, 30), np.float32); p[5:15, 5:25] = 1.0
    q = dense_crf(p, img)
    np.testing.assert_array_equal(threshold_probs(q), threshold_probs(p))
    with pytest.raises(DataError, match='size'): dense_crf(p, img[:10])
    with pytest.raises(ConfigError, match='needs the image'): PostProcess.from_spec('crf')(p)


def test_bad_specs():
    for bad in ['open', 'open-3', 'open4', 'erode3', 'min', 'crf2', 'fill,fill']:
        with pytest.raises(ConfigError): PostProcess.from_spec(bad)
    with pytest.raises(ConfigError, match='disagrees'): PostProcess.from_spec({'spec': 'open3', 'open': 5})
    with pytest.raises(ConfigError): PostProcess.from_spec(3)
    with pytest.raises(DataError): PostProcess.from_spec('fill')(np.zeros((2, 2, 2), np.uint8))
