"""End-to-end tests of defect_sam.evaluation.evaluate with toy Segmenters on synthetic DefectDatasets (and real samples when present)."""
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from defect_sam.core.errors import ConfigError, DataError
from defect_sam.data.sample import DefectDataset, Sample
from defect_sam.evaluation.evaluate import EvalResult, calibrate, calibrate_saved, evaluate, evaluate_saved, iter_predictions, load_probabilities
from defect_sam.evaluation.metrics import CALIBRATION_METRICS, SUMMARY_KEYS
from defect_sam.models.base import Segmenter
from defect_sam.evaluation.prompts import Prompts, boxes_from_mask


def synthetic_dataset(n=8, H=32, W=96, n_classes=2, seed=0, ids=None, name='synthetic'):
    "Images with blobs of random classes (a third defect-free); ids may be given (odd characters welcome)."
    rng = np.random.default_rng(seed)
    ids = ids or [f'{k:03d}' for k in range(n)]
    masks = {}
    for k, i in enumerate(ids):
        m = np.zeros((H, W), np.uint8)
        if k % 3:
            for _ in range(rng.integers(1, 3)):
                y, x = rng.integers(0, H - 10), rng.integers(0, W - 20)
                m[y:y + rng.integers(3, 10), x:x + rng.integers(5, 20)] = rng.integers(1, n_classes + 1)
        masks[i] = m
    imgs = {i: rng.integers(0, 120, (H, W, 3), dtype=np.uint8) for i in ids}
    for i in ids: imgs[i][masks[i] > 0] += 120
    return DefectDataset(ids, lambda i: Sample(i, imgs[i].copy(), masks[i].copy()),
                         ['background'] + [f'c{c}' for c in range(1, n_classes + 1)], name=name)


class Oracle(Segmenter):
    "Returns the ground truth as probabilities (looked up by image content); optionally softened."
    def __init__(self, dataset, C=1, soft=False):
        self.masks = {hashlib.sha1(s.image.tobytes()).hexdigest(): s.mask for s in dataset}
        self.C, self.soft, self.calls = C, soft, 0
    def probs(self, image):
        m = self.masks[hashlib.sha1(image.tobytes()).hexdigest()]
        rng = np.random.default_rng(int(image[0, 0, 0]))
        noise = rng.uniform(0, 0.35, m.shape) if self.soft else 0
        if self.C == 1: return np.clip((m > 0) * (0.6 if self.soft else 1.0) + noise, 0, 1).astype(np.float32)
        return np.clip(np.stack([(m == c) * (0.6 if self.soft else 1.0) for c in range(1, self.C + 1)]) + noise, 0, 1).astype(np.float32)
    def predict(self, image, **kw):
        self.calls += 1
        return self.probs(image)


class PromptedOracle(Oracle):
    "Ground truth inside the prompt boxes, each box's pixels assigned to the prompt's class."
    needs_prompts = True
    def __init__(self, dataset, C=1):
        super().__init__(dataset, C)
        self.seen = []
    def predict(self, image, boxes=None, points=None, labels=None, classes=None, num_classes=None):
        self.calls += 1
        self.seen.append(dict(boxes=boxes, points=points, classes=classes, num_classes=num_classes))
        m = self.masks[hashlib.sha1(image.tobytes()).hexdigest()]
        out = np.zeros((num_classes or 1,) + m.shape, np.float32)
        if boxes is None: boxes = np.concatenate([points[:, 0] - 2, points[:, 0] + 2], 1).clip(0)
        for k, (x0, y0, x1, y1) in enumerate(np.round(boxes).astype(int)):
            c = 0 if classes is None else classes[k] - 1
            sel = m[y0:y1 + 1, x0:x1 + 1] > 0 if classes is None else m[y0:y1 + 1, x0:x1 + 1] == classes[k]
            out[c, y0:y1 + 1, x0:x1 + 1] = np.maximum(out[c, y0:y1 + 1, x0:x1 + 1], sel)
        return out[0] if num_classes is None else out


def drop(t, cols=('infer_s',)): return t.drop(columns=list(cols))


def test_oracle_scores_perfectly_binary_and_class_aware():
    ds = synthetic_dataset()
    r = evaluate(Oracle(ds), ds, progress=False)
    assert isinstance(r, EvalResult) and list(r.summary) == list(SUMMARY_KEYS)
    perfect = {k: 0.0 if k == 'false_alarm_rate' else 1.0 for k in SUMMARY_KEYS}
    assert r.summary == perfect, r.summary
    rc = evaluate(Oracle(ds, C=2), ds, class_aware=True, progress=False)
    assert rc.summary == perfect
    assert set(rc.extras['per_class']) == {'c1', 'c2'} and 'iou_c1' in rc.table


def test_prompted_model_skips_empty_prompts_and_sees_identical_prompts():
    ds = synthetic_dataset(n=9)
    a, b = PromptedOracle(ds), PromptedOracle(ds)
    ra = evaluate(a, ds, prompt='points_3', prompt_kwargs={'min_area': 1, 'n_neg': 1}, progress=False)
    evaluate(b, ds, prompt='points_3', prompt_kwargs={'min_area': 1, 'n_neg': 1}, seed=42, progress=False)
    empty = [not s.mask.any() for s in ds]
    assert ra.table.prompt_empty.tolist() == empty and ra.extras['n_empty_prompts'] == sum(empty)
    assert a.calls == len(ds) - sum(empty)
    assert ra.table.infer_s.isna().tolist() == empty
    for x, y in zip(a.seen, b.seen): np.testing.assert_array_equal(x['points'], y['points'])
    c = PromptedOracle(ds)
    evaluate(c, ds, prompt='points_3', prompt_kwargs={'min_area': 1, 'n_neg': 1}, seed=7, progress=False)
    assert any(not np.array_equal(x['points'], y['points']) for x, y in zip(a.seen, c.seen))


def test_class_aware_prompts_give_each_mask_its_class():
    ds = synthetic_dataset(n=9, n_classes=3)
    m = PromptedOracle(ds, C=3)
    r = evaluate(m, ds, prompt='box', class_aware=True, prompt_kwargs={'min_area': 1}, progress=False)
    assert r.summary['kaggle_dice'] == 1.0 and r.summary['mIoU'] == 1.0
    assert all(s['num_classes'] == 3 and s['classes'] is not None for s in m.seen)


def test_detector_prompts_from_a_callable():
    ds = synthetic_dataset(n=9)
    def detector(image):
        bright = image.min(2) >= 120
        return Prompts(boxes=boxes_from_mask(bright, min_area=1), kind='box', source='toy_detector')
    m = PromptedOracle(ds)
    r = evaluate(m, ds, prompt_source=detector, progress=False)
    assert r.extras['prompt_source'] == 'toy_detector'
    assert r.summary['mIoU'] == 1.0 and r.extras['n_empty_prompts'] == 3
    with pytest.raises(DataError, match='not Prompts'):
        evaluate(PromptedOracle(ds), ds, prompt_source=lambda im: None, progress=False)
    with pytest.raises(ConfigError, match="prompt_source must be 'gt'"):
        evaluate(PromptedOracle(ds), ds, prompt='box', prompt_source='yolo', progress=False)


def test_prompt_source_of_prompt_free_models():
    "A prompt-free model records no prompt source unless it reports one (a detector pipeline), never 'gt'."
    ds = synthetic_dataset()
    assert evaluate(Oracle(ds), ds, progress=False).extras['prompt_source'] is None
    class Pipeline(Oracle):
        def info(self): return {**super().info(), 'prompt_source': 'yolo_det'}
    assert evaluate(Pipeline(ds), ds, progress=False).extras['prompt_source'] == 'yolo_det'
    assert evaluate(PromptedOracle(ds), ds, prompt='box', progress=False).extras['prompt_source'] == 'gt'


def test_batching_gives_the_same_results():
    ds = synthetic_dataset(n=10)
    one = evaluate(Oracle(ds, soft=True), ds, progress=False)
    many = evaluate(Oracle(ds, soft=True), ds, batch_size=4, progress=False)
    pd.testing.assert_frame_equal(drop(one.table), drop(many.table))
    assert one.summary == many.summary and many.extras['timing']['batch_size'] == 4
    pm = PromptedOracle(ds)
    rp = evaluate(pm, ds, prompt='box', batch_size=3, progress=False)
    assert pm.calls < 7 and rp.summary == evaluate(PromptedOracle(ds), ds, prompt='box', progress=False).summary


@pytest.mark.parametrize('class_aware', [False, True])
def test_saved_predictions_reevaluate_exactly(tmp_path, class_aware):
    ids = ['a/b', 'c d', '007', 'x.y', 'ümlaut', '..', 'e']
    ds = synthetic_dataset(ids=ids, H=24, W=40)
    C = 2 if class_aware else 1
    pp = 'open3,fill,min5'
    live = evaluate(Oracle(ds, C=C, soft=True), ds, threshold=0.55, postprocess=pp, class_aware=class_aware,
                    save_dir=tmp_path, n_figures=3, progress=False)
    index = pd.read_csv(tmp_path / 'predictions' / 'index.csv', dtype={'id': str}, keep_default_na=False)
    assert index.id.tolist() == ids and index.prob_file.nunique() == len(ids)
    assert all(f.endswith('.prob.npz' if class_aware else '.prob.png') for f in index.prob_file)
    again = evaluate_saved(tmp_path, ds, threshold=0.55, postprocess=pp, progress=False)
    assert again.summary == live.summary
    pd.testing.assert_frame_equal(drop(again.table, ['infer_s', 'n_prompts']), drop(live.table, ['infer_s', 'n_prompts']))
    assert again.table.id.tolist() == ids
    np.testing.assert_allclose(again.table.infer_s, live.table.infer_s)
    # another threshold without the model equals a live run at that threshold
    for t in (0.3, 0.8):
        a = evaluate_saved(tmp_path, ds, threshold=t, progress=False).summary
        b = evaluate(Oracle(ds, C=C, soft=True), ds, threshold=t, class_aware=class_aware, progress=False).summary
        assert a == b
    # subsets work; saved masks are the thresholded, post-processed predictions
    sub = ds.subset(ids[2:4])
    assert len(evaluate_saved(tmp_path, sub, threshold=0.55, postprocess=pp, progress=False).table) == 2
    m = np.array(Image.open(tmp_path / 'predictions' / index.mask_file[1]))
    assert m.dtype == np.uint8 and m.shape == (24, 40) and m.max() <= C
    assert (tmp_path / 'figures' / 'metric_distributions.png').exists()
    assert len(live.extras['figures']) == 3


def test_calibration_live_saved_and_in_one_pass_agree(tmp_path):
    val = synthetic_dataset(n=9, seed=3)
    th = [0.2, 0.4, 0.5, 0.65, 0.9]
    c1 = calibrate(Oracle(val, soft=True), val, thresholds=th, progress=False)
    r = evaluate(Oracle(val, soft=True), val, save_dir=tmp_path, n_figures=0, calibrate_metric='mIoU', thresholds=th, progress=False)
    c2 = calibrate_saved(tmp_path, val, thresholds=th, progress=False)
    pd.testing.assert_frame_equal(c1.table, c2.table); pd.testing.assert_frame_equal(c1.table, r.calibration.table)
    assert c1.threshold == r.extras['calibration']['threshold']
    assert (tmp_path / 'calibration.csv').exists()
    back = EvalResult.load(tmp_path)
    assert back.calibration.threshold == c1.threshold and back.summary == r.summary
    pd.testing.assert_frame_equal(back.calibration.table, r.calibration.table)
    # soft oracle: defects >= 0.6, background < 0.35 -> any threshold in (0.35, 0.6] is perfect; ties go to 0.5
    assert c1.threshold == 0.5 and c1.score == 1.0
    # with post-processing, every threshold's row equals a real evaluation at that threshold
    pp = 'close3,min4'
    c3 = calibrate(Oracle(val, soft=True), val, thresholds=th, postprocess=pp, metric='pooled_IoU', progress=False)
    for t in th:
        s = evaluate(Oracle(val, soft=True), val, threshold=t, postprocess=pp, progress=False).summary
        for k in CALIBRATION_METRICS: assert c3.table.loc[t, k] == pytest.approx(s[k], abs=1e-12)


class Broken(Segmenter):
    def __init__(self, out): self.out = out
    def predict(self, image, **kw):
        if isinstance(self.out, Exception): raise self.out
        return self.out(image)


@pytest.mark.parametrize('out, err, msg', [
    (lambda im: im[..., 0].astype(np.float32), DataError, 'must lie in [0, 1]'),
    (lambda im: np.zeros(im.shape[:2]), None, None),
    (lambda im: np.full(im.shape[:2], np.nan, np.float32), DataError, 'not be NaN'),
    (lambda im: np.zeros((5, 5), np.float32), DataError, "on image '000': probabilities of shape (5, 5)"),
    (lambda im: [0.5], DataError, 'predict returned list'),
    (lambda im: np.zeros(im.shape[:2], np.uint8), DataError, 'floats'),
    (RuntimeError('CUDA out of memory'), RuntimeError, 'out of memory'),
])
def test_bad_model_outputs_fail_loudly(out, err, msg):
    ds = synthetic_dataset(n=3)
    if err is None:
        assert evaluate(Broken(out), ds, progress=False).summary['Recall_pooled'] == 0.0
        return
    with pytest.raises(err, match=msg.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[').replace(']', r'\]')):
        evaluate(Broken(out), ds, progress=False)


def test_configuration_errors():
    ds = synthetic_dataset(n=3)
    with pytest.raises(ConfigError, match='takes no prompts'): evaluate(Oracle(ds), ds, prompt='box', progress=False)
    with pytest.raises(ConfigError, match='needs prompts'): evaluate(PromptedOracle(ds), ds, progress=False)
    with pytest.raises(ConfigError, match='cannot be class-aware'):
        evaluate(PromptedOracle(ds, 2), ds, prompt='grid', class_aware=True, progress=False)
    with pytest.raises(ConfigError, match='threshold'): evaluate(Oracle(ds), ds, threshold=2, progress=False)
    with pytest.raises(ConfigError, match='bad post-processing'): evaluate(Oracle(ds), ds, postprocess='blur3', progress=False)
    with pytest.raises(ConfigError, match='needs CxHxW'): evaluate(Oracle(ds), ds, class_aware=True, progress=False)
    with pytest.raises(DataError, match='no images'): evaluate(Oracle(ds), ds.subset([]), progress=False)


def test_evaluation_streams_large_images():
    "120 strips of 256x1600: holding their probabilities would take ~200 MiB; the evaluation stays far below."
    H, W, n = 256, 1600, 120
    def load(i):
        k = int(i)
        m = np.zeros((H, W), np.uint8); m[100:120, 10 * k:10 * k + 400] = 1
        return Sample(i, np.full((H, W, 3), k, np.uint8), m)
    ds = DefectDataset([str(k) for k in range(n)], load, ['background', 'defect'])
    class Line(Segmenter):
        def predict(self, image, **kw):
            k = int(image[0, 0, 0]); p = np.full((H, W), 0.1, np.float32); p[100:121, 10 * k:10 * k + 400] = 0.9
            return p
    r = evaluate(Line(), ds, progress=False, skeleton_radius=None)
    assert r.extras['memory']['peak_rss_increase_mb'] < 100, r.extras['memory']
    assert r.summary['mIoU'] == pytest.approx(20 / 21)


def _read_neu(root, split, names):
    img = np.array(Image.open(root / 'img_dir' / split / f'{names}.jpg').convert('RGB'))
    return img, np.array(Image.open(root / 'ann_dir' / split / f'{names}.png'))


def test_real_neu_samples(shared_data):
    root = shared_data / 'neu_seg_mini'
    ids = sorted(p.stem for p in (root / 'ann_dir' / 'val').glob('*.png'))[:12]
    classes = [l.split()[-1] for l in (root / 'classes.txt').read_text().splitlines() if l.strip()]
    ds = DefectDataset(ids, lambda i: Sample(i, *_read_neu(root, 'val', i)), classes, name='neu_seg_mini')
    assert all(s.mask.max() <= 3 for s in ds)
    r = evaluate(Oracle(ds, C=3), ds, class_aware=True, progress=False)
    assert r.summary['kaggle_dice'] == 1.0 and r.summary['mIoU'] == 1.0
    pm = PromptedOracle(ds, C=3)
    rb = evaluate(pm, ds, prompt='box', class_aware=True, progress=False)   # min_area 10 drops specks only
    assert rb.summary['Precision_pooled'] == 1.0 and 0.9 < rb.summary['Recall_pooled'] <= 1.0
    assert rb.extras['n_empty_prompts'] == 0     # every NEU image has a defect


def test_real_crack500_skeleton(shared_data):
    root = shared_data / 'crack500_mini'
    pairs = [l.split() for l in (root / 'test.txt').read_text().splitlines() if l.strip()][:10]
    def load(i):
        im, m = pairs[int(i)]
        return Sample(i, np.array(Image.open(root / im).convert('RGB')), (np.array(Image.open(root / m).convert('L')) > 127).astype(np.uint8))
    ds = DefectDataset([str(k) for k in range(len(pairs))], load, ['background', 'crack'], name='crack500_mini')
    class Shifted(Oracle):
        def predict(self, image, **kw): return np.roll(self.probs(image), 2, axis=0)
    r = evaluate(Shifted(ds), ds, progress=False)
    r0 = evaluate(Shifted(ds), ds, skeleton_radius=0, progress=False)
    # a 2-pixel shift: the 2-pixel-tolerant skeleton IoU forgives it, exact skeleton overlap and area IoU do not
    assert r.summary['skeleton_IoU'] > max(r.summary['mIoU'], r0.summary['skeleton_IoU'] + 0.3), (r.summary, r0.summary)
    assert r.summary['mIoU'] == r0.summary['mIoU']
