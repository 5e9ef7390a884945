"""grids/thesis.yaml's issue-14 sweeps: TTA and per-class calibration of the best U-Net and SAM2 runs reuse one trained
model each, and the ensemble names its two members."""
from pathlib import Path

from defect_sam.experiments.grid import expand_grid

ROOT = Path(__file__).resolve().parent.parent


def test_kaggle_sweeps(grid_data):
    runs = [r for r in expand_grid(grid_data(ROOT/'grids'/'thesis.yaml')) if r.sweep.startswith('kaggle')]
    by = {}
    for r in runs: by.setdefault(r.config.model, []).append(r.config)
    for m in ('unet', 'sam2_lora'):
        cs = by[m]
        assert len({c.train_key for c in cs}) == 1 and all(c.class_aware for c in cs)   # one trained model per family
        steps = {(tuple(c.tta or ()), c.threshold, c.postprocess) for c in cs}
        assert steps == {((), 'val', 'none'), (('hflip', 'vflip'), 'val', 'none'),
                         ((), 'val_per_class:kaggle_dice', 'min_area_val'), (('hflip', 'vflip'), 'val_per_class:kaggle_dice', 'min_area_val')}
    (ens,) = by['ensemble']
    assert ens.ensemble == ['kaggle-unet-best', 'kaggle-sam2-best']
    named = {c.exp_name for cs in by.values() for c in cs if c.exp_name}
    assert named == set(ens.ensemble) and runs[-1].config.model == 'ensemble'   # the members run before it
