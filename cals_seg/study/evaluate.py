"""A study run's evaluation, in its own process: the last checkpoint of the
run's training, evaluated as its settings say (post-hoc calibrators, shift)."""
import json
import os.path as osp

import torch
from mmengine.config import Config

from ..evaluation.run_report import ShiftPlan, evaluate_checkpoint
from ..utils.io import write_atomic
from .multipliers import multiplier_record

RUN_FILE = 'run.json'  # written by the study: settings and device
EVALUATION_FILE = 'evaluation.json'  # written here
TRAIN_DIR = 'train'  # the run's training work_dir
CORRUPTION_SEED = 0


def evaluate_run(run_dir: str) -> dict:
    """Evaluate the run in ``run_dir`` (its ``config.py``, ``run.json`` and the
    last checkpoint under ``train/``) and write ``evaluation.json``: the report
    of :func:`cals_seg.evaluation.run_report.evaluate_checkpoint` on the test
    split, the hold-out and selection parts and under shift, plus the learned multipliers when the
    run has a multiplier hook.

    Returns:
        dict: what was written.
    """
    with open(osp.join(run_dir, RUN_FILE)) as f:
        run = json.load(f)
    settings = run['settings']
    cfg = Config.fromfile(osp.join(run_dir, 'config.py'))
    train_dir = osp.join(run_dir, TRAIN_DIR)
    with open(osp.join(train_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    torch.set_grad_enabled(False)
    shift = ShiftPlan(settings['corruptions'], settings['severities'],
                      CORRUPTION_SEED, settings['domain_root'])
    report, _ = evaluate_checkpoint(cfg, checkpoint, settings['posthoc'],
                                    torch.device(run['device']),
                                    splits=('test', 'holdout', 'selection'),
                                    shift=shift,
                                    background=settings.get('background'))
    if any(h.get('type') == 'CALSMultiplierHook'
           for h in cfg.get('custom_hooks') or []):
        report['multipliers'] = multiplier_record(checkpoint, train_dir)
    write_atomic(osp.join(run_dir, EVALUATION_FILE),
                 json.dumps(report).encode('utf-8'))
    return report
