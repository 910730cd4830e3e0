"""Every shipped config loads, names registered types, and builds its model."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config

from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

import cals_seg  # noqa: F401
from helpers import REPO

CONFIGS = sorted(
    osp.relpath(p, REPO)
    for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)
    if '_base_' not in p)


def test_every_paper_config_has_its_baseline():
    cals = [c for c in CONFIGS if c.endswith('_cals.py')]
    assert len(cals) >= 6
    for path in cals:
        assert path.replace('_cals.py', '_ce.py') in CONFIGS


@pytest.mark.parametrize('path', CONFIGS)
def test_config_builds_its_model(path):
    register_all_modules()
    cfg = Config.fromfile(osp.join(REPO, path))
    assert cfg.custom_imports['imports'] == ['cals_seg']
    model = MODELS.build(cfg.model)
    loss = model.decode_head.loss_decode
    if path.endswith('_cals.py'):
        assert type(loss).__name__ == 'CALSLoss'
        assert loss.num_classes == cfg.model.decode_head.num_classes
        hooks = [h['type'] for h in cfg.custom_hooks]
        assert hooks == ['CALSMultiplierHook']
        assert cfg.custom_hooks[0].get('source', 'train') != 'val'
    evaluators = [e['type'] for e in cfg.val_evaluator]
    assert evaluators[:2] == ['IoUMetric', 'CalibrationMetric']
