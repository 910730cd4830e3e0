"""A study run's evaluation, in its own process: the last checkpoint of the
run's training, evaluated as its settings say (post-hoc calibrators, shift);
or a free run's: its members' checkpoints as an ensemble, or one under
test-time augmentation."""
import json
import os.path as osp

import torch
from mmengine.config import Config

from ..evaluation.run_report import (ShiftPlan, evaluate_checkpoint, evaluate_model,
                                     load_model)
from ..evaluation.tta import with_tta
from ..utils.io import write_atomic
from .multipliers import multiplier_record

RUN_FILE = 'run.json'  # written by the study: settings and device
EVALUATION_FILE = 'evaluation.json'  # written here
TRAIN_DIR = 'train'  # the run's training work_dir
CORRUPTION_SEED = 0
# The risk of the conformal pixel sets every run reports (90 % coverage), as the
# segmentation conformal literature reports them (Mossina et al. 2024).
CONFORMAL_ALPHA = 0.1


def evaluate_run(run_dir: str) -> dict:
    """Evaluate the run in ``run_dir`` (its ``config.py``, ``run.json`` and the
    last checkpoint under ``train/``) and write ``evaluation.json``: the report
    of :func:`cals_seg.evaluation.run_report.evaluate_checkpoint` on the test
    split, the hold-out and selection parts and under shift, with conformal
    sets at :data:`CONFORMAL_ALPHA` calibrated on the selection part, plus the learned
    multipliers when the run has a multiplier hook. A free run (``run.json``'s
    ``free``: its kind and its members' run folders) is evaluated raw on the
    test split and under shift, and says what its TTA did (``tta``).

    Returns:
        dict: what was written.
    """
    with open(osp.join(run_dir, RUN_FILE)) as f:
        run = json.load(f)
    settings = run['settings']
    torch.set_grad_enabled(False)
    shift = ShiftPlan(settings['corruptions'], settings['severities'],
                      CORRUPTION_SEED, settings['domain_root'])
    if run.get('free'):
        report = _evaluate_free(run['free'], torch.device(run['device']), shift,
                                settings.get('background'))
        write_atomic(osp.join(run_dir, EVALUATION_FILE),
                     json.dumps(report).encode('utf-8'))
        return report
    cfg = Config.fromfile(osp.join(run_dir, 'config.py'))
    train_dir = osp.join(run_dir, TRAIN_DIR)
    checkpoint = last_checkpoint(run_dir)
    report, _ = evaluate_checkpoint(cfg, checkpoint, settings['posthoc'],
                                    torch.device(run['device']),
                                    splits=('test', 'holdout', 'selection'),
                                    shift=shift,
                                    background=settings.get('background'),
                                    conformal=CONFORMAL_ALPHA)
    if any(h.get('type') == 'CALSMultiplierHook'
           for h in cfg.get('custom_hooks') or []):
        report['multipliers'] = multiplier_record(checkpoint, train_dir)
    write_atomic(osp.join(run_dir, EVALUATION_FILE),
                 json.dumps(report).encode('utf-8'))
    return report


def last_checkpoint(run_dir: str) -> str:
    """The last checkpoint of a run's training.

    Raises:
        FileNotFoundError: the run kept none.
    """
    pointer = osp.join(run_dir, TRAIN_DIR, 'last_checkpoint')
    if not osp.isfile(pointer):
        raise FileNotFoundError(f'{run_dir} kept no checkpoint ({pointer} is '
                                'missing)')
    with open(pointer) as f:
        return f.read().strip()


def _evaluate_free(free: dict, device: torch.device, shift: ShiftPlan,
                   background) -> dict:
    """An ensemble of the members' last checkpoints, or the one member under
    test-time augmentation, evaluated raw."""
    from ..models.segmentors import ProbabilityTTAModel, SeedEnsemble
    cfg = Config.fromfile(osp.join(free['members'][0], 'config.py'))
    models = [load_model(Config.fromfile(osp.join(member, 'config.py')),
                         last_checkpoint(member), device)
              for member in free['members']]
    extra = {}
    if free['kind'] == 'ensemble':
        model = SeedEnsemble(models)
    else:
        cfg, extra['tta'] = with_tta(cfg)
        model = ProbabilityTTAModel(module=models[0])
    report, _ = evaluate_model(model, cfg, (), device, ('test', ), shift, background,
                               CONFORMAL_ALPHA)
    return dict(report, **extra)
