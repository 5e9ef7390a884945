"""The report: the notebook runs on a small real results folder; every figure function copes with missing data; the
bootstrap and the paired test behave."""
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from defect_sam.experiments.run import run_experiment
from defect_sam.outputs.report import bootstrap, build_report, leaderboard, load_results, metric_values, paired_comparison, plot_data_efficiency, plot_leaderboard, plot_lora_vs_full, plot_metric_distributions, plot_paired, plot_prompt_comparison, plot_qualitative, plot_speed_accuracy

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(model='sam2_zeroshot', weights='random', sam2_image_size=64, device='cpu', n_figures=0,
            dataset_options={'n_images': 12, 'height': 32, 'width': 128}, split=[0.5, 0.25, 0.25])


@pytest.fixture(scope='module')
def results(tmp_path_factory):
    "Three real (tiny, untrained) zero-shot runs that differ in their prompt: two oracle prompts, one automatic."
    d = tmp_path_factory.mktemp('results')
    for p in ('box', 'points_1', 'full_image'): run_experiment({**TINY, 'prompt': p, 'results_dir': str(d)}, progress=False)
    return d


def test_report_notebook_runs(results, tmp_path):
    import papermill as pm
    out = tmp_path/'report.ipynb'
    pm.execute_notebook(str(ROOT/'nbs'/'report.ipynb'), str(out), parameters={'results_dir': str(results), 'n_boot': 100},
                        progress_bar=False, cwd=str(tmp_path))
    nb = nbformat.read(out, as_version=4)
    text = '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
    assert 'skipped: no model was trained on two or more subset sizes' in text
    assert 'skipped: no LoRA runs' in text
    figs = {p.name for p in (results/'figures').iterdir()}
    for name in ('leaderboard_oracle', 'leaderboard_deployable', 'prompts', 'speed_accuracy_oracle', 'speed_accuracy_deployable',
                 'paired_0', 'metric_distributions_oracle', 'metric_distributions_deployable', 'qualitative'):
        assert {f'{name}.png', f'{name}.pdf'} <= figs, name
    assert '### deployable' in text or 'deployable' in str([c.get('outputs') for c in nb.cells])
    assert not [n for n in figs if n.endswith('.tmp')]


def test_qualitative_shows_the_same_images_across_runs(results):
    runs = load_results(results)
    f = plot_qualitative(results, exp_ids=list(runs.exp_id), n_images=3)
    assert f.ok and list(f.table.exp_id) == list(runs.exp_id)
    ids = f.table.images.iloc[0].split()
    assert 1 <= len(ids) <= 3 and set(ids) <= set(pd.read_csv(results/runs.per_image_csv[0], dtype={'id': str}).id)
    assert len(plot_qualitative(results).table) == 1   # by default the best run of each model (here one model)


def test_oracle_and_deployable_runs_are_never_ranked_together(results):
    runs = load_results(results)
    assert sorted(runs.prompt_regime) == ['automatic', 'oracle', 'oracle']
    dep, orc = leaderboard(results, n_boot=20), leaderboard(results, n_boot=20, ranking='oracle')
    assert list(dep.prompt_regime) == ['automatic'] and sorted(orc.prompt_regime) == ['oracle', 'oracle']
    assert set(plot_speed_accuracy(results).table.label) == set(dep.label)


def _fake(tmp_path, rows, n=30, seed=0, with_tables=True):
    rng = np.random.default_rng(seed)
    out = []
    for k, r in enumerate(rows):
        eid = r.get('exp_id', f'run{k}')
        row = {'exp_id': eid, 'dataset': 'synthetic', 'seed': 0, 'weights': 'pretrained', 'test_mIoU': rng.uniform(.3, .8),
               'config_key': f'config-{eid}', 'data_key': 'one-test-set', 'data_name': 'synthetic',
               'test_Dice': rng.uniform(.3, .8), 'avg_inference_time': rng.uniform(.01, 1), **r}
        if with_tables:
            iou = rng.uniform(0, 1, n)
            (tmp_path/eid).mkdir(parents=True, exist_ok=True)
            pd.DataFrame({'id': [f'i{j}' for j in range(n)], 'iou': iou, 'dice': 2 * iou / (1 + iou), 'skel_iou': iou,
                          'tp': rng.integers(0, 100, n), 'fp': rng.integers(0, 50, n), 'fn': rng.integers(0, 50, n),
                          'gt_defect': True}).to_csv(tmp_path/eid/'pi.csv', index=False)
            row['per_image_csv'] = f'{eid}/pi.csv'
        out.append(row)
    pd.DataFrame(out).to_csv(tmp_path/'experiments.csv', index=False)
    return tmp_path


ALL = [plot_leaderboard, plot_data_efficiency, plot_lora_vs_full, plot_prompt_comparison, plot_speed_accuracy,
       plot_metric_distributions, plot_qualitative]


@pytest.mark.parametrize('fn', ALL, ids=lambda f: f.__name__)
def test_empty_results_give_messages(fn, tmp_path):
    f = fn(tmp_path)
    assert not f.ok and f.message and not (tmp_path/'figures').exists()


@pytest.mark.parametrize('fn, contains', [
    (plot_data_efficiency, 'two or more subset sizes'), (plot_lora_vs_full, 'no LoRA runs'),
    (plot_prompt_comparison, 'no prompted (SAM2) runs'), (plot_qualitative, 'saved predictions')])
def test_subsets_missing_give_messages(fn, contains, tmp_path):
    d = _fake(tmp_path, [{'model': 'unet', 'variant': 'pretrained', 'subset_size': 100, 'lr': 1e-3}, {'model': 'unet', 'variant': 'pretrained', 'subset_size': 100, 'lr': 1e-4}])
    f = fn(d)
    assert not f.ok and contains in f.message


def test_missing_per_image_tables(tmp_path):
    d = _fake(tmp_path, [{'model': 'unet', 'variant': 'scratch'}, {'model': 'unetpp', 'variant': 'scratch'}], with_tables=False)
    b = leaderboard(d, n_boot=50)
    assert b.mIoU.notna().all() and b.mIoU_lo.isna().all() and len(b.attrs['missing_per_image']) == 2
    f = plot_leaderboard(d, n_boot=50)
    assert f.ok and 'no per-image tables' in f.message
    assert 'no per-image table' in paired_comparison(d, 'run0', 'run1')['message']
    assert not plot_metric_distributions(d).ok
    figs = build_report(d, n_boot=50)
    assert figs['leaderboard_deployable'].ok and not figs['leaderboard_oracle'].ok and not figs['qualitative'].ok


def test_bootstrap_is_seeded_and_covers_the_estimate():
    v = np.random.default_rng(1).uniform(0, 1, 50)
    a, b = bootstrap(v, 'mIoU', 500, seed=3), bootstrap(v, 'mIoU', 500, seed=3)
    assert a == b and a[1] < a[0] < a[2] and a[0] == pytest.approx(v.mean())
    assert bootstrap(v, 'mIoU', 500, seed=4) != a
    wide, narrow = bootstrap(v, 'mIoU', 1000, ci=0.99), bootstrap(v, 'mIoU', 1000, ci=0.5)
    assert wide[1] < narrow[1] < narrow[2] < wide[2]
    nan = v.copy(); nan[:10] = np.nan
    assert bootstrap(nan, 'mIoU', 100)[0] == pytest.approx(np.nanmean(nan))


def test_pooled_metrics_bootstrap_from_counts():
    t = pd.DataFrame({'tp': [10, 0, 5], 'fp': [0, 5, 5], 'fn': [10, 0, 0]})
    est, lo, hi = bootstrap(metric_values(t, 'F1_pooled'), 'F1_pooled', 300)
    assert est == pytest.approx(2 * 15 / (2 * 15 + 10 + 10)) and lo <= est <= hi


def test_paired_comparison_against_scipy(tmp_path):
    from scipy.stats import wilcoxon
    d = _fake(tmp_path, [{'model': 'unet', 'variant': 'a', 'exp_id': 'A'}, {'model': 'unetpp', 'variant': 'b', 'exp_id': 'B'}])
    ab, ba = paired_comparison(d, 'A', 'B', n_boot=300), paired_comparison(d, 'B', 'A', n_boot=300)
    a, b = (pd.read_csv(d/k/'pi.csv').iou.to_numpy() for k in 'AB')
    assert ab['mean_diff'] == pytest.approx((a - b).mean()) and ba['mean_diff'] == pytest.approx(-ab['mean_diff'])
    assert ab['wilcoxon_p'] == pytest.approx(wilcoxon(a, b).pvalue) == pytest.approx(ba['wilcoxon_p'])
    assert ab['a_better'] == ba['b_better'] and ab['n_images'] == 30
    assert plot_paired(d, 'A', 'B', n_boot=100).ok


def test_seeds_are_pooled_per_image(tmp_path):
    d = _fake(tmp_path, [{'model': 'unet', 'variant': 'x', 'seed': s, 'exp_id': f's{s}', 'config_key': 'one-configuration'} for s in range(3)])
    b = leaderboard(d, n_boot=50)
    assert len(b) == 1 and b.n_seeds[0] == 3
    t = [pd.read_csv(d/f's{s}'/'pi.csv').iou for s in range(3)]
    assert b.mIoU[0] == pytest.approx(np.mean(t))
    assert len(leaderboard(d, by='run', n_boot=50)) == 3
    assert set(load_results(d).label) == {'unet'}
