"""The experiment layer: the notebook's parameters agree with ExperimentConfig, the results table survives concurrent
appends and header changes, failed runs leave no row, re-runs replace their row, saved predictions re-score."""
import json
import multiprocessing as mp
import re
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from defect_sam.core.errors import ConfigError, DataError
from defect_sam.experiments.table import RESULT_COLUMNS, append_result, read_results
from defect_sam.experiments.config import ExperimentConfig, config_fields, parameters_source
from defect_sam.experiments.data import experiment_data, manifest_dir
from defect_sam.experiments.run import run_experiment, run_status

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT/'nbs'/'run_experiment.ipynb'
TINY = dict(model='sam2_zeroshot', weights='random', sam2_image_size=64, device='cpu', n_figures=1,
            dataset_options={'n_images': 12, 'height': 32, 'width': 128}, split=[0.5, 0.25, 0.25])


def _parameters_cell(path=TEMPLATE):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
    assert len(cells) == 1, f'{path}: expected one cell tagged parameters, found {len(cells)}'
    return nb, cells[0]


def test_notebook_parameters_are_the_config():
    "One source of truth: the template's parameters cell is exactly the cell rendered from ExperimentConfig."
    nb, cell = _parameters_cell()
    assert cell.source == parameters_source(), 'nbs/run_experiment.ipynb is stale: regenerate its parameters cell from parameters_source()'
    ns = {}
    exec(cell.source, ns)
    assert ExperimentConfig.from_namespace(ns) == ExperimentConfig()
    assert set(config_fields()) <= set(ns)


def test_papermill_sees_every_parameter_with_its_help():
    from papermill import inspect_notebook
    params = inspect_notebook(str(TEMPLATE))
    fields = config_fields()
    assert list(params) == list(fields)
    for name, f in fields.items():
        assert params[name]['help'] == f['help'], name


def test_template_is_skipped_by_nbdev_test():
    nb = nbformat.read(TEMPLATE, as_version=4)
    assert nb.cells[0].cell_type == 'raw' and 'skip_exec: true' in nb.cells[0].source


def test_config_coercion_and_errors():
    c = ExperimentConfig(lr='3e-4', subset_size='100', threshold='val:mDice', class_aware='false')
    assert (c.lr, c.subset_size, c.threshold, c.class_aware) == (3e-4, 100, 'val:mDice', False)
    for bad, msg in [({'steps': 0}, 'steps must be >= 1'), ({'img_size': 100}, 'multiple of 32'),
                     ({'dataset': 'kitti'}, 'unknown dataset kind'), ({'sam2_size': 'huge'}, 'unknown SAM2 size'),
                     ({'lora_dropout': 1.0}, 'lora_dropout'), ({'weight_decay': -1}, 'weight_decay')]:
        with pytest.raises(ConfigError, match=msg): ExperimentConfig(**bad)


def test_exp_id_is_stable_and_ignores_machine_settings():
    a = ExperimentConfig(model='sam2_lora', subset_size=200, seed=1)
    assert a.exp_id == ExperimentConfig(model='sam2_lora', subset_size=200, seed=1, device='cuda:3', results_dir='/other',
                                        n_figures=0, track='tensorboard').exp_id
    assert re.fullmatch(r'sam2_lora-synthetic-n200-box-s1-[0-9a-f]{8}', a.exp_id)
    # a hard-coded id: changing the id scheme silently would orphan every finished run of a grid
    assert ExperimentConfig(model='unet', seed=0).params_hash == ExperimentConfig(seed=0, model='unet').params_hash


# ---- the results table ----

def _append_many(args):
    path, worker, n = args
    for k in range(n): append_result({'exp_id': f'w{worker}-{k}', 'model': 'unet', 'test_mIoU': k / n}, path)
    return worker


def test_concurrent_appends_lose_no_row(tmp_path):
    "Real processes appending at once: every row arrives, the table is never torn."
    path = tmp_path/'experiments.csv'
    with mp.get_context('fork').Pool(4) as pool:
        pool.map(_append_many, [(str(path), w, 15) for w in range(4)])
    t = read_results(path)
    assert sorted(t.exp_id) == sorted(f'w{w}-{k}' for w in range(4) for k in range(15))
    assert list(t.columns) == list(RESULT_COLUMNS)
    assert not list(tmp_path.glob('.experiments.csv.*.tmp')), 'no temporary file left behind'


def test_header_mismatch_is_aligned_by_name(tmp_path):
    "An older table with other columns in another order: rows stay aligned, new columns are added at the end."
    path = tmp_path/'experiments.csv'
    pd.DataFrame([{'test_mIoU': 0.4, 'exp_id': 'old', 'retired_col': 'x'}]).to_csv(path, index=False)
    with pytest.warns(UserWarning, match='adding columns'):
        append_result({'exp_id': 'new', 'model': 'unet', 'test_mIoU': 0.7}, path)
    t = read_results(path).set_index('exp_id')
    assert list(t.columns[:2]) == ['test_mIoU', 'retired_col'] and 'model' in t.columns
    assert t.loc['old', 'test_mIoU'] == 0.4 and t.loc['new', 'test_mIoU'] == 0.7
    assert t.loc['old', 'retired_col'] == 'x' and pd.isna(t.loc['new', 'retired_col']) and pd.isna(t.loc['old', 'model'])


def test_torn_table_is_an_error_not_a_silent_reset(tmp_path):
    path = tmp_path/'experiments.csv'
    path.write_text('exp_id,model\na,unet,extra,fields\n')
    with pytest.raises(DataError, match='not a readable results table'): append_result({'exp_id': 'b'}, path)
    assert path.read_text() == 'exp_id,model\na,unet,extra,fields\n'


# ---- runs ----

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp('results')
    yield run_experiment({**TINY, 'results_dir': str(d), 'threshold': 'val'}, progress=False), d
    shutil.rmtree(d, ignore_errors=True)                # its checkpoints are hundreds of MB: not kept to the session's end


def test_run_writes_everything(tiny_run):
    res, d = tiny_run
    run = res.run_dir
    assert run == d/res.row['exp_id']
    names = {p.name for p in run.iterdir()}
    assert {'params.yaml', 'summary.json', 'done.json', 'test', 'val'} <= names
    csv = [n for n in names if n.startswith('exp_')]
    assert len(csv) == 1 and re.fullmatch(r'exp_sam2_zeroshot_zeroshot_box_64_\d{8}-\d{4}\.csv', csv[0])
    s = json.loads((run/'summary.json').read_text())
    assert 'empty ground truth and empty prediction' in s['empty_convention']
    assert s['postprocess']['spec'] == 'none' and s['threshold']['from'] == 'val:mIoU'
    assert s['provenance']['params_hash'] == res.config.params_hash
    assert len(list((run/'test'/'predictions').glob('*.prob.png'))) == res.row['n_test']
    row = read_results(d).iloc[0]
    assert row.threshold_from == 'val:mIoU' and 0 <= row.threshold <= 1 and not pd.isna(row.val_mIoU)
    assert (d/row.per_image_csv).exists() and row.run_dir == res.row['exp_id']
    assert row.git_commit is None or isinstance(row.git_commit, str)
    assert row.defect_sam_version and row.params_hash == res.config.params_hash


def test_split_manifest_shared_across_models(tiny_run):
    "Every model sees the same test images: the split manifest is stored once per dataset and reused."
    res, d = tiny_run
    cfg = ExperimentConfig(**{**TINY, 'model': 'sam2_lora', 'results_dir': str(d)})
    assert manifest_dir(cfg) == manifest_dir(res.config)
    assert experiment_data(cfg)['test'].ids == sorted(pd.read_csv(d/read_results(d).per_image_csv[0], dtype={'id': str}).id)


def test_failed_run_leaves_no_partial_row(tiny_run, monkeypatch, tmp_path):
    "A run failing late (during the test evaluation) writes FAILED.json and no row; other rows are untouched."
    import defect_sam.experiments.scoring as ex
    res, d = tiny_run
    before = read_results(d)
    calls = {'n': 0}
    real = ex.evaluate
    def flaky(*a, **k):
        calls['n'] += 1
        if calls['n'] == 2: raise RuntimeError('disk full while evaluating')   # the val pass succeeds, the test pass fails
        return real(*a, **k)
    monkeypatch.setattr(ex, 'evaluate', flaky)
    cfg = {**TINY, 'results_dir': str(d), 'prompt': 'points_3'}
    with pytest.raises(RuntimeError, match='disk full') as e:
        run_experiment(cfg, progress=False)
    eid = ExperimentConfig(**cfg).exp_id
    assert any(eid in n and 'during evaluate' in n for n in e.value.__notes__)
    after = read_results(d)
    pd.testing.assert_frame_equal(before, after)
    f = json.loads((d/eid/'FAILED.json').read_text())
    assert f['stage'] == 'evaluate' and f['error'] == 'RuntimeError' and 'disk full' in f['traceback']
    assert run_status(d, eid) == 'failed' and not (d/eid/'done.json').exists()


def test_failure_after_the_append_removes_the_row(tiny_run, monkeypatch):
    "If writing done.json fails after the row went in, the row is taken out again."
    import defect_sam.experiments.run as ex
    res, d = tiny_run
    real = ex.write_json_atomic
    def no_done(path, obj, *a, **k):
        if Path(path).name == 'done.json': raise OSError('read-only file system')
        return real(path, obj, *a, **k)
    monkeypatch.setattr(ex, 'write_json_atomic', no_done)
    cfg = {**TINY, 'results_dir': str(d), 'prompt': 'points_5'}
    with pytest.raises(OSError):
        run_experiment(cfg, progress=False)
    assert ExperimentConfig(**cfg).exp_id not in set(read_results(d).exp_id)


def test_rerun_replaces_its_row_and_skip_inference_rescores(tiny_run):
    res, d = tiny_run
    n = len(read_results(d))
    again = run_experiment({**TINY, 'results_dir': str(d), 'threshold': 'val', 'skip_inference': True}, progress=False)
    assert again.row['exp_id'] == res.row['exp_id'] and len(read_results(d)) == n   # replaced, not duplicated
    assert again.row['test_mIoU'] == pytest.approx(res.row['test_mIoU'])            # same probabilities, same threshold
    other = run_experiment({**TINY, 'results_dir': str(d), 'threshold': 0.9, 'postprocess': 'fill', 'skip_inference': True}, progress=False)
    assert other.row['predictions_from'] == res.row['exp_id'] and other.row['threshold'] == 0.9
    assert other.row['avg_inference_time'] == pytest.approx(res.row['avg_inference_time'])
    with pytest.raises(ConfigError, match='no saved predictions'):
        run_experiment({**TINY, 'results_dir': str(d), 'prompt': 'grid', 'skip_inference': True}, progress=False)


def test_separate_test_set(shared_data, tmp_path):
    "Crack500's official test list as the test set; the rest split into train/val."
    cfg = dict(TINY, dataset='crack500', data_root=str(shared_data/'crack500_mini'), dataset_options={'split': 'train'},
               test_options={'split': 'test'}, split=[0.8, 0.2, 0], results_dir=str(tmp_path))
    parts = experiment_data(ExperimentConfig(**cfg))
    assert [len(parts[k]) for k in ('train', 'val', 'test')] == [96, 24, 60]
    with pytest.raises(ConfigError, match='no test part'):
        ExperimentConfig(**{**cfg, 'split': [0.8, 0.1, 0.1]})


def test_offline_pretrained_weights_stop_with_the_sam2_message(tmp_path, monkeypatch):
    "weights='auto' without the checkpoint and without network: the SAM2 layer's message, no row, FAILED.json."
    import urllib.error
    import defect_sam.models.sam.weights as sam
    from defect_sam.models.sam.weights import WeightsUnavailableError
    monkeypatch.setenv('DEFECT_SAM_SAM2_DIR', str(tmp_path/'weights'))
    def offline(url, *a, **k): raise urllib.error.URLError('network is unreachable')
    monkeypatch.setattr(sam, 'download_file', offline)
    cfg = {**TINY, 'weights': 'auto', 'results_dir': str(tmp_path)}
    with pytest.raises(WeightsUnavailableError, match=r"weights='random' runs an untrained model") as e:
        run_experiment(cfg, progress=False)
    assert 'downloading' in str(e.value) and any('during model' in n for n in e.value.__notes__)
    eid = ExperimentConfig(**cfg).exp_id
    assert json.loads((tmp_path/eid/'FAILED.json').read_text())['error'] == 'WeightsUnavailableError'
    assert not (tmp_path/'experiments.csv').exists()


def test_yolo_detector_prompts_sam2(tmp_path):
    "A finished yolo_det run prompts SAM2 by its exp_id; the yolo_sam2 pipeline trains its detector and records its prompts."
    base = {**TINY, 'results_dir': str(tmp_path), 'img_size': 64, 'steps': 1, 'batch_size': 2, 'n_figures': 0}
    det = run_experiment({**base, 'model': 'yolo_det'}, progress=False)
    assert det.row['ckpt_path'].endswith('.pt') and (tmp_path/det.row['ckpt_path']).exists()
    sam = run_experiment({**base, 'prompt_source': det.row['exp_id']}, progress=False)
    assert sam.row['prompt_source'] == f"detector:{det.row['exp_id']}" and sam.row['prompt_type'] == 'box'
    assert sam.test.extras['prompt_source'] == 'yolo_det' and sam.row['exp_id'].split('-')[2] == 'box'
    assert sam.row['prompt_regime'] == 'automatic' and sam.row['detector_img_size'] == 64   # the size the detector trained at
    assert det.row['augment'] == 'fliplr=0.5,flipud=0.5'
    from defect_sam.experiments.model import detector_source
    assert detector_source(ExperimentConfig(**{**base, 'prompt_source': det.row['exp_id'], 'detector_img_size': 96}))[2:] == (96, 'detector_img_size')
    ckpt = str(tmp_path/det.row['ckpt_path'])
    assert detector_source(ExperimentConfig(**{**base, 'prompt_source': ckpt}))[2] == 64   # from the checkpoint's train_args
    with pytest.raises(ConfigError, match='no such finished run'):
        run_experiment({**base, 'prompt_source': 'no-such-run'}, progress=False)
    pipe = run_experiment({**base, 'model': 'yolo_sam2'}, progress=False)
    r = pipe.row
    assert (r['variant'], r['prompt_type'], r['prompt_source'], r['sam2_size'], r['weights']) == ('yolo_boxes', 'box', 'yolo_det', 'tiny', 'random')
    assert (tmp_path/r['ckpt_path']).exists()
    again = run_experiment({**base, 'model': 'yolo_sam2', 'threshold': 0.3}, progress=False)   # same training: reused
    assert again.row['ckpt_path'] == r['ckpt_path'] and again.row['train_time_s'] < r['train_time_s']


# ---- the fair protocol (issue 11): identical evaluation prompts, defect-image and image-level columns, prompt options

FAIR = {**TINY, 'dataset_options': {'n_images': 16, 'height': 32, 'width': 128}, 'n_figures': 0}


def _per_image(d, row):
    return pd.read_csv(Path(d)/row['per_image_csv'], dtype={'id': str, 'prompt_hash': str}).set_index('id')


def test_run_seeds_share_the_evaluation_prompts(tmp_path):
    "Runs that differ only in their seed are prompted alike on every image; another eval_prompt_seed prompts otherwise."
    base = {**FAIR, 'prompt': 'points_3', 'prompt_kwargs': {'n_neg': 2}, 'results_dir': str(tmp_path)}
    a, b = (run_experiment({**base, 'seed': s}, progress=False) for s in (0, 1))
    assert a.row['exp_id'] != b.row['exp_id'] and a.row['eval_prompt_seed'] == b.row['eval_prompt_seed'] == 42
    ta, tb = _per_image(tmp_path, a.row), _per_image(tmp_path, b.row)
    has = ta.gt_defect.astype(bool)
    assert has.sum() >= 2 and (ta.n_prompts[has] > 0).all()
    assert ta.prompt_hash[has].tolist() == tb.prompt_hash[has].tolist()
    c = run_experiment({**base, 'seed': 0, 'eval_prompt_seed': 7}, progress=False)
    assert c.row['eval_prompt_seed'] == 7 and (_per_image(tmp_path, c.row).prompt_hash[has] != ta.prompt_hash[has]).any()
    again = run_experiment({**base, 'seed': 0, 'threshold': 0.3, 'skip_inference': True}, progress=False)   # re-scored: kept
    assert _per_image(tmp_path, again.row).prompt_hash[has].tolist() == ta.prompt_hash[has].tolist()


def test_oracle_row_defect_columns_over_defect_images_and_no_image_level(tmp_path):
    r = run_experiment({**FAIR, 'results_dir': str(tmp_path)}, progress=False).row
    t = _per_image(tmp_path, r)
    has = t.gt_defect.astype(bool)
    assert 0 < has.sum() < len(t), 'the test split needs defect and defect-free images'
    assert r['prompt_regime'] == 'oracle'
    assert r['test_mIoU_defect'] == pytest.approx(t.iou[has].mean()) and r['test_Dice_defect'] == pytest.approx(t.dice[has].mean())
    assert r['IoU@50_defect'] == pytest.approx((t.iou[has] >= 0.5).mean())
    assert r['test_mIoU'] == pytest.approx(t.iou.mean()) and (t.iou[~has] == 1).all()   # defect-free: no prompt, scored 1
    assert all(pd.isna(r[k]) for k in ('image_precision', 'image_recall', 'image_F1', 'false_alarm_rate', 'kaggle_dice'))
    assert r['Precision'] == pytest.approx(t.precision.mean()) and r['F1'] == pytest.approx(r['test_Dice'])


def test_prompt_free_row_image_level_matches_a_direct_count(tmp_path):
    pytest.importorskip('segmentation_models_pytorch')
    r = run_experiment({**FAIR, 'model': 'unet', 'img_size': 64, 'steps': 1, 'batch_size': 2, 'threshold': 0.3,
                        'results_dir': str(tmp_path)}, progress=False).row
    t = _per_image(tmp_path, r)
    g, p = t.gt_defect.astype(bool).to_numpy(), t.pred_defect.astype(bool).to_numpy()
    tp, fp, fn, tn = (g & p).sum(), (~g & p).sum(), (g & ~p).sum(), (~g & ~p).sum()
    assert r['prompt_regime'] == 'none' and r['augment'] == 'hflip=0.5,vflip=0.5' and r['trainable_params'] > 0
    assert fp + tn > 0 and r['false_alarm_rate'] == pytest.approx(fp / (fp + tn))
    if tp + fp: assert r['image_precision'] == pytest.approx(tp / (tp + fp))
    assert r['image_recall'] == pytest.approx(tp / (tp + fn))
    tot = t[['tp', 'fp', 'fn']].sum()
    assert r['Precision_pooled'] == pytest.approx(tot.tp / (tot.tp + tot.fp) if tot.tp + tot.fp else float(tot.fn == 0))


def test_prompt_kwargs_reach_training_validation_and_test(tmp_path, monkeypatch):
    "One prompt_kwargs: the training prompt simulation, validation during training, the threshold calibration and test."
    import defect_sam.evaluation.evaluate as ev
    import defect_sam.models.sam.objective as sam                  # where the training prompts are simulated
    seen = {'train': [], 'eval': []}
    sim, mk = sam.simulate_prompts, ev.make_prompts
    def spy_sim(mask, rng, **kw): seen['train'].append((kw['n_neg'], kw['neg_ring'])); return sim(mask, rng, **kw)
    def spy_mk(mask, kind, **kw): seen['eval'].append((kw.get('n_neg'), kw.get('neg_ring'))); return mk(mask, kind, **kw)
    monkeypatch.setattr(sam, 'simulate_prompts', spy_sim); monkeypatch.setattr(ev, 'make_prompts', spy_mk)
    pk = {'n_neg': 2, 'neg_ring': 4}
    res = run_experiment({**FAIR, 'model': 'sam2_lora', 'prompt': 'points_1', 'prompt_kwargs': pk, 'steps': 2, 'batch_size': 2,
                          'lora_rank': 2, 'threshold': 'val', 'train_options': {'val_every': 1}, 'results_dir': str(tmp_path)},
                         progress=False)
    assert seen['train'] and set(seen['train']) == {(2, 4)}
    assert seen['eval'] and set(seen['eval']) == {(2, 4)}          # validation in training, calibration on val, test
    s = json.loads((res.run_dir/'summary.json').read_text())
    tc = s['train']['train']['config']
    assert tc['prompt_n_neg'] == 2 and tc['prompt_neg_ring'] == 4 and tc['val_prompt_kwargs'] == pk and tc['val_prompt_seed'] == 42
    assert s['validation']['extras']['prompt_kwargs'] == s['test']['extras']['prompt_kwargs'] == pk
    assert json.loads(res.row['prompt_kwargs']) == pk and res.row['prompt_regime'] == 'oracle'
    assert 0 < res.row['trainable_params'] < res.row['total_params']
