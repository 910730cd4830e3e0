"""Every shipped config loads, names registered types, and builds its model."""
import copy
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
    for suffix in ('_nacl.py', '_svls.py', '_crac.py', '_cals-label.py'):
        assert len([c for c in CONFIGS if c.endswith(suffix)]) == 6, suffix
    for path in cals:
        assert path.replace('_cals.py', '_ce.py') in CONFIGS
        assert path.replace('_cals.py', '_cals-trainsrc.py') in CONFIGS


def _without_loss(cfg):
    """The config with the decode head's loss and the hooks taken out."""
    cfg = copy.deepcopy(cfg.to_dict())
    cfg['model']['decode_head'].pop('loss_decode')
    for key in ('custom_hooks', 'visualizer', 'work_dir', 'filename'):
        cfg.pop(key, None)
    return cfg


@pytest.mark.parametrize('path', [c for c in CONFIGS if c.endswith('_cals.py')])
def test_cals_configs_follow_the_authors_protocol(path):
    """Margin 20, multipliers once per epoch from the held-out part of the
    training split, cross-entropy over valid pixels, gradient clipping at 2.0,
    and nothing else different from the cross-entropy twin."""
    cals = Config.fromfile(osp.join(REPO, path))
    twin = Config.fromfile(osp.join(REPO, path.replace('_cals.py', '_ce.py')))
    loss = cals.model.decode_head.loss_decode
    assert (loss.type, loss.margin, loss.penalty) == ('CALSLoss', 20.0, 'phr')
    assert loss.avg_non_ignore and twin.model.decode_head.loss_decode.avg_non_ignore
    hook, = cals.custom_hooks
    assert (hook.source, hook.interval) == ('holdout', 'epoch')
    assert hook.holdout_dataloader.dataset.split == 'holdout'
    train = cals.train_dataloader.dataset
    assert (train.type, train.split) == ('HashSplitDataset', 'train')
    assert train.holdout_fraction == hook.holdout_dataloader.dataset.holdout_fraction
    assert cals.optim_wrapper.clip_grad == dict(max_norm=2.0, norm_type=2)
    assert _without_loss(cals) == _without_loss(twin)
    variant = Config.fromfile(
        osp.join(REPO, path.replace('_cals.py', '_cals-trainsrc.py')))
    assert [(h.source, h.interval) for h in variant.custom_hooks] == [('train',
                                                                       'epoch')]
    assert _without_loss(variant) == _without_loss(cals)


NEIGHBOURHOOD = {'_nacl.py': 'NACLLoss', '_svls.py': 'SVLSLoss'}


@pytest.mark.parametrize('path', [c for c in CONFIGS
                                  if c.endswith(tuple(NEIGHBOURHOOD))])
def test_neighbourhood_loss_configs_are_their_ce_twin_plus_the_loss(path):
    suffix = '_' + path.rsplit('_', 1)[1]
    cfg = Config.fromfile(osp.join(REPO, path))
    twin = Config.fromfile(osp.join(REPO, path.replace(suffix, '_ce.py')))
    loss = cfg.model.decode_head.loss_decode
    assert loss.type == NEIGHBOURHOOD[suffix] and loss.avg_non_ignore
    assert (loss.kernel_size, loss.get('alpha', 0.1)) == (3, 0.1)
    assert _without_loss(cfg) == _without_loss(twin)


@pytest.mark.parametrize('path', [c for c in CONFIGS
                                  if c.endswith(('_crac.py', '_cals-label.py'))])
def test_grouped_configs_are_the_cals_protocol_with_their_loss(path):
    suffix = '_' + path.rsplit('_', 1)[1]
    cfg = Config.fromfile(osp.join(REPO, path))
    cals = Config.fromfile(osp.join(REPO, path.replace(suffix, '_cals.py')))
    loss = cfg.model.decode_head.loss_decode
    if suffix == '_crac.py':
        assert (loss.type, loss.margin, loss.rho_init, loss.penalty) == (
            'CRaCLoss', 5.0, 0.1, 'phr')
    else:
        assert (loss.type, loss.groups, loss.margin) == ('CALSLoss', 'label', 20.0)
    assert loss.num_classes == cfg.model.decode_head.num_classes
    assert cfg.custom_hooks == cals.custom_hooks
    assert _without_loss(cfg) == _without_loss(cals)


@pytest.mark.parametrize('path', CONFIGS)
def test_config_builds_its_model(path):
    register_all_modules()
    cfg = Config.fromfile(osp.join(REPO, path))
    assert cfg.custom_imports['imports'] == [
        'cals_seg', 'cals_seg.utils.mmengine_checkpoints']
    model = MODELS.build(cfg.model)
    loss = model.decode_head.loss_decode
    if '_cals' in path or '_crac' in path:
        assert type(loss).__name__ in ('CALSLoss', 'CRaCLoss')
        assert loss.num_classes == cfg.model.decode_head.num_classes
        hooks = [h['type'] for h in cfg.custom_hooks]
        assert hooks == ['CALSMultiplierHook']
        assert cfg.custom_hooks[0].get('source', 'train') != 'val'
    evaluators = [e['type'] for e in cfg.val_evaluator]
    assert evaluators[:2] == ['IoUMetric', 'CalibrationMetric']


def test_readme_config_example_loads_and_follows_the_protocol(tmp_path):
    readme = open(osp.join(REPO, 'README.md')).read()
    start = readme.index("```python\n_base_ = 'mmseg::") + len('```python\n')
    (tmp_path / 'example.py').write_text(readme[start:readme.index('```', start)])
    cfg = Config.fromfile(str(tmp_path / 'example.py'))
    shipped = Config.fromfile(osp.join(REPO, 'configs', 'deeplabv3_voc_cals.py'))
    for key in ('train_dataloader', 'optim_wrapper'):
        assert cfg[key] == shipped[key]
    assert cfg.custom_hooks[0] == shipped.custom_hooks[0]
    register_all_modules()
    assert type(MODELS.build(cfg.model).decode_head.loss_decode).__name__ == 'CALSLoss'
