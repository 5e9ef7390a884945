"""Issue 12: SAM2's training objective (loss='sam2'), corrective-click training, defect-free images (train_empty), the
full_image training prompt, and the peft adaptation methods (attn_mlp, DoRA, LayerNorm, bias+LayerNorm), on SAM2.1-tiny
with random weights at 64-128 px (plumbing and numerics, never quality)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from defect_sam.core.errors import ConfigError, DataError
from defect_sam.data.sample import Sample
from defect_sam.experiments.config import ExperimentConfig
from defect_sam.experiments.table import read_results
from defect_sam.experiments.run import run_experiment
from defect_sam.models.base import TrainOutput
from defect_sam.models.registry import build_model
from defect_sam.models.sam.adapters import norm_targets
from defect_sam.training.loop import TrainConfig
from defect_sam.training.losses import sam2_losses, training_losses

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(weights='random', sam2_image_size=64, device='cpu', n_figures=0, steps=2, batch_size=2, lr=1e-3,
            dataset_options={'n_images': 6, 'height': 32, 'width': 96}, split=[0.5, 0.25, 0.25])


def _img(seed=0, h=48, w=80):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _batch():
    gm = np.zeros((48, 80), np.uint8); gm[8:24, 8:36] = 1; gm[30:44, 50:76] = 1
    return [Sample('a', _img(0), gm), Sample('b', _img(1), np.zeros((48, 80), np.uint8))]


@pytest.mark.parametrize('method', ['dora', 'layernorm', 'bias_layernorm'])   # lora: tests/test_sam.py
def test_peft_method_counts_strict_roundtrip_and_refusals(method, tmp_path):
    kw = dict(lora_rank=4) if method in ('lora', 'dora') else {}
    a = build_model('sam2_lora', weights='random', image_size=64, peft_method=method, lora_strategy='encoder_decoder', **kw)
    i = a.info()
    n = i['trainable_params']
    assert i['peft_method'] == method and 0 < n < i['total_params'] and n == sum(p.numel() for p in a.trainable_parameters())
    if method != 'dora':
        assert len(a.adapted_modules()) == len(norm_targets(build_model('sam2_zeroshot', weights='random', image_size=64).model, 'encoder_decoder'))
        norms = sum(p.numel() for m in a.adapted_modules() for p in a.model.get_submodule(m).base_layer.parameters())
        if method == 'layernorm': assert n == norms and n / i['total_params'] < 1e-3     # SAC: ~0.05% of the parameters
        else: assert n > norms
    else:                                                               # r x (in + out) for A and B, + out for the magnitude
        lin = [a.model.get_submodule(m).base_layer for m in a.adapted_modules()]
        assert n == sum(4 * (l.in_features + l.out_features) + l.out_features for l in lin)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in a.trainable_parameters(): p.add_(torch.randn(p.shape, generator=g) * 0.05)      # "trained"
    f = a.save_trainable(tmp_path/f'{method}.safetensors')
    assert f.stat().st_size < 2e6
    b = build_model('sam2_lora', weights='random', image_size=64, trained=f)
    img, box = _img(), np.array([[5, 5, 40, 30]])
    np.testing.assert_allclose(b.predict(img, boxes=box), a.predict(img, boxes=box), atol=1e-5)
    sd = a.trainable_state_dict()
    k = next(iter(sd))
    with pytest.raises(DataError, match='missing tensors'): b.load_trainable_state_dict({x: v for x, v in sd.items() if x != k})
    other = 'layernorm' if method != 'layernorm' else 'lora'
    c = build_model('sam2_lora', weights='random', image_size=64, peft_method=other)
    with pytest.raises(ConfigError, match='holds a LoRA adapter'): c.load_trainable(f)


def test_attn_mlp_is_between_encoder_decoder_and_all():
    from defect_sam.models.sam.adapters import lora_targets
    m = build_model('sam2_zeroshot', weights='random', image_size=64).model
    ed, am, al = (set(lora_targets(m, s)) for s in ('encoder_decoder', 'attn_mlp', 'all'))
    assert ed < am < al and any('mlp.layers' in n for n in am - ed)
    assert not any(h in n for n in am for h in ('output_hypernetworks', 'prompt_encoder'))
    # the heads inference reads (the output rule's predicted IoU, the object-score rule) are adapted by every strategy
    for s in ('decoder', 'encoder_decoder', 'attn_mlp', 'all'):
        t = set(lora_targets(m, s))
        assert any('iou_prediction_head' in n for n in t) and any('pred_obj_score_head' in n for n in t), s


def test_sam2_loss_keeps_the_min_loss_mask_and_trains_both_heads():
    s = build_model('sam2_full', weights='random', image_size=64, trainable='mask_decoder')
    s.set_train_prompts('points_1'); s.set_train_objective('sam2')
    out = s.forward_batch(_batch(), np.random.default_rng(0), s.module)
    assert [tuple(o['masks'].shape) for o in out.objects] == [(2, 3, 48, 80), (1, 3, 48, 80)]
    l = sam2_losses(out, return_best=True)
    from defect_sam.training.losses import _sam2_terms, SAM2_LOSS_WEIGHTS
    for o, best in zip(out.objects, l['best']):                       # the kept mask: lowest 20 x focal + dice
        single = [_sam2_terms(dict(o, masks=o['masks'][:, j:j + 1].detach(), iou=o['iou'][:, j:j + 1]), SAM2_LOSS_WEIGHTS, 0.25, 2.0)
                  for j in range(3)]
        has = o['target'].flatten(1).any(1)                           # (empty targets have no mask term to compare)
        assert torch.equal(best[has], torch.stack([20 * t['focal'] + t['dice'] for t in single], 1).argmin(1)[has])
    assert out.objects[0]['target'].any()
    l['loss'].backward()
    d = s.model.sam_mask_decoder
    grad = lambda mod: sum(p.grad.abs().sum().item() for p in mod.parameters() if p.grad is not None)
    assert grad(d.iou_prediction_head) > 0 and grad(d.pred_obj_score_head) > 0
    assert l['object_score'] > 0 and l['iou'] >= 0


def test_min_loss_choice_against_brute_force():
    from defect_sam.training.losses import _sam2_terms, SAM2_LOSS_WEIGHTS
    g = torch.Generator().manual_seed(3)
    t = (torch.rand(4, 16, 16, generator=g) > 0.6).float()
    o = dict(masks=torch.randn(4, 3, 16, 16, generator=g), iou=torch.rand(4, 3, generator=g), object_score=torch.zeros(4, 1),
             target=t, valid=torch.ones_like(t))
    terms = _sam2_terms(o, SAM2_LOSS_WEIGHTS, 0.25, 2.0)
    single = [_sam2_terms(dict(o, masks=o['masks'][:, j:j + 1], iou=o['iou'][:, j:j + 1]), SAM2_LOSS_WEIGHTS, 0.25, 2.0) for j in range(3)]
    combo = torch.stack([20 * s['focal'] + s['dice'] for s in single], 1)
    assert torch.equal(terms['best'], combo.argmin(1))
    assert torch.allclose(20 * terms['focal'] + terms['dice'], combo.min(1).values)


def test_correction_steps_feed_clicks_and_previous_logits():
    s = build_model('sam2_lora', weights='random', image_size=64, lora_rank=2)
    s.set_train_prompts('box'); s.set_train_objective('dice_focal', correction_iters=2)
    seen = []
    h = s.model.sam_prompt_encoder.register_forward_hook(lambda m, a, kw, out: seen.append((kw['points'][0].shape, kw['masks'] is not None)),
                                                         with_kwargs=True)
    out = s.forward_batch(_batch(), np.random.default_rng(0), s.module)
    h.remove()
    assert [x[1] for x in seen] == [False, False, True, True, True, True]          # 2 images x 3 steps; mask input from step 1
    assert [x[0][1] for x in seen[::2]] == [2, 3, 4]                                 # box corners, + one click per step
    l = training_losses(out, TrainConfig(correction_iters=2))
    assert len(out.iterations) == 3 and torch.isfinite(l['loss'])


def test_refusals():
    with pytest.raises(ConfigError, match='takes no prompts'):
        ExperimentConfig(model='unet', train_options={'loss': 'sam2'})
    with pytest.raises(ConfigError, match='nobody clicks'):
        ExperimentConfig(model='sam2_full', prompt='full_image', train_options={'correction_iters': 2})
    with pytest.raises(ConfigError, match="peft_method='dora' is for model 'sam2_lora'"):
        ExperimentConfig(model='sam2_full', peft_method='dora')
    with pytest.raises(ConfigError, match='unknown terms'):
        ExperimentConfig(model='sam2_full', train_options={'loss': 'sam2', 'loss_weights': {'mask': 20}})
    with pytest.raises(ConfigError, match='negative_prompt, skip'):
        ExperimentConfig(model='sam2_full', train_options={'train_empty': 'drop'})
    assert ExperimentConfig(model='sam2_lora', peft_method='layernorm').used_params().get('lora_rank') is None


def test_new_sweeps_expand(grid_data):
    from defect_sam.experiments.grid import expand_grid
    runs = [r for r in expand_grid(grid_data(ROOT/'grids'/'thesis.yaml')) if r.sweep.startswith('peft_')]
    got = {(r.config.peft_method, r.config.lora_strategy) for r in runs}
    assert {('lora', 'attn_mlp'), ('dora', 'attn_mlp'), ('dora', 'decoder'), ('layernorm', 'encoder_decoder'),
            ('bias_layernorm', 'all')} <= got and len({r.exp_id for r in runs}) == len(runs)


@pytest.mark.parametrize('name, params', [
    ('sam2_loss_clicks_skip', dict(model='sam2_lora', prompt='points_1', lora_rank=2,
                                   train_options={'loss': 'sam2', 'correction_iters': 1, 'train_empty': 'skip',
                                                  'loss_weights': {'focal': 10}})),
    ('full_image_dora', dict(model='sam2_lora', prompt='full_image', peft_method='dora', lora_rank=2, train_options={'loss': 'sam2'})),
    ('sam2_unet', dict(model='sam2_unet', class_aware=True, img_size=64, lora_rank=2)),
])
def test_experiment_rows(name, params, tmp_path):
    res = run_experiment({**TINY, **params, 'results_dir': str(tmp_path)}, progress=False)
    t = read_results(tmp_path)
    assert len(t) == 1 and t.iloc[0].exp_id == res.row['exp_id'] and np.isfinite(t.iloc[0].test_mIoU)
    log = __import__('pandas').read_csv(tmp_path/Path(res.row['ckpt_path']).parent/'log.csv')
    tr = log[log.kind == 'train']
    assert len(tr) and tr.loss.notna().all()
    if params.get('train_options', {}).get('loss') == 'sam2': assert tr.loss_iou.notna().all() and tr.loss_object_score.notna().all()
    if 'peft_method' in params: assert res.row['variant'].startswith(params['peft_method'])
    if params['model'] == 'sam2_unet':                                 # prompt-free, like the U-Nets
        assert res.row['prompt_type'] is None and res.row['sam2_size'] == 'tiny' and res.row['class_aware']
        assert res.row['variant'] == 'trunk_lora_r2' and res.row['weights'] == 'random'
        from defect_sam.training.loop import load_checkpoint
        from defect_sam.experiments.model import build_experiment_model
        from defect_sam.experiments.data import experiment_data
        cfg = ExperimentConfig(**{**TINY, **params, 'results_dir': str(tmp_path)})
        m = build_experiment_model(cfg, experiment_data(cfg)['train'])
        load_checkpoint(m, tmp_path/res.row['ckpt_path'])               # the trained parts, strictly
        with pytest.raises(ConfigError, match='takes no prompts'): m.predict(_img(), boxes=[[0, 0, 9, 9]])


def _proxy_tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location('pretrain_proxy', ROOT/'tools'/'pretrain_proxy.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_proxy_corpus_is_generic_and_deterministic():
    import cv2
    tool = _proxy_tool()
    a, b = tool.proxy_sample('proxy-train-000001'), tool.proxy_sample('proxy-train-000001')
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    counts = [cv2.connectedComponents(tool.proxy_sample(f'proxy-train-{i:06d}').mask)[0] - 1 for i in range(40)]
    assert 0 in counts and max(counts) >= 4                          # empty images and many-object images
    tr, ho = tool.proxy_corpus('train', 5), tool.proxy_corpus('heldout', 5)
    assert not set(tr.ids) & set(ho.ids) and tr[0].meta['source'] == 'proxy-corpus'


def test_proxy_pretraining_writes_a_strict_checkpoint_and_caches(tmp_path, monkeypatch):
    tool = _proxy_tool()
    kw = dict(image_size=64, batch_size=1, eval_images=1, auroc_images=12, steps=1, progress=False, device='cpu')
    rec = tool.pretrain(tmp_path, 0.0, **kw)
    assert rec['steps'] == 1 and 0 <= rec['heldout_mIoU_after'] <= 1
    for when in ('before', 'after'):                        # the two AUROCs, over the prompts the tool counted
        r = rec[when]
        assert {'box', 'points_1', 'points_3', 'points_5', 'object_score_auroc', 'object_score_auroc_background'} <= set(r)
        assert r['prompts_with_object'] > 0 and r['prompts_on_clean_images'] + r['prompts_on_background'] <= 12
    s = build_model('sam2_lora', weights=rec['checkpoint'], image_size=128)        # `weights=<path>` loads it strictly
    assert s.info()['weights'] == rec['checkpoint']
    import defect_sam.training.loop
    monkeypatch.setattr(defect_sam.training.loop, 'train', lambda *a, **k: pytest.fail('a cached proxy must not train again'))
    assert tool.pretrain(tmp_path, 0.0, **kw) == rec
    with pytest.raises(ConfigError, match='other options'): tool.pretrain(tmp_path, 0.0, **{**kw, 'lr': 1e-3})


# ---------------------------------------------------------------- issue 20: SAM2 as SAM2

def _mostly_clean(n=8, h=32, w=48):
    "A DefectDataset where image 0 has a defect and the others are clean."
    from defect_sam.data.sample import DefectDataset
    def load(sid):
        k = int(sid.split('_')[1]); m = np.zeros((h, w), np.uint8)
        if k == 0: m[8:24, 10:30] = 1
        return Sample(sid, _img(k, h, w), m)
    return DefectDataset([f'c_{k}' for k in range(n)], load, ['background', 'defect'], name='mostly_clean')


def test_skip_takes_no_optimizer_step_on_defect_free_micro_batches(tmp_path):
    "train_empty='skip': a micro-batch of defect-free images is passed over: no optimizer step, no schedule step, no weight decay."
    from defect_sam.training.loop import read_checkpoint, train
    ds = _mostly_clean()
    s = build_model('sam2_lora', weights='random', image_size=64, lora_rank=2)
    r = train(s, ds, None, TrainConfig(steps=3, batch_size=1, val_every=None, ckpt_every=3, train_empty='skip', progress=False,
                                       augment=None, lr=1e-3), tmp_path)
    ck = read_checkpoint(r.last_checkpoint)
    adam_steps = {float(v['step']) for v in ck['optimizer']['state'].values()}
    assert adam_steps == {3.0}                                    # three optimizer steps, every one on the defect image
    assert ck['scheduler']['last_epoch'] == 3
    st = ck['state']
    assert st['micro'] == 3 + st['empty_skipped'] and st['empty_skipped'] >= 14   # 7 of every 8 drawn were clean
    res = __import__('json').loads((tmp_path/'train_result.json').read_text())
    assert res['empty_micro_batches_passed'] == st['empty_skipped']
    s2 = build_model('sam2_lora', weights='random', image_size=64, lora_rank=2)   # negative_prompt: every micro-batch trains
    r2 = train(s2, ds, None, TrainConfig(steps=3, batch_size=1, val_every=None, ckpt_every=3, progress=False, augment=None), tmp_path/'np')
    assert read_checkpoint(r2.last_checkpoint)['state']['micro'] == 3


def test_skip_with_no_defect_at_all_stops_with_a_clear_error(tmp_path, monkeypatch):
    import defect_sam.training.loop as loop
    from defect_sam.training.loop import TrainingError, train
    monkeypatch.setattr(loop, '_MAX_PASSED', 5)
    ds = _mostly_clean(); ds = ds.subset(ds.ids[1:])
    s = build_model('sam2_lora', weights='random', image_size=64, lora_rank=2)
    with pytest.raises(TrainingError, match="5 micro-batches in a row held nothing to train on"):
        train(s, ds, None, TrainConfig(steps=2, batch_size=1, val_every=None, train_empty='skip', progress=False, augment=None), tmp_path)


def test_sam2_loss_normaliser_counts_the_objects_of_every_process(monkeypatch):
    "Under DDP the object count is all-reduced and averaged over processes, as sam2's loss does."
    import torch.distributed as dist
    o = dict(masks=torch.zeros(1, 1, 8, 8), iou=torch.zeros(1, 1), object_score=torch.zeros(1, 1), target=torch.ones(1, 8, 8),
             valid=torch.ones(1, 8, 8))
    alone = sam2_losses(TrainOutput(None, None, objects=[o]))
    monkeypatch.setattr(dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(dist, 'get_world_size', lambda: 2)
    monkeypatch.setattr(dist, 'all_reduce', lambda t, *a, **k: t.add_(3))   # the other process holds 3 objects
    shared = sam2_losses(TrainOutput(None, None, objects=[o]))
    for k in ('focal', 'dice', 'iou', 'object_score'):                # 1 object here, 4 in all, 2 per process: half the terms
        assert torch.isclose(shared[k], alone[k] / 2), k


def test_checkpoints_record_how_the_model_predicts(tmp_path):
    "A model trained with loss sam2 predicts, once loaded, with SAM2's output rule, no fallback, and the object-score rule."
    from defect_sam.data.load import load_dataset
    from defect_sam.training.loop import load_checkpoint, train
    ds = load_dataset('synthetic', n_images=4, seed=0, height=32, width=64, binary=True)
    s = build_model('sam2_lora', weights='random', image_size=64, lora_rank=2)
    assert (s.output, s.stability_fallback, s.object_score_rule) == ('sam2', False, False)
    r = train(s, ds, None, TrainConfig(steps=1, batch_size=2, val_every=None, loss='sam2', progress=False), tmp_path)
    fresh = build_model('sam2_lora', weights='random', image_size=64, lora_rank=2)
    assert fresh.object_score_rule is False
    meta = load_checkpoint(fresh, r.last_checkpoint)
    assert meta['inference'] == {'output': 'sam2', 'stability_fallback': False, 'trained_loss': 'sam2'}
    assert fresh.object_score_rule is True and fresh.info()['object_score_rule'] is True
    off = build_model('sam2_lora', weights='random', image_size=64, lora_rank=2, use_object_score=False)
    load_checkpoint(off, r.last_checkpoint)
    assert off.object_score_rule is False                            # the experiment's use_object_score wins
    zs = build_model('sam2_zeroshot', weights='random', image_size=64)
    assert (zs.stability_fallback, zs.object_score_rule) == (True, False)


def test_every_sam2_model_reports_object_score_and_predicted_iou_per_image(tmp_path):
    from defect_sam.data.load import load_dataset
    from defect_sam.evaluation.evaluate import evaluate
    from defect_sam.models.tta import with_tta
    ds = load_dataset('synthetic', n_images=6, seed=0, height=32, width=64, binary=True)
    zs = build_model('sam2_zeroshot', weights='random', image_size=64)
    for model in (zs, with_tta(zs, ['hflip'])):
        t = evaluate(model, ds, prompt='full_image', seed=0, progress=False, batch_size=2).table
        assert {'pred_iou', 'object_score', 'no_object_prompts'} <= set(t.columns)
        assert t[['pred_iou', 'object_score']].notna().all().all()      # full_image prompts every image
    t = evaluate(zs, ds, prompt='box', seed=0, progress=False, save_dir=tmp_path/'run').table
    called = t[~t.prompt_empty]
    assert called.object_score.notna().all() and t[t.prompt_empty].object_score.isna().all()
    from defect_sam.evaluation.evaluate import evaluate_saved
    again = evaluate_saved(tmp_path/'run', ds, progress=False).table                   # re-scoring keeps them
    assert np.allclose(again.object_score.to_numpy(), t.object_score.to_numpy(), equal_nan=True)


def test_experiment_decoding_parameters():
    zs = ExperimentConfig(**TINY, model='sam2_zeroshot', sam2_output='token0')
    assert zs.identity()['used']['eval']['sam2_output'] == 'token0'
    with pytest.raises(ConfigError, match='a fine-tuned SAM2 predicts with the output its training trained'):
        ExperimentConfig(**TINY, model='sam2_lora', sam2_output='best_iou')
    with pytest.raises(ConfigError, match='sam2_output must be one of'):
        ExperimentConfig(**TINY, model='sam2_zeroshot', sam2_output='best')
    a = ExperimentConfig(**TINY, model='sam2_lora', train_options={'loss': 'sam2'})
    b = ExperimentConfig(**TINY, model='sam2_lora', train_options={'loss': 'sam2'}, use_object_score=True)
    assert a.exp_id == b.exp_id                                      # None resolves to what the model does: the same run
    c = ExperimentConfig(**TINY, model='sam2_lora', train_options={'loss': 'sam2'}, use_object_score=False)
    assert c.exp_id != a.exp_id and c.config_key != a.config_key
    assert ExperimentConfig(**TINY, model='unet', use_object_score=True).exp_id == ExperimentConfig(**TINY, model='unet').exp_id
