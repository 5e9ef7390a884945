"""TTA in experiment runs: recorded in the row, part of the run's identity and inference key, not of its training key."""
import json

from defect_sam.experiment import ExperimentConfig, run_experiment

TINY = dict(model='sam2_zeroshot', weights='random', sam2_image_size=64, device='cpu', n_figures=0,
            dataset_options={'n_images': 8, 'height': 32, 'width': 64}, split=[0.5, 0.25, 0.25])


def test_tta_keys():
    off, on = ExperimentConfig(**TINY), ExperimentConfig(**TINY, tta='[vflip, hflip]')   # YAML, as on the command line
    assert on.tta == ['hflip', 'vflip'] and 'tta' not in off.used_params()        # ids of runs without TTA unchanged
    assert on.train_key == off.train_key                                          # the trained model is reused
    assert on.inference_key != off.inference_key and on.exp_id != off.exp_id      # its saved probabilities are its own
    unet = dict(model='unet', weights='random', device='cpu')
    assert ExperimentConfig(**unet, tta=['hflip']).train_key == ExperimentConfig(**unet).train_key


def test_tta_run_records_it(tmp_path):
    res = run_experiment({**TINY, 'results_dir': str(tmp_path), 'tta': ['hflip', 'vflip'], 'prompt': 'points_1'}, progress=False)
    assert res.row['tta'] == 'hflip+vflip'
    s = json.loads((res.run_dir/'summary.json').read_text())
    assert s['test']['extras']['model']['tta_transforms'] == ['identity', 'vflip', 'hflip', 'hvflip']
    assert s['config']['tta'] == ['hflip', 'vflip']
