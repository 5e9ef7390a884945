"""Every report figure is legible on a thesis page: each visible text is at least 7 pt when the saved figure is placed
16 cm wide (font size x 16 cm / saved width, measured at save time). Fake results tables drive the curves (no runs);
two tiny real runs (a random-init U-Net at two thresholds, synthetic images) give the qualitative grid its saved predictions."""
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from defect_sam.outputs.report import build_report, plot_qualitative
from defect_sam.evaluation.figures import MIN_PRINT_PT, PRINT_WIDTH_CM, print_font_sizes


@pytest.fixture
def measured(monkeypatch):
    "The print sizes of the texts of every figure saved (one table per save), with the figure's suptitle or first title."
    seen, save = [], Figure.savefig
    def savefig(self, fname, *a, **k):
        title = (self._suptitle.get_text() if self._suptitle else '') or next((x.get_title() for x in self.axes if x.get_title()), '')
        seen.append((title[:40], print_font_sizes(self)))
        return save(self, fname, *a, **k)
    monkeypatch.setattr(Figure, 'savefig', savefig)
    return seen


def _fake_results(d, n=20, seed=0):
    "A results folder with many configurations: models, LoRA ranks, prompts, subset sizes, two seeds, long labels."
    rng = np.random.default_rng(seed)
    rows = []
    configs = [dict(model='unet', variant='pretrained'), dict(model='unetpp', variant='pretrained'),
               dict(model='sam2_full', variant='full', prompt_type='box', sam2_size='tiny'),
               dict(model='sam2_zeroshot', variant='zeroshot', prompt_type='points_3', sam2_size='tiny'),
               *[dict(model='sam2_lora', variant=f'lora_decoder_r{r}', lora_strategy='decoder', lora_rank=r, prompt_type='box',
                      sam2_size='tiny') for r in (4, 8, 16)]]
    for c in configs:
        for sub in (50, 100, 200, 400):
            for s in (0, 1):
                eid = f"{c['model']}-{c.get('lora_rank', '')}-{sub}-{s}"
                iou = rng.uniform(0, 1, n)
                (d/eid).mkdir(parents=True)
                pd.DataFrame({'id': [f'image_with_a_long_name_{j:03d}.jpg' for j in range(n)], 'iou': iou, 'dice': 2 * iou / (1 + iou),
                              'skel_iou': iou, 'tp': rng.integers(0, 100, n), 'fp': rng.integers(0, 50, n),
                              'fn': rng.integers(0, 50, n), 'gt_defect': True}).to_csv(d/eid/'pi.csv', index=False)
                rows.append({'exp_id': eid, 'dataset': 'severstal', 'seed': s, 'weights': 'pretrained', 'subset_size': sub,
                             'config_key': f"{c['model']}-{c.get('lora_rank', '')}-{sub}", 'data_key': 'one-test-set', 'data_name': 'severstal',
                             'lr': 1e-4, 'test_mIoU': iou.mean(), 'test_Dice': rng.uniform(.3, .8),
                             'avg_inference_time': rng.uniform(.01, 1), 'per_image_csv': f'{eid}/pi.csv', **c})
    pd.DataFrame(rows).to_csv(d/'experiments.csv', index=False)
    return d


def _check(measured):
    assert measured, 'no figure was saved'
    bad = [(name, t[t.printed_pt < MIN_PRINT_PT - 1e-6].sort_values('printed_pt').head(3).to_dict('records')) for name, t in measured]
    bad = [b for b in bad if b[1]]
    assert not bad, f'text under {MIN_PRINT_PT} pt at {PRINT_WIDTH_CM} cm width: {bad}'


def test_report_figures_are_legible_at_16_cm(tmp_path, measured):
    figs = build_report(_fake_results(tmp_path), n_boot=30)
    made = [k for k, f in figs.items() if f.ok]
    want = [f'{k}_{r}' for k in ('leaderboard', 'data_efficiency', 'speed_accuracy', 'metric_distributions') for r in ('deployable', 'oracle')]
    want += ['lora_vs_full_oracle', 'prompts', 'paired_0']   # U-Nets are deployable; the SAM2 rows are oracle-prompted
    for k in want: assert k in made, (k, figs[k].message)
    _check(measured)
    assert len(measured) >= 2 * len(want)   # png and pdf of each


def test_qualitative_grid_is_legible_with_short_labels_and_one_legend(tmp_path, measured):
    from defect_sam.outputs.explore import demo_results
    d = demo_results(tmp_path/'results')
    measured.clear()          # the runs' own figures are not report figures
    from defect_sam.experiments.table import read_results
    f = plot_qualitative(d, list(read_results(d).exp_id), n_images=3, palette='cb')
    assert f.ok, f.message
    assert sorted(f.table.short_label) == ['U-Net t=0.3', 'U-Net t=0.5']
    _check(measured)
    with pytest.raises(Exception, match="unknown palette 'rainbow'"): plot_qualitative(d, palette='rainbow')
