"""Transforms: augmentation keeps masks valid and is seeded; letterbox has an inverse; YOLO labels match the connected
components; the exported folder is read by ultralytics itself."""
import numpy as np
import pytest
import yaml
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from skimage.measure import label, regionprops

from defect_sam.core.errors import ConfigError
from defect_sam.data.load import load_dataset
from defect_sam.data.splits import split_dataset
from defect_sam.data.transforms import Augment, export_yolo, letterbox, letterbox_info, unletterbox, yolo_boxes, yolo_polygons


@st.composite
def pairs(draw, max_side=48):
    h, w = draw(st.integers(2, max_side)), draw(st.integers(2, max_side))
    img = draw(arrays(np.uint8, (h, w, 3), elements=st.integers(0, 255)))
    m = draw(arrays(np.uint8, (h, w), elements=st.integers(0, 4)))
    return img, m


FULL = Augment(hflip=0.5, vflip=0.5, elastic=1, noise=1, blur=1, brightness_contrast=1)


@settings(max_examples=60, deadline=None)
@given(pairs(), st.integers(0, 2**32 - 1))
def test_augment_keeps_masks_valid_and_is_seeded(pair, seed):
    img, m = pair
    a_img, a_m = FULL(img, m, np.random.default_rng(seed))
    assert a_img.shape == img.shape and a_img.dtype == np.uint8 and a_m.shape == m.shape and a_m.dtype == np.uint8
    assert set(np.unique(a_m)) <= set(np.unique(m))                       # nearest neighbour: never blended ids
    b_img, b_m = FULL(img, m, np.random.default_rng(seed))
    assert np.array_equal(a_img, b_img) and np.array_equal(a_m, b_m)
    # photometric transforms never touch the mask
    photo = Augment(hflip=0, vflip=0, noise=1, blur=1, brightness_contrast=1)
    assert np.array_equal(photo(img, m, seed)[1], m)


def test_flips_move_image_and_mask_together():
    img = np.zeros((4, 6, 3), np.uint8); img[0, 0] = 255
    m = np.zeros((4, 6), np.uint8); m[0, 0] = 2
    i2, m2 = Augment(hflip=1, vflip=1)(img, m, 0)
    assert i2[3, 5, 0] == 255 and m2[3, 5] == 2
    assert i2.flags['C_CONTIGUOUS'] and m2.flags['C_CONTIGUOUS']
    with pytest.raises(ConfigError, match='rng'): Augment()(img, m, 'seed')


def test_elastic_is_smooth_and_local():
    m = np.zeros((64, 256), np.uint8); m[20:40, 100:160] = 3
    img = np.repeat(m[..., None] * 60, 3, 2).astype(np.uint8)
    _, m2 = Augment(hflip=0, vflip=0, elastic=1, elastic_alpha=3, elastic_sigma=16)(img, m, 1)
    inter, union = ((m2 == 3) & (m == 3)).sum(), ((m2 == 3) | (m == 3)).sum()
    assert 0.7 < inter / union < 1                                         # moved a little, not scrambled


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 400), st.integers(1, 2000), st.sampled_from([(256, 1024), (512, 512), (64, 96)]), st.sampled_from([None, 32]))
def test_letterbox_geometry(h, w, size, pad_to):
    info = letterbox_info((h, w), size, pad_to)
    rh, rw = info.resized_shape
    assert rh <= size[0] and rw <= size[1] and (rh == size[0] or rw == size[1] or abs(rh / rw - h / w) < 0.05 + 1 / min(rh, rw))
    ph, pw = info.padded_shape
    assert ph >= rh and pw >= rw
    if pad_to: assert ph % pad_to == 0 and pw % pad_to == 0 and ph - rh < pad_to and pw - rw < pad_to
    else: assert (ph, pw) == tuple(size)


@settings(max_examples=40, deadline=None)
@given(st.integers(16, 300), st.integers(16, 1700), st.sampled_from([None, 32]))
def test_unletterbox_inverts_letterbox(h, w, pad_to):
    m = np.zeros((h, w), np.uint8)
    m[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 2                          # a block: survives down- and up-sampling
    img = np.zeros((h, w, 3), np.uint8)
    li, lm, info = letterbox(img, m, (256, 1024), pad_to, mask_pad=255)
    assert li.shape[:2] == lm.shape == info.padded_shape
    rh, rw = info.resized_shape
    assert (lm[rh:] == 255).all() and (lm[:, rw:] == 255).all()           # padding marked for an ignore index
    back = unletterbox(lm, info, 'nearest')
    assert back.shape == (h, w) and back.dtype == np.uint8
    agree = (back == m).mean()
    assert agree > 1 - 4 * (1 / info.scale + 1) * (h + w) / (h * w)       # only the block's border may move
    prob = unletterbox(np.stack([(lm == 2).astype(np.float32)] * 3), info)
    assert prob.shape == (3, h, w) and prob.dtype == np.float32 and 0 <= prob.min() <= prob.max() <= 1


@settings(max_examples=80, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 30), st.integers(1, 30)), elements=st.integers(0, 3)), st.booleans())
def test_yolo_labels_match_components(m, binary):
    m = m * (np.random.default_rng(0).random(m.shape) < 0.4)
    H, W = m.shape
    boxes, polys = yolo_boxes(m, binary), yolo_polygons(m, binary, min_width=1)   # exact contours (thin parts are not widened)
    classes = [1] if binary else [c for c in range(1, 4) if (m == c).any()]
    want = []
    for c in classes:
        comp = label((m > 0) if binary else (m == c), connectivity=2)
        for r in regionprops(comp):
            y0, x0, y1, x1 = r.bbox
            want.append((0 if binary else c - 1, (x0 + x1) / 2 / W, (y0 + y1) / 2 / H, (x1 - x0) / W, (y1 - y0) / H, r.label, comp))
    assert len(boxes) == len(polys) == len(want)
    assert sorted((round(b[1], 6), round(b[2], 6), b[0]) for b in boxes) == sorted((round(w[1], 6), round(w[2], 6), w[0]) for w in want)
    assert all(0 <= v <= 1 for b in boxes for v in b[1:]) and all(0 <= v <= 1 for _, p in polys for v in p)
    assert all(len(p) >= 6 and len(p) % 2 == 0 for _, p in polys)
    # each polygon, rasterized as ultralytics does, gives back its component with holes filled
    import cv2
    assert sorted(c for c, _ in polys) == sorted(w[0] for w in want)
    for c, p in polys:
        r = np.zeros((H, W), np.uint8)
        cv2.fillPoly(r, [np.round(np.array(p).reshape(-1, 2) * (W, H)).astype(np.int32)], 1)
        src = (m > 0) if binary else (m == c + 1)
        comps = label(src, connectivity=2)
        ids = np.unique(comps[(r > 0) & src])
        assert len(ids) == 1                                              # one polygon = one component
        filled = ndimage.binary_fill_holes(comps == ids[0])
        assert np.array_equal(r > 0, filled)


@pytest.fixture(scope='module')
def splits(tmp_path_factory):
    import os
    old = os.environ.get('DEFECT_SAM_CACHE')
    os.environ['DEFECT_SAM_CACHE'] = str(tmp_path_factory.mktemp('cache'))
    ds = load_dataset('synthetic', n_images=24, seed=4, height=64, width=256)
    yield split_dataset(ds, (0.5, 0.25, 0.25), seed=0)
    if old is None: os.environ.pop('DEFECT_SAM_CACHE', None)    # the cache folder does not leak into later modules
    else: os.environ['DEFECT_SAM_CACHE'] = old


@pytest.mark.parametrize('task,binary', [('detect', True), ('segment', False)])
def test_export_read_by_ultralytics(splits, tmp_path, task, binary):
    from ultralytics.data import YOLODataset
    from ultralytics.data.utils import check_det_dataset
    y = export_yolo(splits, tmp_path/'yolo', task=task, binary=binary)
    d = check_det_dataset(str(y))
    names = ['defect'] if binary else ['pits', 'scratches', 'patches', 'areas']
    assert d['names'] == dict(enumerate(names)) and d['nc'] == len(names)
    for k in ('train', 'val', 'test'):
        yd = YOLODataset(img_path=d[k], data=d, task=task, imgsz=256, augment=False)
        labs = yd.get_labels()
        assert len(labs) == len(splits[k])
        got = sorted(int(c) for l in labs for c in l['cls'].ravel())
        want = sorted(c for s in splits[k] for c, *_ in yolo_boxes(s.mask, binary))
        assert got == want
        if task == 'segment': assert all(len(l['segments']) == len(l['cls']) for l in labs)


def test_export_refuses_bad_arguments(splits, tmp_path):
    with pytest.raises(ConfigError, match='task'): export_yolo(splits, tmp_path/'y', task='pose')
    with pytest.raises(ConfigError, match=r"need \['val'\]"): export_yolo({'train': splits['train']}, tmp_path/'y')
    y = export_yolo({'train': splits['train'].as_binary(), 'val': splits['val'].as_binary()}, tmp_path/'bin', task='detect', binary=False)
    assert yaml.safe_load(y.read_text())['names'] == {0: 'pits', 1: 'scratches', 2: 'patches', 3: 'areas'}   # classes of the data, not the view
