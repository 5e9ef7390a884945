"""defect_sam.evaluation.figures: PNGs written atomically, nothing left open in pyplot, bad inputs named."""
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from defect_sam.core.errors import ConfigError, DataError
from defect_sam.evaluation.figures import ERROR_COLORS, overlay_errors, plot_four_panel, plot_metric_distributions, plot_pr_curve, plot_threshold_curve


def test_many_figures_leak_nothing(tmp_path):
    rng = np.random.default_rng(0)
    before = len(plt.get_fignums())
    for k in range(8):
        im = rng.integers(0, 255, (40, 250, 3), dtype=np.uint8)
        g = (rng.random((40, 250)) < 0.1).astype(np.uint8); p = (rng.random((40, 250)) < 0.1).astype(np.uint8) * 2
        plot_four_panel(im, g, p, tmp_path / f'f{k}.png', title=str(k), dpi=60)
    assert len(plt.get_fignums()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f'f{k}.png' for k in range(8))
    assert Image.open(tmp_path / 'f0.png').format == 'PNG'


def test_overlay_on_gray_and_colours():
    g = np.array([[1, 1, 0, 0]]); p = np.array([[1, 0, 1, 0]])
    o = overlay_errors(np.zeros((1, 4), np.uint8), g, p, alpha=1)
    assert [tuple(v) for v in o[0]] == [ERROR_COLORS['tp'], ERROR_COLORS['fn'], ERROR_COLORS['fp'], (0, 0, 0)]
    with pytest.raises(DataError, match='differ'): overlay_errors(np.zeros((2, 4, 3), np.uint8), g, p)
    with pytest.raises(DataError, match='uint8'): overlay_errors(np.zeros((1, 4, 3)), g, p)


def test_replaces_existing_file_and_requires_png(tmp_path):
    f = tmp_path / 'd.png'; f.write_bytes(b'old')
    t = pd.DataFrame({'iou': [0.1, 0.9, 1.0], 'gt_defect': [True, True, False]})
    assert plot_metric_distributions(t, f, metrics=('iou', 'dice')) == f
    assert f.read_bytes()[:4] == b'\x89PNG'
    plot_metric_distributions(t, tmp_path / 'nosplit.png', by=None)
    with pytest.raises(ConfigError, match='png'): plot_pr_curve({'recall': [1], 'precision': [1]}, tmp_path / 'x.pdf')
    plot_threshold_curve(pd.DataFrame({'mIoU': [0.1, 0.2]}, index=[0.4, 0.6]), tmp_path / 't.png')
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]
