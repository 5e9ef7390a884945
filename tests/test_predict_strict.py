"""`defect-sam predict` reads images as strictly as the dataset readers (a truncated JPEG is named in errors.csv, the
others are written, exit 1), refuses two images with one stem and a non-empty --out (unless --overwrite: then only
what an earlier predict wrote is replaced), and `defect-sam export` refuses an oracle-prompted run before writing
anything, with predict's message. A tiny U-Net exported to ONNX (random weights) stands in for a run where one will do."""
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from defect_sam.cli import main
from defect_sam.experiments.run import run_experiment
from defect_sam.models.unet import SmpSegmenter
from defect_sam.outputs.export import export_unet_onnx

REC = {'exp_id': 'toy', 'model': 'unet', 'family': 'unet', 'weights': 'random', 'dataset': 'synthetic', 'class_aware': False,
       'class_names': ['defect'], 'threshold': 0.5, 'postprocess': 'none', 'gate': None, 'params': {}}


@pytest.fixture(scope='module')
def toy_onnx(tmp_path_factory):
    "A U-Net graph whose metadata records a run's facts, as `export_run` writes them."
    seg = SmpSegmenter('unet', 'resnet18', 1, None, (32, 64), decoder_channels=(8, 8, 8, 8, 8))
    return export_unet_onnx(seg, tmp_path_factory.mktemp('toy')/'toy.onnx', REC)


def _images(folder:Path, names:list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in names: cv2.imwrite(str(folder/n), rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    return folder


def _error_lines(err:str, command:str) -> list:
    return [l for l in err.splitlines() if l.startswith(f'defect-sam {command}: error: ')]


def test_truncated_jpeg_is_named_and_the_others_are_written(toy_onnx, tmp_path, capsys):
    imgs = _images(tmp_path/'in', ['a.png', 'b.jpg', 'c.png'])
    whole = cv2.imencode('.jpg', np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8))[1].tobytes()
    (imgs/'cut.jpg').write_bytes(whole[:len(whole) // 2])          # OpenCV decodes this, its missing half grey
    out = tmp_path/'out'
    assert main(['predict', str(toy_onnx), str(imgs), '--out', str(out)]) == 1
    err = pd.read_csv(out/'errors.csv')
    assert [Path(f).name for f in err.file] == ['cut.jpg'] and 'truncated' in err.error[0]
    assert sorted(p.name for p in (out/'masks').iterdir()) == ['a.png', 'b.png', 'c.png']
    info = json.loads((out/'predict.json').read_text())
    assert (info['n_images'], info['n_written'], info['n_errors']) == (4, 3, 1)
    assert 'cut.jpg' in capsys.readouterr().err


def test_images_sharing_a_stem_are_refused(toy_onnx, tmp_path, capsys):
    imgs = _images(tmp_path/'in', ['x.png', 'x.jpg', 'y.png'])
    assert main(['predict', str(toy_onnx), str(imgs), '--out', str(tmp_path/'out')]) == 2
    lines = _error_lines(capsys.readouterr().err, 'predict')
    assert len(lines) == 1 and 'x.jpg and x.png' in lines[0]
    assert not (tmp_path/'out').exists()


def test_out_dir_is_refused_unless_overwrite(toy_onnx, tmp_path, capsys):
    out = tmp_path/'out'
    assert main(['predict', str(toy_onnx), str(_images(tmp_path/'in1', ['a.png', 'b.png'])), '--out', str(out)]) == 0
    (out/'notes.txt').write_text('mine')
    imgs2 = _images(tmp_path/'in2', ['c.png'])
    assert main(['predict', str(toy_onnx), str(imgs2), '--out', str(out)]) == 2
    assert 'not empty' in _error_lines(capsys.readouterr().err, 'predict')[0]
    assert sorted(p.name for p in (out/'masks').iterdir()) == ['a.png', 'b.png']          # untouched
    assert main(['predict', str(toy_onnx), str(imgs2), '--out', str(out), '--overwrite']) == 0
    assert sorted(p.name for p in (out/'masks').iterdir()) == ['c.png']                   # no old mask beside the new ones
    assert (out/'notes.txt').read_text() == 'mine' and json.loads((out/'predict.json').read_text())['n_images'] == 1
    # --overwrite clears only an earlier predict's output: a folder without predict.json is refused, and kept
    mine = tmp_path/'mine'; (mine/'masks').mkdir(parents=True); (mine/'masks'/'gt.png').write_bytes(b'x')
    assert main(['predict', str(toy_onnx), str(imgs2), '--out', str(mine), '--overwrite']) == 2
    assert 'no predict.json' in _error_lines(capsys.readouterr().err, 'predict')[0] and (mine/'masks'/'gt.png').exists()


def test_export_refuses_an_oracle_run_before_writing(tmp_path, capsys):
    res = run_experiment(dict(model='sam2_zeroshot', prompt='box', weights='random', sam2_image_size=64, device='cpu', n_figures=0,
                              dataset_options={'n_images': 4, 'height': 32, 'width': 64}, split=[0.5, 0.25, 0.25],
                              results_dir=str(tmp_path)), progress=False)
    eid = res.row['exp_id']
    assert main(['export', eid, '--results-dir', str(tmp_path)]) == 2
    (exported,) = _error_lines(capsys.readouterr().err, 'export')
    assert 'prompts from the ground truth' in exported and not (res.run_dir/'export').exists()
    imgs = _images(tmp_path/'in', ['a.png'])
    assert main(['predict', eid, str(imgs), '--out', str(tmp_path/'out'), '--results-dir', str(tmp_path)]) == 2
    (predicted,) = _error_lines(capsys.readouterr().err, 'predict')
    assert exported.split(': error: ', 1)[1] == predicted.split(': error: ', 1)[1]          # the same message
    assert main(['export', eid, '--results-dir', str(tmp_path), '--out', str(tmp_path/'x')]) == 2 and not (tmp_path/'x').exists()
