"""The embedding store: two processes writing, reading and evicting the same keys under a small byte bound never see a
partial or wrong file; LoRA decoder training from a float32 store encodes each image once for the whole run and ends
with the same weights, bit for bit, as training without any cache; augmented images bypass the store."""
import hashlib
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch

from defect_sam.models.sam.store import EmbeddingStore

SHAPE = (1, 64, 32, 32)                       # 256 KiB of float32 per key
KEYS = [f'post64-w-{k:02d}' for k in range(12)]


def _expected(key):
    g = torch.Generator().manual_seed(int(hashlib.blake2b(key.encode(), digest_size=4).hexdigest(), 16))
    return {'image_embed': torch.randn(SHAPE, generator=g), 'hr0': torch.randn(1, 8, 16, 16, generator=g)}


def _worker(folder, max_bytes, seed, rounds, q):
    s = EmbeddingStore(folder, max_bytes=max_bytes, rescan_every=4)
    rng, bad, hits, puts = np.random.default_rng(seed), 0, 0, 0
    for _ in range(rounds):
        for k in rng.permutation(KEYS):
            got = s.get(k)
            if got is None: puts += s.put(k, _expected(k))
            else:
                hits += 1
                bad += not all(torch.equal(got[n], v) for n, v in _expected(k).items())
    q.put(dict(bad=bad, hits=hits, puts=puts, evictions=s.evictions))


def test_two_processes_share_one_store(tmp_path):
    size = sum(v.numel() * 4 for v in _expected(KEYS[0]).values())
    bound = 5 * size                                                  # 12 keys do not fit: both processes evict
    ctx = mp.get_context('spawn')
    q = ctx.Queue()
    ps = [ctx.Process(target=_worker, args=(str(tmp_path), bound, seed, 6, q)) for seed in (0, 1)]
    for p in ps: p.start()
    for p in ps: p.join(120)
    assert [p.exitcode for p in ps] == [0, 0]
    res = [q.get(timeout=5) for _ in ps]
    assert sum(r['bad'] for r in res) == 0                             # never a partial or another key's file
    assert all(r['hits'] > 0 and r['puts'] > 0 for r in res) and sum(r['evictions'] for r in res) > 0
    assert not list(tmp_path.glob('*/.*.tmp'))                         # no temporary file left behind
    s = EmbeddingStore(tmp_path, max_bytes=bound)
    assert s.info()['bytes'] <= bound + 2 * (size + 1024)             # over the bound by at most the other job's writes


def test_store_files_are_whole_and_unreadable_ones_recomputed(tmp_path):
    s = EmbeddingStore(tmp_path)
    x = _expected('k')
    assert s.put('k', x) and not s.put('k', x)
    p = s.path('k')
    p.write_bytes(p.read_bytes()[:100])                                # damaged by hand (writes are atomic)
    with pytest.warns(UserWarning, match='unreadable file'):
        assert s.get('k') is None
    assert not p.exists()


def _sam_lora(**kw):
    from defect_sam.models.sam.inference import build_sam2
    return build_sam2('lora', 'tiny', weights='random', image_size=64, lora_strategy='decoder', lora_rank=4, seed=0, **kw)


def test_training_from_the_store_encodes_each_image_once_and_is_exact(tmp_path):
    from _train_toys import tiny_data
    from defect_sam.training.loop import TrainConfig, train
    train_ds, _ = tiny_data(n=8, height=32, width=64)                  # 4 training images
    cfg = dict(steps=4, batch_size=2, lr=1e-2, val_every=None, progress=False, log_every=4, ckpt_every=4, augment=None)   # 2 epochs
    stored = _sam_lora(cache_bytes=0, disk_cache=tmp_path/'store', disk_cache_dtype='float32')
    plain = _sam_lora(cache_bytes=0)                                   # no cache at all: the encoder at every step
    plain.load_trainable_state_dict(stored.trainable_state_dict())     # the same LoRA initialisation
    train(stored, train_ds, None, TrainConfig(**cfg), tmp_path/'a')
    assert stored.encoder_images == len(train_ds) == 4                 # once per image for the whole run
    assert stored.cache_info()['disk_writes'] == 4 and stored.cache.store.hits == 4
    train(plain, train_ds, None, TrainConfig(**cfg), tmp_path/'b')
    assert plain.encoder_images == 8
    a, b = stored.trainable_state_dict(), plain.trainable_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)   # float32 store: exact

    again = _sam_lora(cache_bytes=0, disk_cache=tmp_path/'store', disk_cache_dtype='float32')   # another run, same store
    train(again, train_ds, None, TrainConfig(**{**cfg, 'steps': 2}), tmp_path/'c')
    assert again.encoder_images == 0

    aug = _sam_lora(cache_bytes=0, disk_cache=tmp_path/'aug', disk_cache_dtype='float32')
    train(aug, train_ds, None, TrainConfig(**{**cfg, 'steps': 2, 'augment': {}}), tmp_path/'d')
    assert aug.cache_info()['disk_writes'] == 0 and not list((tmp_path/'aug').glob('*/*.safetensors'))   # augmented: bypassed


def test_a_store_file_evicted_under_a_reader_is_a_miss_and_the_run_is_unchanged(tmp_path, monkeypatch):
    "Issue 21: another client evicts a file between the check and the read (NFS: ESTALE); the run completes with the same numbers, and its time still counts the encoder."
    import errno
    import json
    from defect_sam.experiments.run import run_experiment
    store = tmp_path/'store'
    base = dict(model='sam2_zeroshot', weights='random', sam2_image_size=64, device='cpu', n_figures=0, prompt='box',
                dataset_options={'n_images': 20, 'height': 32, 'width': 96}, split=[0.4, 0.2, 0.4], embedding_store=str(store),
                results_dir=str(tmp_path/'results'))
    first = run_experiment({**base, 'exp_name': 'first'}, progress=False)
    assert len(list(store.rglob('*.float32.safetensors'))) > 0
    real, gone = EmbeddingStore.get, []
    def evicted_under_the_reader(self, key):
        if len(gone) % 2 == 0:                                        # every other read: the file vanishes as it is read
            gone.append(key)
            def stale(*a, **k): raise OSError(errno.ESTALE, 'Stale file handle')
            with monkeypatch.context() as m:
                m.setattr(Path, 'read_bytes', stale)
                return real(self, key)
        gone.append(None)
        return real(self, key)
    monkeypatch.setattr(EmbeddingStore, 'get', evicted_under_the_reader)
    second = run_experiment({**base, 'exp_name': 'second'}, progress=False)
    assert any(g is not None for g in gone)
    for k in ('test_mIoU', 'test_Dice', 'val_mIoU', 'threshold'):
        assert second.row[k] == first.row[k], k
    t1, t2 = first.test.table, second.test.table
    assert (t1.encoder_run[~t1.prompt_empty] == 1).all()               # the first run encoded every image it prompted
    assert (t2.encoder_run[~t2.prompt_empty] == 0).any() and (t2.encoder_run[~t2.prompt_empty] == 1).any()   # stored, and re-encoded
    cold = t2[t2.encoder_run == 1].infer_s
    assert second.row['avg_inference_time'] == pytest.approx(cold.mean())   # only images whose encoder ran count
