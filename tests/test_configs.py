"""Every shipped config loads, names registered types, builds its model, and is
its method's recipe (cals_seg.methods) applied to its cross-entropy twin."""
import glob
import os.path as osp
import re

import pytest
from mmengine.config import Config

from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

import cals_seg  # noqa: F401
from cals_seg.methods import METHODS, apply_method, method_options
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


# What each shipped variant passes to apply_method besides its method: the part
# of the file name after the method ('_cals-label.py': groups='label').
VARIANT_OPTIONS = {
    'cals-label': dict(groups='label'),
    'cals-trainsrc': dict(source='train'),
    'cals-m10': dict(margin=10.0),
    'ls-0.1': dict(smoothing=0.1),
}

def _variant(path):
    """(method, options) of a shipped config, e.g. 'configs/x_cals-label.py' ->
    ('cals', {'groups': 'label'})."""
    variant = osp.splitext(path)[0].rsplit('_', 1)[1]
    method = variant.split('-')[0]
    return method, dict(VARIANT_OPTIONS.get(variant, {}))


METHOD_CONFIGS = [c for c in CONFIGS if not c.endswith('_ce.py')]


def _as_dict(cfg):
    return cfg._cfg_dict.to_dict()


def test_every_shipped_variant_is_a_known_method():
    assert len(METHOD_CONFIGS) == 48
    for path in METHOD_CONFIGS:
        method, options = _variant(path)
        assert method in METHODS, path
        assert set(options) <= set(method_options(method)), path


@pytest.mark.parametrize('path', METHOD_CONFIGS)
def test_shipped_config_is_the_recipe_of_its_ce_twin(path):
    """Each shipped method config, hand-readable as it is, is exactly what
    apply_method makes of its cross-entropy twin (every key), so the files and the
    recipes cannot drift apart."""
    method, options = _variant(path)
    twin = osp.join(osp.dirname(path),
                    osp.basename(path).rsplit('_', 1)[0] + '_ce.py')
    built = apply_method(Config.fromfile(osp.join(REPO, twin)), method, **options)
    assert _as_dict(built) == _as_dict(Config.fromfile(osp.join(REPO, path)))


R50_CE = [c for c in CONFIGS if c.endswith('_ce.py') and 'demo' not in c]


@pytest.mark.parametrize('path', R50_CE)
def test_shipped_ce_config_is_the_protocol_of_mmseg_config(path, tmp_path):
    """Each R-50 '_ce' config is apply_method(<the mmseg config it inherits>,
    'ce'), with 'road' as Cityscapes' dominant class for the third calibration
    metric. The mmseg config is read through a file that inherits it, as the
    shipped one does."""
    text = open(osp.join(REPO, path)).read()
    base = re.search(r"^_base_ = '(mmseg::[^']+)'", text, re.M).group(1)
    (tmp_path / 'mmseg_config.py').write_text(f'_base_ = {base!r}\n')
    options = dict(exclude_classes=['road']) if 'cityscapes' in path else {}
    built = apply_method(Config.fromfile(str(tmp_path / 'mmseg_config.py')), 'ce',
                         **options)
    shipped = Config.fromfile(osp.join(REPO, path))
    assert _without_scopes(_as_dict(built)) == _without_scopes(_as_dict(shipped))


def _without_scopes(value):
    """``value`` without mmengine's ``_scope_`` markers, which say which package
    an inherited dict came from: the shipped file rewrites some inherited dicts
    (the evaluators) and inherits others (the test pipeline), the recipe the
    opposite, with the same settings."""
    if isinstance(value, dict):
        return {k: _without_scopes(v) for k, v in value.items() if k != '_scope_'}
    if isinstance(value, list):
        return [_without_scopes(v) for v in value]
    return value


@pytest.mark.parametrize('path', R50_CE)
def test_r50_cals_configs_have_the_authors_rounds(path):
    """100 rounds from the hold-out part (the authors' run), and the training
    source's variant with the same number."""
    cals = Config.fromfile(osp.join(REPO, path.replace('_ce.py', '_cals.py')))
    hook, = cals.custom_hooks
    assert (hook.source, hook.rounds, hook.get('interval')) == ('holdout', 100, None)
    assert hook.holdout_dataloader == cals.holdout_dataloader
    trainsrc = Config.fromfile(
        osp.join(REPO, path.replace('_ce.py', '_cals-trainsrc.py')))
    assert trainsrc.custom_hooks == [
        dict(type='CALSMultiplierHook', source='train', rounds=100)]


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
