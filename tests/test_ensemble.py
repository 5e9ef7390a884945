"""`defect-sam ensemble`: two tiny finished runs averaged through the command line; refusals exit 2 with the reason."""
from defect_sam.cli import main
from defect_sam.experiments.table import read_results

TINY = ['--model', 'sam2_zeroshot', '--weights', 'random', '--sam2-image-size', '64', '--device', 'cpu', '--n-figures', '0',
        '--dataset-options', '{n_images: 8, height: 32, width: 64}', '--split', '[0.5, 0.25, 0.25]', '--class-aware']


def test_ensemble_command(tmp_path, capsys):
    for prompt in ('box', 'points_3'):
        assert main(['run', *TINY, '--prompt', prompt, '--results-dir', str(tmp_path), '--no-notebook']) == 0
    a, b = read_results(tmp_path).exp_id
    capsys.readouterr()
    assert main(['ensemble', a, b, '--results-dir', str(tmp_path), '--threshold', 'val_per_class:kaggle_dice',
                 '--postprocess', 'min_area_val', '--n-figures', '1']) == 0
    assert 'done ensemble-synthetic-s42-' in capsys.readouterr().out
    t = read_results(tmp_path)
    r = t[t.model == 'ensemble'].iloc[0]
    assert r.ensemble_members == f'{a}+{b}' and r.ensemble_weights == '0.5/0.5' and r.class_aware
    assert r.threshold_from == 'val_per_class:kaggle_dice' and len(r.class_min_areas.split('/')) == 4
    assert r.prompt_type == 'box+points_3' and r.prompt_source == 'gt' and r.weights == 'random'
    assert (tmp_path/r.run_dir/'test'/'figures'/'metric_distributions.png').exists() and 'exp_ensemble_2runs_' in r.per_image_csv
    assert main(['ensemble', a, 'no-such-run', '--results-dir', str(tmp_path)]) == 2
    assert "no such finished run" in capsys.readouterr().err
    assert main(['ensemble', a, b, '--weights', '1', '--results-dir', str(tmp_path)]) == 2
