"""YOLO baselines: offline training and prediction, the mask -> labels -> ultralytics -> prediction -> mask round trip."""
import socket
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from defect_sam.core.errors import ConfigError, DataError
from defect_sam.data.sample import DefectDataset, Sample
from defect_sam.data.load import load_dataset
from defect_sam.data.splits import split_dataset
from defect_sam.evaluation.evaluate import evaluate
from defect_sam.data.transforms import export_yolo
from defect_sam.models.yolo import YoloSegmenter, boxes_to_prob, build_yolo, masks_to_prob, yolo_weights


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('DEFECT_SAM_CACHE', str(tmp_path/'cache'))
    return tmp_path


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt fails and is recorded (as on an offline machine); the offline env vars are unset so nothing
    relies on them. ultralytics is imported first: its import-time DNS probe (`is_online`, skipped with YOLO_OFFLINE=1)
    is ultralytics' own and not what is tested here."""
    import ultralytics.utils  # noqa: F401
    calls = []
    def refuse(*a, **k):
        calls.append(a[:2]); raise OSError('network blocked by test')
    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket.socket, 'connect_ex', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)
    monkeypatch.setattr(socket, 'getaddrinfo', refuse)
    for k in ('YOLO_OFFLINE', 'HF_HUB_OFFLINE'): monkeypatch.delenv(k, raising=False)
    return calls


def _synthetic(n=12, binary=True, seed=0):
    ds = load_dataset('synthetic', n_images=n, seed=seed, height=64, width=256, binary=binary)
    return split_dataset(ds, (0.5, 0.25, 0.25), seed=seed)


def test_train_predict_offline(cache, no_network, monkeypatch):
    """A 4-class detector starting from an 80-class checkpoint (as from COCO weights) trains (steps -> 1 epoch) and
    predicts with every connection refused; nothing lands in the cwd."""
    monkeypatch.chdir(cache)
    sp = _synthetic(12, binary=False)
    coco = YoloSegmenter('detect', imgsz=64, num_classes=80).save_weights(cache/'cache'/'coco_like.pt')
    m = build_yolo('detect', weights=coco, imgsz=64, num_classes=4, conf=0.0)
    with pytest.raises(ConfigError, match='predicts 80 classes'): m.predict(sp['test'][0].image)
    r = m.train(sp['train'], sp['val'], steps=1, lr=1e-3, batch=4, out_dir=cache/'run', seed=0)
    assert r.epochs == 1 and Path(r.weights).is_file() and set(r.metrics) == {'val'}
    assert all(0 <= v <= 1 for v in r.metrics['val'].values())
    s = sp['test'][0]
    p = m.predict(s.image)
    assert p.shape == (4,) + s.shape and p.dtype == np.float32 and 0 <= p.min() <= p.max() <= 1
    assert sorted(x.name for x in cache.iterdir()) == ['cache', 'run']          # no runs/, no weights, no fonts in the cwd
    assert no_network == []                                                   # nothing even tried to connect
    info = m.info()
    assert info['trained'] == r.weights and info['det_metrics'] == r.metrics and info['pretrained'] is True
    assert r.args['pretrained'] is True and len(m.yolo.model.names) == 4


def test_auto_weights_fall_back_offline(cache, no_network, monkeypatch):
    monkeypatch.chdir(cache)
    with pytest.warns(UserWarning, match='network is unavailable'):
        src, pretrained, note = yolo_weights('segment', 'n', 'auto', timeout=0.5)
    assert (src, pretrained) == ('yolov8n-seg.yaml', False) and 'random init' in note
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        m = build_yolo('segment', weights='auto', imgsz=64)
    assert m.info()['pretrained'] is False and m.info()['weights_note'] == note and m.info()['weights'] == 'auto'


def test_auto_weights_use_a_cached_checkpoint(cache, no_network, monkeypatch):
    "'auto' finds a COCO checkpoint already in cache_dir('yolo') without the network; it is not usable before training."
    monkeypatch.chdir(cache)
    coco = YoloSegmenter('detect', imgsz=64, num_classes=80)
    coco.save_weights(cache/'cache'/'yolo'/'yolov8n.pt')
    m = build_yolo('detect', weights='auto', imgsz=64)
    assert m.pretrained and m.source.endswith('yolov8n.pt')
    with pytest.raises(ConfigError, match='predicts 80 classes'):
        m.predict(np.zeros((64, 64, 3), np.uint8))


def _results(image, boxes, conf, cls, masks=None):
    from ultralytics.engine.results import Results
    data = torch.tensor(np.c_[np.asarray(boxes, np.float32).reshape(-1, 4), conf, cls], dtype=torch.float32)
    return Results(np.ascontiguousarray(image[..., ::-1]), path='x.png', names={0: 'defect'}, boxes=data,
                   masks=None if masks is None else torch.as_tensor(masks, dtype=torch.float32))


def _labels_from_export(data_yaml, split, task):
    "Labels as ultralytics' own dataset reader parses the exported files: im_file -> (cls, boxes xyxy px, polygons px)."
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset
    data = check_det_dataset(str(data_yaml))
    d = YOLODataset(img_path=data[split], data=data, task=task, imgsz=64, augment=False)
    out = {}
    for l in d.labels:
        H, W = l['shape']
        xywh = l['bboxes'].reshape(-1, 4) * [W, H, W, H]
        xyxy = np.c_[xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2]
        polys = [s * [W, H] for s in l['segments']]
        out[Path(l['im_file']).stem] = (l['cls'].ravel().astype(int), xyxy, polys)
    return out


@pytest.mark.parametrize('task', ['detect', 'segment'])
def test_round_trip_mask_labels_prediction_mask(cache, task):
    """mask -> export_yolo labels -> ultralytics' reader -> ultralytics Results (as if predicted) -> probability map
    -> evaluate: the ground truth comes back (exactly for boxes of rectangular blobs, closely for polygons)."""
    from ultralytics.data.utils import polygon2mask
    sp = _synthetic(16)
    yaml_path = export_yolo(sp, cache/'yolo', task=task, min_width=1)   # exact contours: thin parts not widened
    labels = _labels_from_export(yaml_path, 'train', task)
    test = sp['train']
    m = YoloSegmenter(task, imgsz=64, conf=0.0)
    fake = {}
    for s in test:
        cls, xyxy, polys = labels[Path(s.id).stem]
        H, W = s.shape
        n, lab, stats, _ = cv2.connectedComponentsWithStats((s.mask > 0).astype(np.uint8), connectivity=8)
        assert len(cls) == n - 1                                           # one label per connected component
        if task == 'detect':
            want = np.zeros(s.shape, bool)
            for x, y, w, h, a in stats[1:]: want[y:y + h, x:x + w] = True
            assert (boxes_to_prob(xyxy, np.ones(len(xyxy)), s.shape) > 0.5).tolist() == want.tolist()
            fake[s.id] = _results(s.image, xyxy, np.full(len(cls), 0.9), cls)
        else:
            masks = np.stack([polygon2mask((H, W), [np.round(p).astype(np.int32).ravel()]) for p in polys]) if polys else np.zeros((0, H, W))
            fake[s.id] = _results(s.image, xyxy, np.full(len(cls), 0.9), cls, masks)
    order = iter(test.ids)
    m.yolo.predict = lambda imgs, **kw: [fake[next(order)] for _ in imgs]
    res = evaluate(m, test, progress=False)
    t = res.table.set_index('id')
    defect = t[t.gt_defect]
    assert len(defect) >= 3 and not t[~t.gt_defect].pred_defect.any()
    if task == 'detect':   # boxes of the components: IoU is the mask's share of its bounding boxes
        for s in test:
            if s.has_defect:
                n, lab, stats, _ = cv2.connectedComponentsWithStats((s.mask > 0).astype(np.uint8), connectivity=8)
                box = np.zeros(s.shape, bool)
                for x, y, w, h, a in stats[1:]: box[y:y + h, x:x + w] = True
                assert t.loc[s.id, 'iou'] == pytest.approx((s.mask > 0).sum() / box.sum(), abs=1e-6)
    else: assert defect.iou.min() > 0.9


def test_result_maps_match_conversion():
    "The ultralytics Result -> map path applies confidence, class and the max rule."
    img = np.zeros((8, 12, 3), np.uint8)
    m = YoloSegmenter('segment', imgsz=64, num_classes=2)
    mk = np.zeros((2, 8, 12)); mk[0, :4, :4] = 1; mk[1, 2:6, 2:6] = 1
    r = _results(img, [[0, 0, 4, 4], [2, 2, 6, 6]], [0.3, 0.8], [1, 0], mk)
    p = m._to_prob(r)
    assert p.shape == (2, 8, 12)
    np.testing.assert_allclose(p[1, :4, :4], 0.3); np.testing.assert_allclose(p[0, 2:6, 2:6], 0.8)
    np.testing.assert_array_equal(p, masks_to_prob(mk, [0.3, 0.8], [1, 0], 2))
    d = YoloSegmenter('detect', imgsz=64)
    np.testing.assert_array_equal(d._to_prob(_results(img, [[1, 1, 3, 5]], [0.6], [0])),
                                  boxes_to_prob([[1, 1, 3, 5]], [0.6], (8, 12)))
    assert d._to_prob(_results(img, np.zeros((0, 4)), [], [])).sum() == 0


def test_bad_inputs(cache):
    with pytest.raises(ConfigError, match='task'): build_yolo('classify')
    with pytest.raises(ConfigError, match='conf'): build_yolo('detect', conf=1.5)
    with pytest.raises(ConfigError, match='num_classes'): build_yolo('detect', num_classes=0)
    m = build_yolo('detect', imgsz=64)
    sp = _synthetic(8, binary=False)
    with pytest.raises(ConfigError, match='unknown ultralytics training arguments'):
        m.train(sp['train'], sp['val'], epochs=1, out_dir=cache/'r', mosiac=0)
    with pytest.raises(ConfigError, match='pass them by name'):
        m.train(sp['train'], sp['val'], epochs=1, out_dir=cache/'r', lr0=0.1)
    with pytest.raises(ConfigError, match="'auto'"):
        m.train(sp['train'], sp['val'], epochs=1, out_dir=cache/'r', optimizer='auto')
    with pytest.raises(ConfigError, match='defect classes'):
        build_yolo('detect', num_classes=2).train(sp['train'], sp['val'], epochs=1, out_dir=cache/'r')
    with pytest.raises(DataError, match='not found'): m.load_weights(cache/'missing.pt')
    with pytest.raises(DataError, match='HxWx3'): m.predict(np.zeros((4, 4), np.uint8))
    assert m.predict_batch([]) == []


class _RecordingSam:
    "A prompted stand-in for SAM2 that fills each box with its class's channel and records its calls."
    needs_prompts = True
    def __init__(self): self.calls = []
    def predict(self, image, **prompts): return self.predict_batch([image], [prompts])[0]
    def predict_batch(self, images, prompts):
        self.calls.append(len(images))
        out = []
        for im, p in zip(images, prompts):
            C = p.get('num_classes') or 1
            cls = p.get('classes', np.ones(len(p['boxes']), int)) - 1
            out.append(boxes_to_prob(np.asarray(p['boxes']) + [0, 0, 1, 1], np.ones(len(cls)), im.shape[:2], cls, C))
        return out
    def info(self): return {'model': 'recording_sam', 'pretrained': False}


def _fixed_detector(task, boxes_per_image, num_classes=1):
    "A YoloSegmenter whose ultralytics predictor returns the given (xyxy, conf, cls) per image, in call order."
    m = YoloSegmenter(task, imgsz=64, num_classes=num_classes)
    it = iter(boxes_per_image)
    def predict(imgs, **kw):
        out = []
        for im in imgs:
            b, c, k = next(it)
            r = _results(im[..., ::-1], b, c, k)
            keep = r.boxes.conf >= kw['conf']
            out.append(r[keep.cpu().numpy()] if len(r.boxes) else r)
        return out
    m.yolo.predict = predict
    return m


def test_pipeline_prompts_threshold_classes_and_empty_images():
    from defect_sam.models.yolo import YoloSam2
    img = np.zeros((20, 30, 3), np.uint8)
    dets = [(np.array([[2, 3, 8, 9], [10, 0, 20, 5]], np.float32), [0.9, 0.1], [2, 0]),    # one box passes conf
            (np.zeros((0, 4), np.float32), [], []),                                        # nothing detected
            (np.array([[0, 0, 30, 20]], np.float32), [0.2], [1])]                          # below conf: no prompt
    sam = _RecordingSam()
    pipe = YoloSam2(_fixed_detector('detect', dets, num_classes=3), sam, conf=0.25)
    out = pipe.predict_batch([img, img, img])
    assert sam.calls == [1]                                   # SAM2 only sees the image that has a box
    assert [o.shape for o in out] == [(3, 20, 30)] * 3 and out[1].sum() == 0 and out[2].sum() == 0
    assert out[0][2, 3:9, 2:8].min() == 1 and out[0][2].sum() == 36 and out[0][:2].sum() == 0   # class 3, inclusive box
    pr = YoloSam2(_fixed_detector('detect', dets[:1], num_classes=3), sam, conf=0.25).prompts(img)
    assert pr.source == 'yolo_det' and pr.classes.tolist() == [3] and pr.boxes.tolist() == [[2, 3, 7, 8]]
    info = pipe.info()
    assert info['prompt_source'] == 'yolo_det' and info['detector']['task'] == 'detect' and info['sam']['model'] == 'recording_sam'
    with pytest.raises(ConfigError, match='makes its own prompts'): pipe.predict(img, boxes=np.zeros((1, 4)))


def test_pipeline_through_evaluate_both_ways(cache):
    "As a Segmenter and as a prompt source the pipeline scores the same; the source is recorded either way."
    from defect_sam.models.yolo import YoloSam2
    sp = _synthetic(12)
    test = sp['test']
    dets = []
    for s in test:   # the detector 'finds' each component's box (conf 0.8) plus a low-confidence false box
        n, lab, stats, _ = cv2.connectedComponentsWithStats((s.mask > 0).astype(np.uint8), connectivity=8)
        b = [[x, y, x + w, y + h] for x, y, w, h, a in stats[1:]] + [[0, 0, 5, 5]]
        dets.append((np.array(b, np.float32), [0.8] * (n - 1) + [0.1], [0] * n))
    r1 = evaluate(YoloSam2(_fixed_detector('detect', dets), _RecordingSam()), test, progress=False)
    p2 = YoloSam2(_fixed_detector('detect', dets), _RecordingSam())
    r2 = evaluate(p2.sam, test, prompt_source=p2.prompts, progress=False)
    for k, v in r1.summary.items(): assert v == pytest.approx(r2.summary[k], nan_ok=True), k
    assert r1.extras['model']['prompt_source'] == 'yolo_det' and r2.extras['prompt_source'] == 'yolo_det'
    t = r2.table.set_index('id')
    assert (t.prompt_empty == ~t.gt_defect).all() and (t.iou[t.gt_defect] > 0.3).all()


def test_pipeline_with_real_sam2_offline(cache, no_network):
    "The registry's yolo_sam2 with a randomly initialised SAM2 runs end to end through evaluate, offline."
    from defect_sam.models.registry import build_model
    sp = _synthetic(8)
    test = sp['test']
    dets = [(np.array([[0, 0, 40, 30]], np.float32), [0.9], [0]) if k % 2 == 0 else (np.zeros((0, 4), np.float32), [], [])
            for k in range(len(test))]
    m = build_model('yolo_sam2', detector=_fixed_detector('detect', dets), weights='random', image_size=256)
    r = evaluate(m, test, progress=False)
    t = r.table
    assert len(t) == len(test) and not t.pred_defect.iloc[1::2].any()          # no box: empty prediction
    assert r.extras['model']['prompt_source'] == 'yolo_det' and r.extras['model']['sam']['weights'] == 'random'
    assert no_network == []
