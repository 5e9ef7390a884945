"""`defect-sam`: run (in-process and bad parameters), grid exit codes, report, models — through the real entry point."""
import subprocess
import sys
from pathlib import Path

import yaml

from defect_sam.cli import main
from defect_sam.experiments.config import config_fields
from defect_sam.experiments.table import read_results

ROOT = Path(__file__).resolve().parent.parent
TINY = ['--model', 'sam2_zeroshot', '--weights', 'random', '--sam2-image-size', '64', '--device', 'cpu', '--n-figures', '0',
        '--dataset-options', '{n_images: 8, height: 32, width: 96}', '--split', '[0.5, 0.25, 0.25]']


def cli(*args, cwd=None):
    "The console script `defect-sam=defect_sam.cli:main`, run the way setuptools runs it."
    return subprocess.run([sys.executable, '-c', 'import sys; from defect_sam.cli import main; sys.exit(main())', *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def test_help_lists_every_parameter():
    r = cli('run', '--help')
    assert r.returncode == 0
    for name in config_fields(): assert f"--{name.replace('_', '-')}" in r.stdout, name
    assert '--no-notebook' in r.stdout and '--config' in r.stdout
    top = cli('--help')
    assert top.returncode == 0 and all(c in top.stdout for c in ('run', 'grid', 'report', 'models'))


def test_run_in_process_then_report(tmp_path):
    r = cli('run', *TINY, '--results-dir', tmp_path, '--no-notebook')
    assert r.returncode == 0, r.stderr
    t = read_results(tmp_path)
    assert len(t) == 1 and f'done {t.exp_id[0]}: test mIoU' in r.stdout
    rep = cli('report', '--results-dir', tmp_path, '--n-boot', '50')
    assert rep.returncode == 0, rep.stderr
    assert 'leaderboard_oracle: ' in rep.stdout and 'lora_vs_full_oracle: skipped: no LoRA runs' in rep.stdout
    assert 'leaderboard_deployable: skipped: no deployable runs' in rep.stdout   # one oracle-prompted run: nothing deployable
    assert (tmp_path/'figures'/'leaderboard_oracle.pdf').exists()


def test_bad_parameters_exit_2_and_name_them(tmp_path, capsys):
    r = cli('run', '--steps', 'lots', '--results-dir', tmp_path)
    assert r.returncode == 2 and "'steps' must be of type int" in r.stderr
    assert main(['run', '--model', 'sam3', '--dry-run']) == 2
    assert "unknown model 'sam3'" in capsys.readouterr().err


def test_grid_exit_status(tmp_path, capsys):
    g = tmp_path/'g.yaml'
    (tmp_path/'broken.pt').write_bytes(b'not a checkpoint')   # a checkpoint must exist to name a run: this one fails when loaded
    g.write_text(yaml.safe_dump({'fixed': {'model': 'sam2_zeroshot', 'weights': str(tmp_path/'broken.pt'), 'sam2_image_size': 64,
                                           'dataset_options': {'n_images': 8, 'height': 32, 'width': 96}, 'split': [0.5, 0.25, 0.25]}}))
    assert main(['grid', str(g), '--results-dir', str(tmp_path), '--dry-run']) == 0
    assert '1 runs, 0 done' in capsys.readouterr().out
    assert main(['grid', str(g), '--results-dir', str(tmp_path), '--no-notebook']) == 1
    out = capsys.readouterr().out
    assert 'FAILED' in out and 'broken.pt' in out
    assert main(['grid', str(tmp_path/'nope.yaml')]) == 2


def test_models_lists_the_registry(capsys):
    assert main(['models']) == 0
    out = capsys.readouterr().out
    assert 'sam2_lora' in out and 'yolo_sam2' in out


def test_project_errors_exit_2_with_one_line(tmp_path, capsys):
    "A DataError (here a corrupt or missing .onnx) is one `error:` line and exit 2, through the console script: no traceback."
    imgs = tmp_path/'in'; imgs.mkdir()
    (imgs/'a.png').write_bytes(bytes.fromhex('89504e470d0a1a0a'))   # never read: the source fails first
    (tmp_path/'bad.onnx').write_bytes(b'not an onnx graph')
    r = cli('predict', tmp_path/'bad.onnx', imgs, '--out', tmp_path/'out')
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith(f"defect-sam predict: error: {tmp_path/'bad.onnx'}: onnxruntime cannot load it"), r.stderr
    assert main(['predict', str(tmp_path/'none.onnx'), str(imgs), '--out', str(tmp_path/'out')]) == 2
    assert capsys.readouterr().err.strip() == f"defect-sam predict: error: {tmp_path/'none.onnx'}: ONNX file not found"
