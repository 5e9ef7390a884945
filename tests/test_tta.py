"""TTA in experiment runs: recorded in the row, part of the run's identity and inference key, not of its training key."""
import json

from defect_sam.experiments.config import ExperimentConfig
from defect_sam.experiments.run import run_experiment

TINY = dict(model='sam2_zeroshot', weights='random', sam2_image_size=64, device='cpu', n_figures=0,
            dataset_options={'n_images': 8, 'height': 32, 'width': 64}, split=[0.5, 0.25, 0.25])


def test_tta_keys():
    off, on = ExperimentConfig(**TINY), ExperimentConfig(**TINY, tta='[vflip, hflip]')   # YAML, as on the command line
    assert on.tta == ['hflip', 'vflip'] and off.used_params()['tta'] is None      # an eval field: used, None when off
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


def _manual_mean(model, image, prompts, flips):
    "The mean of the model's un-flipped outputs on the flipped image and prompts, written out."
    import numpy as np
    from defect_sam.models.tta import flip_image, flip_probs, flip_prompt_kwargs
    outs = [flip_probs(model.predict(flip_image(image, h, v), **(flip_prompt_kwargs(prompts, image.shape, h, v) or {})), h, v)
            for h, v in flips]
    return np.mean(outs, 0)


def test_tta_wraps_the_real_models():
    "TTA over a real U-Net (letterboxed, CxHxW) and a real SAM2 (box prompts): the mean of the flipped passes, batched or not."
    import numpy as np
    from defect_sam.models.unet import SmpSegmenter
    from defect_sam.models.registry import build_model
    from defect_sam.evaluation.prompts import make_prompts
    from defect_sam.models.tta import TTASegmenter, tta_transforms
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 100, 3), dtype=np.uint8)
    mask = np.zeros((40, 100), np.uint8); mask[5:20, 10:60] = 1; mask[25:35, 70:95] = 2
    flips = tta_transforms(['hflip', 'vflip'])
    unet = SmpSegmenter('unet', 'resnet18', encoder_weights=None, img_size=(64, 128), num_classes=2, seed=0)
    t = TTASegmenter(unet, ['hflip', 'vflip'])
    np.testing.assert_allclose(t.predict(img), _manual_mean(unet, img, None, flips), atol=1e-5)
    a, b = t.predict_batch([img, img[:, ::-1].copy()])
    np.testing.assert_allclose(a, t.predict(img), atol=1e-5)
    sam = build_model('sam2_zeroshot', weights='random', image_size=64, device='cpu', seed=0)
    kw = make_prompts(mask, 'box', class_aware=True, num_classes=2).as_kwargs()
    ts = TTASegmenter(sam, ['hflip'])
    np.testing.assert_allclose(ts.predict(img, **kw), _manual_mean(sam, img, kw, tta_transforms(['hflip'])), atol=1e-5)
    assert ts.needs_prompts and ts.predict(img, **kw).shape == (2, 40, 100)
