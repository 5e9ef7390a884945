"""U-Net baselines: offline encoder weights, shapes at any image size, deep supervision, strict checkpoints."""
import socket
import time
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from defect_sam.models.unet import SmpSegmenter, build_smp, resolve_encoder_weights
from defect_sam.core.errors import ConfigError, DataError
from defect_sam.models.registry import build_model


@pytest.fixture
def no_network(monkeypatch):
    "Every connection attempt fails and is recorded; the offline env vars are unset so only the socket check can save us."
    calls = []
    def refuse(*a, **k):
        calls.append(a[:2]); raise OSError('network blocked by test')
    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)
    monkeypatch.setattr(socket, 'getaddrinfo', refuse)
    for k in ('YOLO_OFFLINE', 'HF_HUB_OFFLINE'): monkeypatch.delenv(k, raising=False)
    return calls


def _small(**kw):
    kw = {'encoder_weights': None, 'img_size': (64, 256), **kw}
    return SmpSegmenter(kw.pop('arch', 'unet'), kw.pop('encoder', 'resnet18'), **kw)


def test_imagenet_offline_falls_back_fast(no_network, tmp_path):
    t0 = time.perf_counter()
    with pytest.warns(UserWarning, match='randomly initialised'):
        m = build_smp('unet', 'resnet18', img_size=(64, 64), hub_cache=tmp_path)
    assert time.perf_counter() - t0 < 30 and len(no_network) == 1     # one quick connection check, no retries
    info = m.info()
    assert (info['encoder_weights'], info['encoder_weights_requested'], info['pretrained']) == (None, 'imagenet', False)
    assert 'not in the Hugging Face cache' in info['weights_note']
    with pytest.raises(ConfigError, match='require=True'):
        build_smp('unet', 'resnet18', hub_cache=tmp_path, require_weights=True)


def test_none_weights_never_touch_the_network(no_network):
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        m = _small()
    assert no_network == [] and m.info()['weights_note'] is None


def test_imagenet_from_the_hub_cache_offline(no_network, tmp_path):
    "A cached smp-hub file is used without any connection (the revision is pinned), and loaded into the encoder."
    import segmentation_models_pytorch as smp
    from safetensors.torch import save_file
    s = smp.encoders.encoders['resnet18']['pretrained_settings']['imagenet']
    enc = smp.encoders.get_encoder('resnet18', weights=None)
    torch.nn.init.constant_(enc.conv1.weight, 0.125)
    snap = tmp_path/f"models--{s['repo_id'].replace('/', '--')}"/'snapshots'/s['revision']
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(snap/'model.safetensors'))
    used, path, note = resolve_encoder_weights('resnet18', 'imagenet', hub_cache=tmp_path)
    assert (used, note) == ('imagenet', None) and path.endswith('model.safetensors')
    m = build_smp('unet', 'resnet18', img_size=(64, 64), hub_cache=tmp_path)
    assert no_network == [] and m.pretrained and m.info()['encoder_weights'] == 'imagenet'
    assert torch.all(m.net.encoder.conv1.weight == 0.125)


@settings(max_examples=6, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), classes=st.sampled_from([1, 3]))
def test_predict_shape_any_image(h, w, classes):
    m = _MODELS[classes]
    img = np.random.default_rng(h * 1000 + w).integers(0, 255, (h, w, 3), np.uint8)
    p = m.predict(img)
    assert p.shape == ((classes,) if classes > 1 else ()) + (h, w) and p.dtype == np.float32
    assert 0 <= p.min() <= p.max() <= 1


_MODELS = {1: _small(img_size=(64, 128), encoder='resnet18'), 3: _small(img_size=(64, 128), num_classes=3)}


def test_predict_batch_equals_predict_and_restores_mode():
    m = _small(batch_size=2)
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 255, s + (3,), np.uint8) for s in [(64, 256), (30, 40), (64, 256), (64, 256), (10, 500)]]
    m.net.train()
    b = m.predict_batch(ims)
    for im, p in zip(ims, b): np.testing.assert_allclose(m.predict(im), p, atol=1e-5)
    assert m.net.training
    m.net.eval(); m.predict(ims[0]); assert not m.net.training
    with pytest.raises(ConfigError, match='no prompts'): m.predict(ims[0], boxes=np.zeros((1, 4)))


def test_letterbox_padding_is_ignored_by_prediction():
    "The valid region decides the output: the same strip predicted alone or padded into a larger canvas agrees."
    m = _small()
    img = np.random.default_rng(1).integers(0, 255, (32, 256, 3), np.uint8)
    x, _, info = m._letterbox(img)
    assert tuple(x.shape) == (3, 32, 256) and info.padded_shape == (32, 256)
    x2, _, info2 = m._letterbox(img[:, :200])
    assert info2.padded_shape == (64, 256) and info2.resized_shape == (41, 256) and x2[:, 41:].abs().sum() == 0


def test_dsc_aux_present_in_training_absent_in_inference():
    m = _small(arch='dsc_unet', num_classes=2, aux_weights=(0.5, 0.25))
    x = torch.randn(2, 3, 64, 128)
    m.net.train()
    main, aux = m.net(x)
    assert main.shape == (2, 2, 64, 128) and [a.shape[-2:] for a in aux] == [(32, 64), (16, 32)]
    (main.mean() + sum(a.mean() for a in aux)).backward()
    assert all(p.grad is not None for p in m.net.aux_heads.parameters())
    ran = []
    for h in m.net.aux_heads: h.register_forward_hook(lambda *a: ran.append(1))
    p = m.predict(np.zeros((64, 128, 3), np.uint8))
    assert p.shape == (2, 64, 128) and ran == []
    with pytest.raises(ConfigError, match='aux_weights'): _small(arch='dsc_unet', aux_weights=(1,) * 5)
    with pytest.raises(ConfigError, match='> 0'): _small(arch='dsc_unet', aux_weights=(0.5, 0))


def test_deepcopy_keeps_hooks_separate():
    "A deep copy (EMA, DDP helpers) taps its own blocks, not the original's."
    import copy
    m = _small(arch='dsc_unet')
    c = copy.deepcopy(m.net).train()
    _, aux = c(torch.randn(2, 3, 64, 64))
    assert len(aux) == 4 and all(getattr(b, "_ds_out", None) is None for b in m.net.net.decoder.blocks)


def test_checkpoints_are_strict(tmp_path):
    a, b = _small(seed=0), _small(seed=1)
    img = np.random.default_rng(2).integers(0, 255, (64, 256, 3), np.uint8)
    f = a.save_weights(tmp_path/'a.pt')
    np.testing.assert_allclose(b.load_weights(f).predict(img), a.predict(img), atol=1e-6)
    with pytest.raises(DataError, match='encoder'): _small(encoder='resnet34').load_weights(f)
    with pytest.raises(DataError, match='arch'): _small(arch='dsc_unet').load_weights(f)
    with pytest.raises(DataError, match='not found'): a.load_weights(tmp_path/'none.pt')
    torch.save({'state_dict': {}}, tmp_path/'other.pt')
    with pytest.raises(DataError, match='not a defect-sam'): a.load_weights(tmp_path/'other.pt')
    sd = dict(a.trainable_state_dict()); k = next(iter(sd)); sd[k] = sd[k][:1]
    with pytest.raises(ConfigError, match='1 of another shape'): a.load_trainable_state_dict(sd)
    sd = dict(a.trainable_state_dict()); sd['extra.weight'] = torch.zeros(1)
    with pytest.raises(ConfigError, match='1 unexpected'): a.load_trainable_state_dict(sd)
    c = build_smp('unet', 'resnet18', encoder_weights=None, img_size=(64, 256), trained=f)
    assert c.info()['trained'] == str(f)


def test_bad_parameters():
    with pytest.raises(ConfigError, match='num_classes'): _small(num_classes=0)
    with pytest.raises(ConfigError, match='img_size'): _small(img_size=(16, 64))
    with pytest.raises(ConfigError, match='unknown encoder'): _small(encoder='resnet7')
    with pytest.raises(ConfigError, match='cannot build'): _small(arch='unet3')


def _splits(n=8, binary=True):
    from defect_sam.data.load import load_dataset
    from defect_sam.data.splits import split_dataset
    ds = load_dataset('synthetic', n_images=n, seed=0, height=64, width=256, binary=binary)
    return split_dataset(ds, (0.5, 0.25, 0.25), seed=0)


@pytest.mark.parametrize('name', ['unet', 'unet_r50', 'unetpp', 'dsc_unet'])
def test_train_through_the_shared_loop(tmp_path, monkeypatch, name):
    "Every registered U-Net trains a couple of steps with the one loop; DSC-UNet's aux loss is there, the others' is 0."
    from defect_sam.training.loop import TrainConfig, train
    monkeypatch.setenv('DEFECT_SAM_CACHE', str(tmp_path/'cache'))
    sp = _splits()
    m = build_model(name, encoder_weights=None, img_size=(64, 128))
    assert m.name == name and m.info()['model'] == name and m.trainable and m.default_weight_decay == 1e-4
    before = {k: v.clone() for k, v in m.trainable_state_dict().items()}
    res = train(m, sp['train'], sp['val'], TrainConfig(steps=2, batch_size=2, lr=1e-3, val_every=2, ckpt_every=2,
                                                       log_every=1, progress=False), tmp_path/'run')
    assert res.steps == 2 and res.best_checkpoint is not None
    h = res.history[res.history.kind == 'train']
    aux = h['loss_aux'].dropna()
    assert len(aux) and ((aux > 0).all() if name == 'dsc_unet' else (aux == 0).all())
    changed = [k for k, v in m.trainable_state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert changed and (name != 'dsc_unet' or any(k.startswith('aux_heads') for k in changed))
    s = sp['test'][0]
    p = m.predict(s.image)
    assert p.shape == s.shape and p.dtype == np.float32 and 0 <= p.min() <= p.max() <= 1


def test_four_class_unet_trains_and_predicts_per_class(tmp_path, monkeypatch):
    from defect_sam.evaluation.evaluate import evaluate
    from defect_sam.training.loop import TrainConfig, train
    monkeypatch.setenv('DEFECT_SAM_CACHE', str(tmp_path/'cache'))
    sp = _splits(binary=False)
    m = _small(num_classes=4, img_size=(64, 128))
    train(m, sp['train'], sp['val'], TrainConfig(steps=2, batch_size=2, val_every=None, progress=False), tmp_path/'run')
    s = sp['test'][0]
    assert m.predict(s.image).shape == (4,) + s.shape
    r = evaluate(m, sp['test'], class_aware=True, progress=False)
    assert len(r.table) == len(sp['test']) and 'iou_pits' in r.table
