"""RLE property tests: rle_decode and rle_encode are exact inverses on any mask and any valid RLE."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from defect_sam.core.errors import DataError
from defect_sam.data.rle import rle_decode, rle_encode
from defect_sam.data.rle import mask_to_rles, parse_rle, rles_to_mask

shapes = st.tuples(st.integers(1, 40), st.integers(1, 40))


@st.composite
def masks(draw, max_value=1):
    h, w = draw(shapes)
    kind = draw(st.sampled_from(['random', 'empty', 'full', 'sparse']))
    if kind == 'empty': return np.zeros((h, w), np.uint8)
    if kind == 'full': return np.full((h, w), max_value, np.uint8)
    m = draw(arrays(np.uint8, (h, w), elements=st.integers(0, max_value)))
    if kind == 'sparse': m = m * (draw(arrays(np.uint8, (h, w), elements=st.integers(0, 9))) == 0)
    return m.astype(np.uint8)


def naive_decode(rle, shape):
    "Reference: one pixel at a time."
    h, w = shape; flat = np.zeros(h * w, np.uint8); v = [int(t) for t in rle.split()]
    for s, l in zip(v[0::2], v[1::2]):
        for p in range(s - 1, s - 1 + l): flat[p] = 1
    return flat.reshape(w, h).T


@settings(max_examples=300, deadline=None)
@given(masks())
def test_encode_then_decode_is_identity(m):
    r = rle_encode(m)
    assert np.array_equal(rle_decode(r, m.shape), m)
    assert np.array_equal(naive_decode(r, m.shape), m)


@settings(max_examples=200, deadline=None)
@given(shapes, st.data())
def test_decode_then_encode_is_identity_for_canonical_rles(shape, data):
    h, w = shape; n = h * w
    # random non-touching runs: gaps >= 1 so the RLE is canonical (no adjacent runs to merge)
    cuts = sorted(data.draw(st.sets(st.integers(1, n), max_size=min(n, 30))))
    runs, pos = [], 1
    for a, b in zip(cuts[0::2], cuts[1::2]):
        if a >= pos: runs += [a, b - a + 1]; pos = b + 2
    r = ' '.join(map(str, runs))
    assert rle_encode(rle_decode(r, shape)) == r


@settings(max_examples=150, deadline=None)
@given(masks(max_value=4))
def test_per_class_round_trip(m):
    assert np.array_equal(rles_to_mask(mask_to_rles(m), m.shape), m)


def test_empty_and_full_and_one_pixel():
    assert rle_encode(np.zeros((1, 1))) == '' and rle_encode(np.ones((1, 1))) == '1 1'
    assert rle_decode(None, (1, 1)).tolist() == [[0]]
    assert rle_decode(float('nan'), (2, 3)).sum() == 0
    assert rle_decode('1 6', (2, 3)).all()
    assert rle_encode(np.ones((256, 1600))) == '1 409600'


def test_column_major_one_based():
    m = np.zeros((256, 1600), np.uint8); m[0, 1] = 1      # row 0, column 1 = pixel 257
    assert rle_encode(m) == '257 1'
    m[5:9, 1] = 1
    assert rle_encode(m) == '257 1 262 4'


def test_sequence_input_and_value():
    assert rle_decode([1, 2], (2, 2), value=4).tolist() == [[4, 0], [4, 0]]
    with pytest.raises(DataError, match='must be integers'): parse_rle(np.array([1.5, 2.0]), (2, 2))


@pytest.mark.parametrize('rle,msg', [
    ('1 2 3', 'odd number'), ('0 1', 'start below 1'), ('-1 2', 'start below 1'), ('1 0', 'length below 1'), ('1 -2', 'length below 1'),
    ('5 3 1 1', 'unsorted'), ('1 5 3 1', 'overlaps'), ('12 2', 'past the image end'), ('1 a', "'a', not an integer"),
    ('1 1e3', "'1e3'"), ('1 99999999999999999999999', 'not an integer')])
def test_malformed(rle, msg):
    with pytest.raises(DataError, match=msg) as e: rle_decode(rle, (3, 4), where='x.csv line 9')
    assert 'x.csv line 9' in str(e.value)


def test_encode_rejects_non_2d():
    with pytest.raises(DataError, match='2-D'): rle_encode(np.zeros((2, 2, 2)))
