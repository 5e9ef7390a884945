"""The training loop in one process (CPU, tiny models, synthetic strips): learning, checkpoints and top-k retention,
early stopping, non-finite policies, LoRA adapter-only checkpoints, mixed precision, validation side effects, losses."""
import importlib.util
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st

from _train_toys import TinySeg, tiny_data, visible_data
from defect_sam.core.errors import ConfigError, DataError
from defect_sam.evaluation.evaluate import evaluate
from defect_sam.models.base import TrainOutput
from defect_sam.models.registry import build_model
from defect_sam.training.loop import TrainConfig, TrainingError, best_name, load_checkpoint, read_checkpoint, train
from defect_sam.training.losses import dice_loss, focal_loss, segmentation_losses, skeleton_loss


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv('DEFECT_SAM_CACHE', str(tmp_path_factory.mktemp('cache')))
    yield tiny_data()
    mp.undo()


def cfg(**kw):
    return TrainConfig(**{**dict(steps=10, batch_size=4, lr=2e-2, val_every=None, ckpt_every=5, log_every=1, progress=False), **kw})


def _weights(path): return read_checkpoint(path)['model']


def test_loss_goes_down_overfitting_a_small_set(data, tmp_path):
    tr, va = visible_data()
    net = TinySeg(dropout=0.0)
    r = train(net, tr, va, cfg(steps=40, lr=3e-2, augment=None, warmup_steps=0, val_every=40), tmp_path)
    loss = r.history[r.history.kind == 'train'].loss.to_numpy()
    assert loss[-5:].mean() < 0.5 * loss[:5].mean()
    assert r.best_metrics['val_mIoU'] > 0.8                                 # and it generalises on this easy set
    assert r.history.lr.iloc[0] == pytest.approx(3e-2) and r.history.lr.iloc[-2] < 1e-3   # cosine to ~0


def test_top3_retention_names_and_best_weights(data, tmp_path):
    tr, va = data
    net = TinySeg()
    r = train(net, tr, va, cfg(steps=14, val_every=2, keep_top_k=3), tmp_path)
    v = r.history[r.history.kind == 'val']
    assert len(v) == 7
    top = v.sort_values(['val_mIoU', 'val_mDice', 'step'], ascending=[False, False, True]).head(3)
    want = [best_name(s, i, d) for s, i, d in zip(top.step, top.val_mIoU, top.val_mDice)]
    assert [t['file'] for t in r.top_k] == want
    assert sorted(p.name for p in tmp_path.glob('best_*.torch')) == sorted(want)
    assert r.best_checkpoint == tmp_path/want[0]
    ck = read_checkpoint(r.best_checkpoint)
    assert ck['kind'] == 'best' and ck['step'] == int(top.step.iloc[0]) and set(ck) >= {'model', 'val', 'params_hash'}
    assert 'optimizer' not in ck                                            # weights only
    for k, t in net.trainable_state_dict().items(): assert torch.equal(t, ck['model'][k])  # the model holds the best weights
    assert evaluate(net, va, progress=False).summary['mIoU'] == r.best_metrics['val_mIoU']
    last = read_checkpoint(r.last_checkpoint)
    assert last['step'] == 14 and {'optimizer', 'scheduler', 'rng', 'state', 'params'} <= set(last)


def test_early_stopping(data, tmp_path):
    tr, va = data
    r = train(TinySeg(), tr, va, cfg(steps=100, lr=1e-12, val_every=2, patience=3), tmp_path)
    assert (r.stop_reason, r.steps) == ('early_stopping', 8)
    assert read_checkpoint(r.last_checkpoint)['state']['done'] == 'early_stopping'
    with pytest.raises(ConfigError, match='patience needs validation'): train(TinySeg(), tr, va, cfg(patience=2), tmp_path/'x')


def test_nonfinite_raise_names_step_and_keeps_last_good_checkpoint(data, tmp_path):
    tr, va = data
    with pytest.raises(TrainingError, match=r'non-finite loss \(nan\) at step 8 \(micro-batch 1/2'):
        train(TinySeg(nan_at={8}, grad_accum=2), tr, va, cfg(grad_accum=2, batch_size=2, ckpt_every=3, val_every=3), tmp_path)
    last = read_checkpoint(tmp_path/'last.torch')
    assert last['step'] == 6
    assert all(torch.isfinite(v).all() for v in last['model'].values())
    assert {p.name for p in tmp_path.glob('best_*.torch')} == {r['file'] for r in last['state']['top_k']}
    assert pd.read_csv(tmp_path/'log.csv').step.max() == 7                   # the log up to the last good step


def test_nonfinite_skip_policy(data, tmp_path):
    tr, _ = data
    net = TinySeg(nan_at={3, 4})
    r = train(net, tr, None, cfg(nonfinite='skip'), tmp_path/'a')
    assert r.steps == 10 and r.skipped_steps == [3, 4]
    assert r.history[r.history.kind == 'skip'].step.tolist() == [3, 4]
    assert all(torch.isfinite(p).all() for p in net.net.parameters())
    with pytest.raises(TrainingError, match=r'at step 3 .*3 consecutive non-finite steps, max_skips=2'):
        train(TinySeg(nan_at=range(1, 11)), tr, None, cfg(nonfinite='skip', max_skips=2), tmp_path/'b')


def test_validation_leaves_training_untouched(data, tmp_path):
    "Validating (which reseeds for its own reproducibility) does not change the training trajectory (dropout, data)."
    tr, va = data
    a = train(TinySeg(), tr, va, cfg(steps=6, val_every=2), tmp_path/'a')
    b = train(TinySeg(), tr, None, cfg(steps=6, val_every=None), tmp_path/'b')
    wa, wb = _weights(a.last_checkpoint), _weights(b.last_checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ta, tb = a.history[a.history.kind == 'train'], b.history[b.history.kind == 'train']
    assert ta.loss.tolist() == tb.loss.tolist()


def test_dataloader_workers_do_not_change_the_run(data, tmp_path):
    "Augmentation is a pure function of (seed, epoch, image): reading with worker processes gives the same run."
    tr, _ = data
    a = train(TinySeg(), tr, None, cfg(steps=6, augment=dict(hflip=0.5, vflip=0.5, noise=0.5)), tmp_path/'a')
    b = train(TinySeg(), tr, None, cfg(steps=6, augment=dict(hflip=0.5, vflip=0.5, noise=0.5), num_workers=2), tmp_path/'b')
    wa, wb = _weights(a.last_checkpoint), _weights(b.last_checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_lora_checkpoints_hold_only_the_adapter(data, tmp_path):
    tr, va = data
    sam = build_model('sam2_lora', weights='random', image_size=64, lora_rank=4)
    r = train(sam, tr, va, cfg(steps=2, batch_size=2, lr=1e-3, val_every=2, ckpt_every=1, augment=None), tmp_path)
    n = 2 * len(sam.adapted_modules())
    for p in [r.last_checkpoint, *tmp_path.glob('best_*.torch')]:
        sd = read_checkpoint(p)['model']
        assert len(sd) == n and all('lora_A' in k or 'lora_B' in k for k in sd), p
    again = build_model('sam2_lora', weights='random', image_size=64, lora_rank=4)
    load_checkpoint(again, r.best_checkpoint)
    s = va[1] if va[1].has_defect else next(x for x in va if x.has_defect)
    box = np.array([[0, 0, s.image.shape[1] - 1, s.image.shape[0] - 1]])
    np.testing.assert_array_equal(again.predict(s.image, boxes=box), sam.predict(s.image, boxes=box))
    ck = read_checkpoint(r.best_checkpoint); ck['model'].popitem()
    torch.save(ck, tmp_path/'cut.torch')
    with pytest.raises(DataError, match='1 missing tensors'): load_checkpoint(again, tmp_path/'cut.torch')
    with pytest.raises(DataError, match='no such checkpoint'): load_checkpoint(again, tmp_path/'none.torch')


def test_sam_class_aware_and_full_finetuning(tmp_path, monkeypatch):
    monkeypatch.setenv('DEFECT_SAM_CACHE', str(tmp_path/'cache'))
    tr, va = tiny_data(binary=False)
    sam = build_model('sam2_full', weights='random', image_size=64, trainable=('mask_decoder',))
    r = train(sam, tr, va, cfg(steps=2, batch_size=2, lr=1e-4, val_every=2, class_aware=True, prompt='points_1', augment=None), tmp_path/'r')
    assert r.best_metrics['step'] == 2 and sam.train_prompts['num_classes'] == len(tr.classes) - 1
    assert read_checkpoint(r.last_checkpoint)['params']['config']['class_aware'] is True
    with pytest.raises(ConfigError, match='nothing to train'):
        train(build_model('sam2_zeroshot', weights='random', image_size=64), tr, va, cfg(), tmp_path/'z')


def test_bf16_on_cpu_validates_in_full_precision(data, tmp_path):
    tr, va = data
    net = TinySeg()
    r = train(net, tr, va, cfg(steps=4, val_every=2, mixed_precision='bf16'), tmp_path)
    assert '_original_forward' not in net.net.__dict__                      # Accelerate's autocast wrapper removed
    assert evaluate(net, va, progress=False).summary['mIoU'] == r.best_metrics['val_mIoU']
    assert read_checkpoint(r.last_checkpoint)['params']['mixed_precision'] == 'bf16'


def test_deep_supervision_and_skeleton_terms_are_logged(data, tmp_path):
    tr, _ = data
    r = train(TinySeg(aux=True), tr, None, cfg(steps=3, skeleton_weight=0.5, skeleton_iters=3), tmp_path)
    h = r.history
    assert (h.loss_aux > 0).all() and (h.loss_skeleton >= 0).all()
    assert np.allclose(h.loss, h.loss_dice + h.loss_focal + 0.5 * h.loss_skeleton + h.loss_aux, atol=1e-5)


def test_refusals(data, tmp_path):
    tr, va = data
    train(TinySeg(), tr, None, cfg(steps=2), tmp_path)
    with pytest.raises(ConfigError, match=r'config.lr: 0.02 -> 0.01'): train(TinySeg(), tr, None, cfg(steps=2, lr=1e-2), tmp_path)
    with pytest.raises(ConfigError, match='pass resume=True'): train(TinySeg(), tr, None, cfg(steps=2), tmp_path, resume=False)
    with pytest.raises(ConfigError, match='not a TrainableSegmenter'): train(object(), tr, None, cfg(), tmp_path/'o')
    with pytest.raises(ConfigError, match='no validation set'): train(TinySeg(), tr, None, cfg(val_every=2), tmp_path/'v')
    with pytest.raises(ConfigError, match='fewer than batch_size'): train(TinySeg(), tr.subset(tr.ids[:3]), None, cfg(), tmp_path/'s')
    missing = [t for t in ('wandb', 'mlflow', 'tensorboard', 'aim') if importlib.util.find_spec(t) is None]
    if missing:
        with pytest.raises(ConfigError, match='not installed'): train(TinySeg(), tr, None, cfg(log_with=missing[0]), tmp_path/'t')
    with pytest.raises(ConfigError, match='unknown tracker'): train(TinySeg(), tr, None, cfg(log_with='nope'), tmp_path/'t')
    (tmp_path/'bad').mkdir(); (tmp_path/'bad'/'last.torch').write_bytes(b'not a checkpoint')
    with pytest.raises(DataError, match='bad/last.torch: not a readable checkpoint'): train(TinySeg(), tr, None, cfg(), tmp_path/'bad')


def test_config_checks():
    for bad, msg in [(dict(steps=0), 'steps'), (dict(mixed_precision='fp8'), 'mixed_precision'), (dict(focal_alpha=1.5), 'focal_alpha'),
                     (dict(dice_weight=0, focal_weight=0), 'at least one loss'), (dict(val_prompt='boxes'), 'val_prompt')]:
        with pytest.raises(ConfigError, match=msg): TrainConfig(**bad)


masks = st.integers(0, 2**16 - 1).map(lambda v: torch.tensor([(v >> i) & 1 for i in range(16)], dtype=torch.float32).reshape(1, 4, 4))

@settings(max_examples=40, deadline=None)
@given(y=masks, v=masks, seed=st.integers(0, 1000))
def test_losses_ignore_invalid_pixels_and_stay_in_range(y, v, seed):
    g = torch.Generator().manual_seed(seed)
    lg = torch.randn(1, 4, 4, generator=g) * 5
    other = torch.where(v > 0, lg, torch.randn(1, 4, 4, generator=g) * 5)   # differs only where invalid
    for f in (dice_loss, focal_loss, skeleton_loss):
        torch.testing.assert_close(f(lg, y, v), f(other, y, v))
    d = dice_loss(lg, y, v)
    assert (0 <= d).all() and (d <= 1).all() and (focal_loss(lg, y, v) >= 0).all()
    s = segmentation_losses(TrainOutput(lg[None], y[None], v[None]), skeleton_weight=1.0)
    assert torch.isfinite(s['loss']) and s['loss'] >= 0


def test_sam_training_reads_exact_float32_embeddings_despite_a_disk_cache(tmp_path):
    "A float16 disk tier serves inference; training reads the exact float32 memory tier (a resumed run must match)."
    from defect_sam.models.sam.inference import SamSegmenter
    img = np.random.default_rng(0).integers(0, 255, (40, 90, 3), dtype=np.uint8)
    box = [dict(boxes=np.array([[5, 5, 60, 30]]))]
    SamSegmenter('tiny', weights='random', image_size=64, disk_cache=tmp_path).predict(img, **box[0])   # fills the disk
    disk = SamSegmenter('tiny', weights='random', image_size=64, disk_cache=tmp_path)
    plain = SamSegmenter('tiny', weights='random', image_size=64)
    with torch.no_grad():
        a = [disk.forward_train([img], box)[0] for _ in range(2)]            # computed, then from the memory twin
        b = plain.forward_train([img], box)[0]
    assert disk.cache_info()['disk_hits'] == 0 and disk.encoder_images == 1
    assert torch.equal(a[0], b) and torch.equal(a[1], b)
