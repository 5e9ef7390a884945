"""Format round trips (Severstal both CSV forms, Supervisely), the folder reader's mask rules, and the real data samples."""
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from defect_sam.core.errors import ConfigError, DataError
from defect_sam.data.sample import DefectDataset, Sample
from defect_sam.data.load import DATASETS, load_dataset
from defect_sam.data.formats import read_mask, write_severstal
from defect_sam.data.supervisely import write_supervisely
from defect_sam.data.supervisely import mask_to_bitmap

CLASSES = ['background', 'pits', 'scratches', 'patches', 'areas']


@st.composite
def sample_sets(draw):
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    n = draw(st.integers(1, 4))
    out = []
    for k in range(n):
        m = draw(arrays(np.uint8, (h, w), elements=st.integers(0, 4)))
        m = m * (draw(arrays(np.uint8, (h, w), elements=st.integers(0, 3))) == 0)   # some background
        img = draw(arrays(np.uint8, (h, w, 3), elements=st.integers(0, 255)))
        out.append(Sample(f'im{k}', img, m.astype(np.uint8)))
    return out


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert np.array_equal(x.mask, y.mask) and np.array_equal(x.image, y.image)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sample_sets(), st.sampled_from(['new', 'old']))
def test_severstal_round_trip(tmp_path_factory, samples, form):
    out = write_severstal(samples, tmp_path_factory.mktemp('sev')/'d', form=form, classes=CLASSES)
    ds = load_dataset('severstal', out)
    assert ds.info['csv_form'] == form and ds.classes == CLASSES
    _same(ds, samples)
    assert ds.labels == {f'{s.id}.png': s.classes_present() for s in samples}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sample_sets())
def test_supervisely_round_trip(tmp_path_factory, samples):
    out = write_supervisely(samples, tmp_path_factory.mktemp('sly')/'p', dataset_name='steel', classes=CLASSES)
    ds = load_dataset('supervisely', out)
    assert ds.classes == CLASSES and ds.ids == [f'steel/{s.id}.png' for s in samples]
    _same(ds, samples)
    again = load_dataset('supervisely', write_supervisely(ds, tmp_path_factory.mktemp('sly2')/'p'))
    _same(again, samples)
    assert again.ids == ds.ids


def test_supervisely_reads_all_geometries(tmp_path):
    "bitmap, polygon (with a hole) and rectangle, written by hand in the Supervisely JSON format."
    H, W = 20, 30
    proj = tmp_path/'proj'
    (proj/'ds'/'img').mkdir(parents=True); (proj/'ds'/'ann').mkdir()
    (proj/'meta.json').write_text(json.dumps({'classes': [{'title': t, 'shape': s, 'color': '#FF0000'} for t, s in
                                                          [('pit', 'bitmap'), ('scratch', 'polygon'), ('patch', 'rectangle')]]}))
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(proj/'ds'/'img'/'x.png')
    bm = np.zeros((3, 4), bool); bm[1, :] = True; bm[:, 2] = True
    poly_ext = [[10, 2], [20, 2], [20, 12], [10, 12]]; hole = [[13, 5], [16, 5], [16, 8], [13, 8]]
    ann = {'size': {'height': H, 'width': W}, 'tags': [], 'objects': [
        {'classTitle': 'patch', 'geometryType': 'rectangle', 'points': {'exterior': [[22, 14], [27, 18]], 'interior': []}},
        {'classTitle': 'scratch', 'geometryType': 'polygon', 'points': {'exterior': poly_ext, 'interior': [hole]}},
        {'classTitle': 'pit', 'geometryType': 'bitmap', 'bitmap': {'data': mask_to_bitmap(bm)['data'], 'origin': [2, 15]}}]}
    (proj/'ds'/'ann'/'x.png.json').write_text(json.dumps(ann))
    ds = load_dataset('supervisely', proj)
    m = ds[0].mask
    want = np.zeros((H, W), np.uint8)
    want[14:19, 22:28] = 3
    cv2.fillPoly(want, [np.array(poly_ext, np.int32)], 2); cv2.fillPoly(want, [np.array(hole, np.int32)], 0)
    want[15:18, 2:6][bm] = 1
    assert np.array_equal(m, want)
    assert ds.labels[ds.ids[0]] == {1, 2, 3}
    assert (m[2:13, 10:21] == 2).sum() == 11 * 11 - 4 * 4        # polygon corners included, hole removed


def test_supervisely_later_objects_cover_earlier(tmp_path):
    proj = tmp_path/'p'; (proj/'d'/'img').mkdir(parents=True); (proj/'d'/'ann').mkdir()
    (proj/'meta.json').write_text(json.dumps({'classes': [{'title': 'a'}, {'title': 'b'}]}))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(proj/'d'/'img'/'i.png')
    rect = lambda t, e: {'classTitle': t, 'geometryType': 'rectangle', 'points': {'exterior': e}}
    (proj/'d'/'ann'/'i.png.json').write_text(json.dumps({'size': {'height': 4, 'width': 4},
                                                         'objects': [rect('b', [[0, 0], [3, 3]]), rect('a', [[1, 1], [2, 2]])]}))
    m = load_dataset('supervisely', proj)[0].mask
    assert m[0, 0] == 2 and m[1, 1] == 1


def _folder(tmp_path, masks, ext='.png', classes=None):
    for k, m in enumerate(masks):
        (tmp_path/'images').mkdir(parents=True, exist_ok=True); (tmp_path/'masks').mkdir(exist_ok=True)
        Image.fromarray(np.full(m.shape + (3,), 100, np.uint8)).save(tmp_path/'images'/f'{k}.jpg')
        if ext == '.jpg': cv2.imwrite(str(tmp_path/'masks'/f'{k}.jpg'), m)
        else: Image.fromarray(m).save(tmp_path/'masks'/f'{k}{ext}')
    if classes: (tmp_path/'names.txt').write_text('\n'.join(classes))
    return tmp_path


def test_folder_mask_rules(tmp_path):
    m = np.zeros((16, 16), np.uint8); m[4:12, 4:12] = 255
    # 0/255 PNG: binary
    ds = load_dataset('folder', _folder(tmp_path/'a', [m]))
    assert ds.classes == ['background', 'class_1'] and ds[0].mask.max() == 1
    # JPEG mask: lossy edges thresholded at 128, so the square comes back exactly
    ds = load_dataset('folder', _folder(tmp_path/'b', [m], '.jpg'))
    assert np.array_equal(ds[0].mask, m // 255)
    # class indices, with a class-names file (one name per line, background first)
    ds = load_dataset('folder', _folder(tmp_path/'c', [m // 85, m // 255], classes=['background', 'x', 'y', 'z']), classes='names.txt')
    assert ds.classes == ['background', 'x', 'y', 'z'] and ds[0].mask.max() == 3 and ds.labels == {'0': {3}, '1': {1}}
    # a mask holding a class the names file does not have
    ds = load_dataset('folder', _folder(tmp_path/'d', [m // 85], classes=['background', 'x']), classes='names.txt')
    with pytest.raises(DataError, match='mask holds class 3'): ds[0]
    # palette PNG: indices
    p = Image.fromarray(m // 85, mode='P'); p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    p.save(tmp_path/'pal.png')
    assert read_mask(tmp_path/'pal.png').max() == 3
    with pytest.raises(ConfigError, match='mask mode'): read_mask(tmp_path/'pal.png', mode='rgb')


def test_binary_view_and_registry(tmp_path):
    assert list(DATASETS) == ['synthetic', 'severstal', 'supervisely', 'crack500', 'folder']
    ds = load_dataset('synthetic', n_images=6, seed=0, height=32, width=128, binary=True)
    assert ds.binary and ds.classes == ['background', 'defect']
    assert ds.as_multiclass().classes[1:] == ['pits', 'scratches', 'patches', 'areas']
    with pytest.raises(ConfigError, match='valid kinds'): load_dataset('coco')


# real data samples (skipped when ../shared/data is absent)

def test_neu_seg_mini(shared_data):
    ds = load_dataset('folder', shared_data/'neu_seg_mini', images='img_dir/train', masks='ann_dir/train', validate=True)
    assert len(ds) == 160 and ds.classes == ['background', 'inclusion', 'patches', 'scratches']
    s = ds[0]
    assert s.image.shape == (200, 200, 3) and s.image.dtype == np.uint8 and s.mask.shape == (200, 200)
    assert set().union(*ds.labels.values()) == {1, 2, 3}
    assert all(ds.labels.values())                               # every NEU image has a defect
    val = load_dataset('folder', shared_data/'neu_seg_mini', images='img_dir/val', masks='ann_dir/val')
    assert len(val) == 40 and not set(val.ids) & set(ds.ids)


def test_crack500_mini(shared_data):
    for split, n in (('train', 120), ('test', 60)):
        ds = load_dataset('crack500', shared_data/'crack500_mini', split=split, validate=True)
        assert len(ds) == n and ds.classes == ['background', 'crack']
        assert all(l == {1} for l in ds.labels.values())         # no crop is empty
        s = ds[0]
        assert s.image.ndim == 3 and s.mask.shape == s.image.shape[:2] and set(np.unique(s.mask)) == {0, 1}
        assert Path(s.meta['source']).suffix == '.jpg' and Path(s.meta['mask_source']).suffix == '.png'


def test_real_data_converts_to_supervisely_and_back(shared_data, tmp_path):
    ds = load_dataset('folder', shared_data/'neu_seg_mini', images='img_dir/val', masks='ann_dir/val')[:10]
    back = load_dataset('supervisely', write_supervisely(ds, tmp_path/'neu'))
    for a, b in zip(ds, back):
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.image, b.image)
    assert Path(back[0].meta['source']).read_bytes() == Path(ds[0].meta['source']).read_bytes()   # source copied, not re-encoded


def test_every_kind_is_picklable(tmp_path, monkeypatch):
    "DataLoader workers started with 'spawn' (macOS, Windows) pickle the dataset: every reader's loader must pickle."
    import pickle
    monkeypatch.setenv('DEFECT_SAM_CACHE', str(tmp_path/'cache'))
    syn = load_dataset('synthetic', n_images=4, seed=0, height=32, width=64)
    kinds = [syn, syn.as_binary(), load_dataset('supervisely', write_supervisely(syn, tmp_path/'sly'))]
    fold = tmp_path/'fold'
    for s in syn:
        (fold/'images').mkdir(parents=True, exist_ok=True); (fold/'masks').mkdir(exist_ok=True)
        Image.fromarray(s.image).save(fold/'images'/f'{Path(s.id).stem}.png'); Image.fromarray(s.mask).save(fold/'masks'/f'{Path(s.id).stem}.png')
    kinds.append(load_dataset('folder', fold, classes=CLASSES))
    (fold/'list.txt').write_text(''.join(f'images/{Path(i).stem}.png masks/{Path(i).stem}.png\n' for i in syn.ids))
    kinds.append(load_dataset('crack500', fold, split='list.txt'))   # binary masks: never a class beyond 'crack'
    for ds in kinds:
        back = pickle.loads(pickle.dumps(ds))
        assert back.ids == ds.ids and back.classes == ds.classes
        assert np.array_equal(back[1].mask, ds[1].mask) and np.array_equal(back[1].image, ds[1].image)
