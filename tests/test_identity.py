"""One definition of a run (issue 19): every ExperimentConfig field has a role, and the run id, the keys, the report's
configuration groups and the checks between runs derive from the roles and the registry, with no other list."""
import json
import shutil
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from defect_sam.core.errors import ConfigError, DataError
from defect_sam.data.formats import write_severstal
from defect_sam.data.load import load_dataset
from defect_sam.experiments.config import FIELD_ROLES, KEY_ROLES, ExperimentConfig, field_roles
from defect_sam.experiments.data import data_record, experiment_data, manifest_dir
from defect_sam.experiments.run import check_other_runs, run_experiment, run_status
from defect_sam.experiments.table import append_result, read_results
from defect_sam.models.registry import FEATURES, MODELS

TINY = dict(weights='random', sam2_image_size=64, img_size=64, device='cpu', n_figures=0,
            dataset_options={'n_images': 12, 'height': 32, 'width': 128}, split=[0.5, 0.25, 0.25])


@pytest.fixture(scope='module')
def sites(tmp_path_factory):
    "Two Severstal-layout folders with the same file names: site B has one label changed; site C is a byte copy of A."
    d = tmp_path_factory.mktemp('sites')
    write_severstal(list(load_dataset('synthetic', n_images=8, height=32, width=64, seed=3)), d/'A')
    shutil.copytree(d/'A', d/'B'); shutil.copytree(d/'A', d/'C')
    csv = d/'B'/'train.csv'; lines = csv.read_text().splitlines()
    i = next(k for k, l in enumerate(lines[1:], 1) if l.split(',')[1] in ('1', '2'))
    parts = lines[i].split(','); parts[1] = '3' if parts[1] != '3' else '1'; lines[i] = ','.join(parts)
    csv.write_text('\n'.join(lines) + '\n')
    return d


# ---------------------------------------------------------------- the property: every field, its role, its keys

# A second valid value of each field, where the type alone does not give one (a changed value must stay valid).
OTHER = {'model': 'unet', 'dataset': 'severstal', 'sam2_size': 'small', 'weights': 'auto', 'prompt': 'points_3',
         'prompt_source': 'some-detector-run', 'detector_img_size': 64, 'lora_strategy': 'encoder_decoder', 'peft_method': 'dora',
         'threshold': 'val', 'postprocess': 'fill', 'device': 'cpu', 'exp_name': 'named', 'gate': 'some-gate-run',
         'tta': ['hflip'], 'ensemble': ['run-a', 'run-c'], 'ensemble_weights': [2, 1], 'track': ['tensorboard'],
         'track_experiment': 'other', 'embedding_store': '/tmp/store', 'split': [0.6, 0.2, 0.2], 'augment': None,
         'train_options': {'patience': 3}, 'prompt_kwargs': {'n_neg': 2}, 'dataset_options': {'n_images': 16, 'height': 32, 'width': 128},
         'test_options': {'n_images': 16}, 'sam2_image_size': 128, 'img_size': 128, 'data_root': None, 'results_dir': 'elsewhere',
         'weight_decay': 0.01, 'sam2_output': 'token0', 'use_object_score': True}


def _other(f):
    if f.name in OTHER: return OTHER[f.name]
    d = f.default_factory() if f.default is MISSING else f.default
    if isinstance(d, bool): return not d
    if isinstance(d, int): return d + 1
    if isinstance(d, float): return d / 2
    if d is None and 'int' in str(f.type): return 3
    raise AssertionError(f'no second value for field {f.name!r}: add it to OTHER')


def _user(feature):
    "A model that uses this feature (None: every model), and base settings that make the field used."
    if feature is None: return 'sam2_lora'
    return next(m for m, s in MODELS.items() if feature in s.features and m != 'ensemble') if feature != 'ensemble' else 'ensemble'


def _base(model, name):
    b = dict(TINY, model=model)
    if model == 'ensemble': b |= {'ensemble': ['run-a', 'run-b'], 'threshold': 'val'}
    if name == 'detector_img_size': b['prompt_source'] = 'some-detector-run'
    if name == 'test_options': b['split'] = [0.8, 0.2, 0]
    if name == 'ensemble_weights': b['ensemble_weights'] = [1, 1]
    return b


def test_every_field_has_a_role():
    roles = field_roles()
    assert set(roles) == {f.name for f in fields(ExperimentConfig)}
    assert set(roles.values()) <= set(FIELD_ROLES), {k: r for k, r in roles.items() if r not in FIELD_ROLES}
    assert all(f.metadata['feature'] in (None, *FEATURES) for f in fields(ExperimentConfig))


@pytest.mark.parametrize('f', [f for f in fields(ExperimentConfig) if f.name not in ('data_root', 'dataset')], ids=lambda f: f.name)
def test_a_field_changes_exactly_the_keys_its_role_says(f):
    role, feature = f.metadata['role'], f.metadata['feature']
    model = _user(feature)
    base = _base(model, f.name)
    a = ExperimentConfig(**base)
    b = ExperimentConfig(**{**base, f.name: _other(f)}) if f.name != 'model' else ExperimentConfig(**{**base, 'model': 'sam2_full'})
    keys = lambda c: {k: getattr(c, k) for k in ('exp_id', *KEY_ROLES)}
    ka, kb = keys(a), keys(b)
    changed = {k for k in ka if ka[k] != kb[k]}
    want = {'run': set(), 'name': {'exp_id'}, 'seed': {'exp_id', 'params_hash', 'train_key', 'inference_key'}}.get(role)
    if want is None: want = {'exp_id', *(k for k, roles in KEY_ROLES.items() if role in roles)}
    assert changed == want, (f.name, role, changed)
    for other in [m for m, s in MODELS.items() if feature is not None and feature not in s.features]:   # models without the feature
        ob = _base(other, f.name)                                                                          # ignore the field, or refuse it
        try: changed = ExperimentConfig(**{**ob, f.name: _other(f)})
        except ConfigError: continue
        assert ExperimentConfig(**ob).exp_id == changed.exp_id, (f.name, other)


def test_a_run_field_never_changes_a_key_and_the_seed_not_the_configuration():
    a = ExperimentConfig(**TINY, model='unet')
    for k, v in (('device', 'cpu'), ('results_dir', '/x'), ('n_figures', 0), ('track', 'tensorboard'), ('embedding_store', '/s')):
        assert ExperimentConfig(**{**TINY, 'model': 'unet', k: v}).identity() == {**a.identity(), 'run': ExperimentConfig(**{**TINY, 'model': 'unet', k: v}).identity()['run']}
    s = ExperimentConfig(**TINY, model='unet', seed=7)
    assert s.exp_id != a.exp_id and s.config_key == a.config_key and s.data_key == a.data_key


# ---------------------------------------------------------------- 1. data and weights by content

def test_two_folders_with_the_same_names_are_two_datasets(sites, tmp_path):
    tiny = {k: v for k, v in TINY.items() if k != 'dataset_options'}
    cfg = lambda s, **kw: ExperimentConfig(model='unet', dataset='severstal', data_root=str(sites/s), results_dir=str(tmp_path), **tiny, **kw)
    a, b, c = cfg('A'), cfg('B'), cfg('C')
    assert a.exp_id != b.exp_id and a.train_key != b.train_key and a.data_key != b.data_key
    assert manifest_dir(a) != manifest_dir(b)
    assert a.exp_id == c.exp_id and a.data_key == c.data_key   # the same bytes at another root: the same data
    assert a.data_name == 'severstal:A' and b.data_name == 'severstal:B'


def test_a_checkpoint_is_known_by_its_content(tmp_path):
    w = tmp_path/'w.pt'; w.write_bytes(b'one')
    cfg = lambda: ExperimentConfig(model='sam2_lora', weights=str(w), **{k: v for k, v in TINY.items() if k != 'weights'})
    first = cfg().exp_id
    w.write_bytes(b'two')   # overwritten in place: another run
    assert cfg().exp_id != first
    moved = tmp_path/'moved.pt'; moved.write_bytes(b'two')
    assert ExperimentConfig(model='sam2_lora', weights=str(moved), **{k: v for k, v in TINY.items() if k != 'weights'}).exp_id == cfg().exp_id
    with pytest.raises(DataError, match='no such file'):
        ExperimentConfig(model='sam2_lora', weights=str(tmp_path/'none.pt'), **{k: v for k, v in TINY.items() if k != 'weights'}).exp_id


# ---------------------------------------------------------------- 2. configurations are not averaged as seeds

def test_thresholds_and_losses_are_different_configurations():
    base = dict(TINY, model='sam2_lora')
    assert ExperimentConfig(**base, threshold=0.3).config_key != ExperimentConfig(**base, threshold=0.7).config_key
    assert ExperimentConfig(**base, train_options={'loss': 'sam2'}).config_key != ExperimentConfig(**base).config_key
    for k, v in (('lora_alpha', 8), ('lora_dropout', 0.1), ('split_seed', 1), ('eval_prompt_seed', 3), ('split', [0.6, 0.2, 0.2])):
        assert ExperimentConfig(**{**base, k: v}).config_key != ExperimentConfig(**base).config_key, k


def test_the_report_keeps_configurations_apart_and_says_how_they_differ(tmp_path):
    from defect_sam.outputs.report import leaderboard, load_results
    rows = []
    for loss in ('dice_focal', 'sam2'):
        for seed in (0, 1):
            c = ExperimentConfig(**TINY, model='sam2_lora', prompt='full_image', seed=seed, results_dir=str(tmp_path),
                                 train_options={'loss': loss})
            d = tmp_path/c.exp_id; d.mkdir()
            pd.DataFrame({'id': ['a', 'b'], 'iou': [0.5, 0.6], 'dice': [0.6, 0.7], 'gt_defect': [True, True], 'pred_defect': [True, True],
                          'tp': [5, 6], 'fp': [5, 4], 'fn': [0, 0]}).to_csv(d/'per_image.csv', index=False)
            (d/'summary.json').write_text(json.dumps({'identity': c.identity()}, default=str))
            rows.append({'exp_id': c.exp_id, 'model': 'sam2_lora', 'dataset': 'synthetic', 'variant': 'lora_decoder_r8', 'prompt_type': 'full_image',
                         'prompt_source': 'gt', 'prompt_regime': 'automatic', 'sam2_size': 'tiny', 'lora_strategy': 'decoder', 'lora_rank': 8,
                         'seed': seed, 'run_dir': c.exp_id, 'per_image_csv': f'{c.exp_id}/per_image.csv', 'config_key': c.config_key,
                         'data_key': c.data_key, 'data_name': c.data_name, 'test_mIoU': 0.55})
    for r in rows: append_result(r, tmp_path/'experiments.csv')
    t = load_results(tmp_path)
    assert t.config.nunique() == 2 and t.label.nunique() == 2
    assert any('loss' in l and 'sam2' in l for l in t.label), list(t.label)
    board = leaderboard(tmp_path, n_boot=20)
    assert list(board.n_seeds) == [2, 2]                                         # two configurations of two seeds each, not one of four


def test_an_old_table_is_refused_rather_than_misgrouped(tmp_path):
    from defect_sam.outputs.report import load_results
    append_result({'exp_id': 'old-run-12345678', 'model': 'unet', 'dataset': 'synthetic'}, tmp_path/'experiments.csv')
    with pytest.raises(DataError, match='do not record what their run is'):
        load_results(tmp_path)


# ---------------------------------------------------------------- 3. and 5. runs that feed another

def _fake_finished(results, cfg, model):
    "A finished run of `model` on `cfg`'s data (row and data.json), without training one."
    parts = experiment_data(cfg)
    d = Path(results)/cfg.exp_id; d.mkdir(parents=True)
    (d/'data.json').write_text(json.dumps(data_record(cfg, parts)))
    append_result({'exp_id': cfg.exp_id, 'model': model, 'run_dir': cfg.exp_id}, Path(results)/'experiments.csv')
    return cfg.exp_id


def test_a_detector_that_saw_the_test_images_is_refused(tmp_path):
    det = _fake_finished(tmp_path, ExperimentConfig(**TINY, model='yolo_det', split_seed=7, results_dir=str(tmp_path)), 'yolo_det')
    cfg = ExperimentConfig(**TINY, model='sam2_zeroshot', prompt_source=det, results_dir=str(tmp_path))
    rec = data_record(cfg, experiment_data(cfg))
    with pytest.raises(ConfigError, match=r"prompt source '.*' trained or validated on \d+ of the 3 test images") as e:
        check_other_runs(cfg, rec)
    assert cfg.exp_id in str(e.value)
    ok = _fake_finished(tmp_path, ExperimentConfig(**TINY, model='yolo_det', results_dir=str(tmp_path)), 'yolo_det')
    check_other_runs(ExperimentConfig(**TINY, model='sam2_zeroshot', prompt_source=ok, results_dir=str(tmp_path)), rec)
    unet = _fake_finished(tmp_path, ExperimentConfig(**TINY, model='unet', results_dir=str(tmp_path)), 'unet')
    with pytest.raises(ConfigError, match="'unet' run, which cannot be a detector"):
        check_other_runs(ExperimentConfig(**TINY, model='sam2_zeroshot', prompt_source=unet, results_dir=str(tmp_path)), rec)


def test_a_gate_is_not_an_ensemble_member(tmp_path):
    gate = _fake_finished(tmp_path, ExperimentConfig(**TINY, model='gate', threshold='val', results_dir=str(tmp_path)), 'gate')
    unet = _fake_finished(tmp_path, ExperimentConfig(**TINY, model='unet', results_dir=str(tmp_path)), 'unet')
    cfg = ExperimentConfig(**TINY, model='ensemble', ensemble=[unet, gate], threshold='val', results_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="ensemble member .*'gate' run, which cannot be a segmenter"):
        check_other_runs(cfg, data_record(cfg, experiment_data(cfg)))
    with pytest.raises(ConfigError, match='cannot be a segmenter'):   # the whole run refuses before anything is averaged
        run_experiment(cfg, progress=False)
    assert cfg.exp_id not in set(read_results(tmp_path).exp_id)


# ---------------------------------------------------------------- 4. a failed re-run keeps the finished run

def test_a_rerun_killed_during_evaluation_keeps_the_row_and_files(tmp_path, monkeypatch):
    import defect_sam.experiments.scoring as scoring
    cfg = dict(TINY, model='sam2_zeroshot', results_dir=str(tmp_path))
    first = run_experiment(cfg, progress=False)
    before = read_results(tmp_path)
    files = {p.relative_to(first.run_dir): p.read_bytes() for p in first.run_dir.rglob('*') if p.is_file()}
    def dies(*a, **k): raise KeyboardInterrupt('killed during the evaluation')
    monkeypatch.setattr(scoring, 'evaluate', dies)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, progress=False)
    pd.testing.assert_frame_equal(read_results(tmp_path), before)
    assert {p.relative_to(first.run_dir): p.read_bytes() for p in first.run_dir.rglob('*') if p.is_file()} == files
    assert run_status(tmp_path, first.row['exp_id']) == 'done'
    monkeypatch.undo()
    again = run_experiment(cfg, progress=False)   # the next attempt replaces it whole
    assert again.row['test_mIoU'] == pytest.approx(first.row['test_mIoU']) and len(read_results(tmp_path)) == 1
    assert not list((tmp_path/'.attempts').glob(f"{first.row['exp_id']}.*"))


# ---------------------------------------------------------------- 6. the floor in sight

def test_a_model_that_predicts_nothing_is_labelled_and_sits_on_the_floor(tmp_path):
    from defect_sam.outputs.report import leaderboard
    gt = np.arange(20) < 6   # 14 of 20 test images defect-free (70%)
    for name, pred in (('nothing', np.zeros(20, bool)), ('finder', gt.copy())):
        d = tmp_path/name; d.mkdir()
        tp = np.where(pred & gt, 8, 0); fn = np.where(gt, 10, 0) - tp
        iou = np.where(gt, tp / 10, 1.0)
        pd.DataFrame({'id': [f'i{k}' for k in range(20)], 'iou': iou, 'dice': 2 * iou / (1 + iou), 'gt_defect': gt, 'pred_defect': pred,
                      'tp': tp, 'fp': 0, 'fn': fn, 'floor_box_iou': np.where(gt, 0.5, 1.0)}).to_csv(d/'per_image.csv', index=False)
        append_result({'exp_id': name, 'model': 'unet', 'dataset': 'synthetic', 'prompt_regime': 'none', 'per_image_csv': f'{name}/per_image.csv',
                       'run_dir': name, 'config_key': name, 'data_key': 'k', 'data_name': 'synthetic', 'test_mIoU': iou.mean()},
                      tmp_path/'experiments.csv')
    board = leaderboard(tmp_path, ('mIoU', 'mIoU_defect', 'false_alarm_rate'), n_boot=20).set_index('model')
    b = leaderboard(tmp_path, ('mIoU',), n_boot=20)
    nothing = b[b.exp_ids == 'nothing'].iloc[0]
    assert nothing.label.endswith('(predicts nothing)') and nothing.predicts_nothing
    assert nothing.floor_empty == pytest.approx(0.7) and nothing.above_floor == pytest.approx(0.0, abs=1e-12)
    assert b[b.exp_ids == 'finder'].iloc[0].above_floor == pytest.approx(0.24)   # 0.94 = 0.7 + 6 x 0.8 / 20
