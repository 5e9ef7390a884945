"""Runners for the launcher tests, imported by the submitit worker processes (PYTHONPATH holds tests/).

`counted_run` appends one line per execution of a run to $DEFECT_SAM_TEST_MARKER (O_APPEND: whole lines), recording
the worker's process, CUDA_VISIBLE_DEVICES and the training step the run starts from; with
$DEFECT_SAM_TEST_KILL=<exp_id>:<step> it kills its own process (SIGKILL, as a preempted or crashed node would) after
that optimizer step of that run's first execution."""
import json
import os
import signal
from pathlib import Path


def counted_run(cfg):
    import defect_sam.models.base as models
    from defect_sam.experiments.model import checkpoint_dir
    from defect_sam.experiments.run import run_experiment
    from defect_sam.training.loop import read_checkpoint
    last = checkpoint_dir(cfg)/'last.torch'
    start = read_checkpoint(last)['step'] if last.exists() else 0
    line = json.dumps({'exp_id': cfg.exp_id, 'pid': os.getpid(), 'start_step': start,
                       'gpus': os.environ.get('CUDA_VISIBLE_DEVICES')}) + '\n'
    fd = os.open(os.environ['DEFECT_SAM_TEST_MARKER'], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, line.encode()); os.close(fd)
    kill = os.environ.get('DEFECT_SAM_TEST_KILL', '')
    if kill.rsplit(':', 1)[0] == cfg.exp_id and start == 0:
        at, n = int(kill.rsplit(':', 1)[1]), [0]
        orig = models.TrainableSegmenter.after_optimizer_step
        def step(self):
            orig(self); n[0] += 1
            if n[0] == at: os.kill(os.getpid(), signal.SIGKILL)
        models.TrainableSegmenter.after_optimizer_step = step
    run_experiment(cfg, progress=False)


def markers(path):
    p = Path(path)
    return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []
