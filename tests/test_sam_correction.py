"""Iterative correction: click placement and assignment, mask_input feedback, the dataset study."""
import numpy as np
import pytest

from defect_sam.core.errors import ConfigError, DataError
from defect_sam.data.sample import Sample
from defect_sam.models.sam.inference import SamSegmenter
from defect_sam.models.sam.correction import correction_curve, correction_study
from defect_sam.models.sam.correction import next_click


class Spy:
    "Wraps a segmenter and records every predict_prompts call."
    def __init__(self, seg): self.seg, self.calls, self.tiling = seg, [], None
    def predict_prompts(self, image, **kw):
        self.calls.append(kw)
        return self.seg.predict_prompts(image, **kw)


class Scripted:
    "Returns fixed per-call probability maps, to steer where the errors are."
    tiling = None
    def __init__(self, maps): self.maps, self.calls = list(maps), []
    def predict_prompts(self, image, **kw):
        self.calls.append(kw)
        return dict(probs=self.maps.pop(0)[None].astype(np.float32), low_res=np.full((1, 4, 4), len(self.calls), np.float32))


def test_clicks_feed_back_logits_and_touch_one_prompt():
    seg = SamSegmenter('tiny', weights='random', image_size=128)
    img = np.random.default_rng(0).integers(0, 255, (64, 160, 3), dtype=np.uint8)
    gt = np.zeros((64, 160), np.uint8); gt[10:30, 10:60] = 1; gt[40:60, 100:150] = 1
    spy = Spy(seg)
    c = correction_curve(spy, img, gt, 'box', k=3)
    assert len(c) == 4 and all(0 <= v <= 1 for v in c)
    first, later = spy.calls[:2], spy.calls[2:]
    assert all(k['mask_input'] is None and k['boxes'].shape == (1, 4) for k in first)       # one box per defect
    assert len(later) <= 3
    for k in later:                                                                         # one prompt re-decoded per click
        assert k['mask_input'].shape == (1, 32, 32) and k['points'].shape[0] == 1
    n_pts = [k['points'].shape[1] for k in later]
    assert n_pts == sorted(n_pts)                                                           # clicks accumulate


def test_click_assignment_and_new_prompt_for_small_defect():
    H, W = 40, 80
    gt = np.zeros((H, W), np.uint8); gt[5:25, 5:30] = 1; gt[30:33, 60:63] = 1                # a 9-pixel defect: no first prompt
    full = np.zeros((H, W)); full[5:25, 5:30] = 1
    fp = full.copy(); fp[0:40, 40:56] = 1                                                    # a big false positive
    seg = Scripted([full, fp, full, full])
    c = correction_curve(seg, np.zeros((H, W, 3), np.uint8), gt, 'box', k=3, min_area=10)
    assert len(seg.calls[0]['boxes']) == 1 and seg.calls[0]['points'] is None
    # click 1: the 9-pixel defect is missed -> a positive click starts a new prompt (no mask_input)
    k1 = seg.calls[1]
    assert k1['boxes'] is None and k1['mask_input'] is None and k1['labels'].tolist() == [[1]]
    assert tuple(k1['points'][0, 0]) == (61, 31)
    # click 2: the new prompt now predicts a false-positive band -> a negative click on it, with its logits fed back
    k2 = seg.calls[2]
    assert k2['labels'].tolist() == [[1, 0]] and k2['mask_input'][0, 0, 0] == 2
    assert len(c) == 4


def test_next_click_prefers_largest_region_and_innermost_pixel():
    gt = np.zeros((30, 30), bool); gt[2:12, 2:12] = True
    pred = np.zeros_like(gt); pred[20:29, 15:29] = True                                      # FP 9x14 = 126 > FN 100
    assert next_click(pred, gt) == (21, 24, 0)
    pred[:] = False; pred[20:22, 20:22] = True
    assert next_click(pred, gt)[2] == 1


def test_study_and_errors():
    gt = np.zeros((48, 96), np.uint8); gt[10:30, 20:70] = 1
    rng = np.random.default_rng(1)
    perfect = Scripted([gt.astype(float)] * 10)
    table, curve = correction_study(perfect, [Sample('a', rng.integers(0, 255, (48, 96, 3), dtype=np.uint8), gt),
                                              Sample('b', np.zeros((48, 96, 3), np.uint8), np.zeros((48, 96), np.uint8))], k=2)
    assert list(table['id']) == ['a'] and list(table.iloc[0][['iou_0', 'iou_1', 'iou_2']]) == [1.0, 1.0, 1.0]
    assert table.iloc[0]['clicks_to_0.9'] == 0 and list(curve) == [1.0, 1.0, 1.0]
    assert len(perfect.calls) == 1                                                           # perfect: no click, no call
    with pytest.raises(ConfigError, match='start'): correction_curve(perfect, np.zeros((48, 96, 3), np.uint8), gt, start='grid')
    with pytest.raises(DataError, match='differ in size'): correction_curve(perfect, np.zeros((40, 96, 3), np.uint8), gt)
