#!/usr/bin/env python
"""Wall time of the README's main job on this machine: the experiment notebook with its default parameters
(`papermill nbs/run_experiment.ipynb out.ipynb -p model sam2_lora`), with `-p weights random` because a benchmark must
not download the SAM2 checkpoint (pretrained weights change no timing: same architecture, same work).

    python benchmarks/bench_main_job.py [--out DIR] [extra papermill -p NAME VALUE pairs...]

Prints the end-to-end wall time (kernel start, imports, data generation, model build, training, validation, test
evaluation, files), the run's own timing columns, and the machine's load, so a slow figure can be read in context.
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', help='results folder (default: a temporary one)')
    ap.add_argument('-p', nargs=2, action='append', default=[], metavar=('NAME', 'VALUE'), help='extra papermill parameter')
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix='bench_main_job_'))
    out.mkdir(parents=True, exist_ok=True)
    # a fresh cache folder: the synthetic set is generated and no embedding is reused, as on a fresh machine
    env = {**os.environ, 'DEFECT_SAM_CACHE': str(out/'cache'), 'PYTHONPATH': str(ROOT)}
    cmd = ['papermill', str(ROOT/'nbs'/'run_experiment.ipynb'), str(out/'out.ipynb'), '-p', 'model', 'sam2_lora',
           '-p', 'weights', 'random', '-p', 'results_dir', str(out/'results')] + [x for kv in a.p for x in ('-p', *kv)]
    load0 = os.getloadavg()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=out, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)   # papermill and its kernel, once reaped
    load1 = os.getloadavg()
    if r.returncode:
        print(r.stderr[-3000:], file=sys.stderr)
        sys.exit(f'the main job failed (exit {r.returncode})')
    import pandas as pd
    row = pd.read_csv(out/'results'/'experiments.csv').iloc[-1]
    print(f"command: {' '.join(cmd)}")
    print(f"machine: {os.cpu_count()} CPUs, load average {load0[0]:.2f} before, {load1[0]:.2f} after (1-minute)")
    print(f"main job wall time: {wall:.0f} s ({wall / 60:.1f} min), limit 600 s")
    print(f"  CPU time of all its processes: {cpu:.0f} s = {cpu / wall:.2f} cores busy on average; alone on this machine "
          f"(up to {os.cpu_count()} cores) the wall time would be about {cpu / os.cpu_count():.0f}-{cpu:.0f} s")
    print(f"  run_experiment total_time_s {row.total_time_s:.0f} s, of which training {row.train_time_s:.0f} s "
          f"({row.steps:.0f} steps x {row.batch_size:.0f} images); {row.n_train:.0f}/{row.n_val:.0f}/{row.n_test:.0f} "
          f"train/val/test images; inference {row.avg_inference_time:.2f} s/image; peak RSS {row.peak_memory_mb:.0f} MB")
    print(f"  test mIoU {row.test_mIoU:.4f} (untrained weights: the number means nothing), row {row.exp_id}")

if __name__ == '__main__':
    main()
