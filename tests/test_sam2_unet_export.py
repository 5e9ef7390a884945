"""`defect-sam export` and `predict` of SAM2-UNet runs (`sam2_unet`: LoRA in the Hiera trunk; `sam2_unet_full`: the trunk
trained), tiny (SAM2-tiny trunk, random weights, 2 steps, 6 synthetic strips): the model is rebuilt with the run's trunk
size and weights and reproduces its saved probabilities, the ONNX graph matches it within 1e-3 (the U-Nets' parity
test), and predict from the exp_id and from the graph write masks that differ only at pixels next to the threshold."""
import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from defect_sam.cli import main
from defect_sam.evaluation.evaluate import load_probabilities, quantize
from defect_sam.experiments.data import experiment_data
from defect_sam.experiments.run import run_experiment
from defect_sam.outputs.export import OnnxUnet, load_run_model

TINY = dict(weights='random', sam2_size='tiny', img_size=64, device='cpu', n_figures=0, steps=2, batch_size=2, class_aware=True,
            dataset_options={'n_images': 6, 'height': 32, 'width': 96}, split=[0.5, 0.25, 0.25])
NEAR = 2 / 255 + 1e-3   # one 8-bit level (batch composition) plus onnxruntime's tolerance, with room to spare


@pytest.fixture(scope='module', params=['sam2_unet', 'sam2_unet_full'])
def run(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    res = run_experiment({**TINY, 'model': request.param, **({'lora_rank': 2} if request.param == 'sam2_unet' else {}),
                          'results_dir': str(d)}, progress=False)
    test = list(experiment_data(res.config)['test'])
    imgs = d/'images'; imgs.mkdir()
    for s in test: cv2.imwrite(str(imgs/f'{s.id}.png'), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
    model, _ = load_run_model(d, res.row['exp_id'])
    yield res, d, imgs, test, model
    shutil.rmtree(d, ignore_errors=True)                # checkpoints of the full trunk are ~100 MB


def _near_decision(p:np.ndarray, t:float) -> np.ndarray:
    "Pixels whose class-index mask can flip when the probabilities move by NEAR: max near the threshold, or two classes near a tie."
    s = np.sort(p, axis=0)
    return (np.abs(s[-1] - t) <= NEAR) | (s[-1] - s[-2] <= NEAR)


def test_rebuilt_with_its_trunk(run):
    res, d, _, test, model = run
    trunk = 'lora' if res.row['model'] == 'sam2_unet' else 'full'
    assert (model.size, model.weights, model.trunk_mode, model.num_classes) == ('tiny', 'random', trunk, 4)
    for s in test:   # the run's saved 8-bit test probabilities, up to one level (batch composition)
        saved = load_probabilities(res.run_dir/'test'/'predictions'/f'{s.id}.prob.npz')
        assert np.abs(quantize(model.predict(s.image)) - saved).max() <= 1 / 255 + 1e-6


def test_export_matches_the_run_model(run):
    res, d, _, test, model = run
    assert main(['export', res.row['exp_id'], '--results-dir', str(d)]) == 0
    o = OnnxUnet(res.run_dir/'export'/'model.onnx')
    assert (o.meta['exp_id'], o.meta['arch'], o.meta['encoder'], o.meta['weights']) == (res.row['exp_id'], 'sam2_unet', 'sam2.1_hiera_tiny', 'random')
    rng = np.random.default_rng(0)
    for im in [s.image for s in test] + [rng.integers(0, 255, (256, 1600, 3), dtype=np.uint8)]:
        a, b = model.predict(im), o.predict(im)
        assert a.shape == b.shape == (4,) + im.shape[:2] and np.abs(a - b).max() <= 1e-3


def test_predict_from_the_run_and_from_the_graph(run):
    res, d, imgs, test, model = run
    if res.row['model'] != 'sam2_unet': pytest.skip('predict rebuilds both SAM2-UNets through the same load_run_model')
    graph = res.run_dir/'export'/'model.onnx'
    if not graph.exists(): assert main(['export', res.row['exp_id'], '--results-dir', str(d)]) == 0
    outs = {'exp_id': d/'out_exp_id', 'onnx': d/'out_onnx'}
    assert main(['predict', res.row['exp_id'], str(imgs), '--out', str(outs['exp_id']), '--results-dir', str(d)]) == 0
    assert main(['predict', str(graph), str(imgs), '--out', str(outs['onnx'])]) == 0
    t = float(res.row['threshold'])
    for o in outs.values():
        assert json.loads((o/'predict.json').read_text())['n_written'] == len(test)
        assert len(pd.read_csv(o/'submission.csv', keep_default_na=False)) == 4 * len(test)
    for s in test:
        p = quantize(model.predict(s.image))
        a, b = (cv2.imread(str(o/'masks'/f'{s.id}.png'), cv2.IMREAD_UNCHANGED) for o in outs.values())
        run_mask = cv2.imread(str(res.run_dir/'test'/'predictions'/f'{s.id}.png'), cv2.IMREAD_UNCHANGED)
        assert a.shape == b.shape == s.shape
        assert _near_decision(p, t)[a != b].all() and _near_decision(p, t)[a != run_mask].all()
