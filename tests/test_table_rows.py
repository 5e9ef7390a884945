"""The results table is a view of the finished runs' row files (issue 21): deleted, or replaced by an older copy between
two runs, the next append or `defect-sam table --rebuild` brings every row back, and readers get the same rows as before."""
import pandas as pd

from defect_sam.cli import main
from defect_sam.experiments.run import run_experiment, run_status
from defect_sam.experiments.table import read_results

TINY = dict(model='sam2_zeroshot', weights='random', sam2_image_size=64, device='cpu', n_figures=0,
            dataset_options={'n_images': 8, 'height': 32, 'width': 96}, split=[0.5, 0.25, 0.25])


def _by_id(t: pd.DataFrame) -> pd.DataFrame:
    return t.sort_values('exp_id').reset_index(drop=True)


def test_a_deleted_or_older_table_loses_no_row(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('DEFECT_SAM_CACHE', str(tmp_path/'cache'))
    d = tmp_path/'res'
    run = lambda prompt: run_experiment(dict(TINY, results_dir=str(d), prompt=prompt), progress=False).row['exp_id']
    a = run('box')
    older = (d/'experiments.csv').read_bytes()
    b = run('points_1')
    (d/'experiments.csv').write_bytes(older)                          # an older copy (b's row lost) between two runs
    assert run_status(d, b) == 'done'                                   # a grid would not run b again
    c = run('points_3')                                                 # the next append brings b back
    appended = read_results(d)
    assert sorted(appended.exp_id) == sorted([a, b, c])

    (d/'experiments.csv').unlink()                                      # the table deleted
    assert main(['table', '--results-dir', str(d)]) == 1
    assert '3 finished runs missing from it' in capsys.readouterr().out
    assert main(['table', '--rebuild', '--results-dir', str(d)]) == 0
    assert '3 rows, 3 restored from their row files' in capsys.readouterr().out
    pd.testing.assert_frame_equal(_by_id(read_results(d)), _by_id(appended))   # what readers see: the same rows, to the last digit
    assert list(read_results(d).columns) == list(appended.columns)
