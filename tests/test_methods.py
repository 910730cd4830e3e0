"""apply_method beyond the shipped configs (tests/test_configs.py has those):
auxiliary, list-form and cascade losses, dataset wrappers, every misuse, and the
command line."""
import copy
import os
import os.path as osp
import subprocess
import sys

import pytest
from mmengine.config import Config

from mmseg.registry import DATASETS, MODELS
from mmseg.utils import register_all_modules

import cals_seg  # noqa: F401
from cals_seg.datasets import hash_fraction
from cals_seg.datasets.demo_data import make_demo_dataset
from cals_seg.methods import (METHODS, apply_method, method_config_name,
                              method_options)
from cals_seg.methods.recipes import HOOK_OPTIONS, PROTOCOL_OPTIONS, loss_parameters
from helpers import DEMO_CONFIGS, REPO

DEMO_CE = osp.join(DEMO_CONFIGS, 'deeplabv3_r18tiny_1500it_demo-voc_ce.py')
DEMO_CALS = osp.join(DEMO_CONFIGS, 'deeplabv3_r18tiny_1500it_demo-voc_cals.py')
R50_VOC_CE = osp.join(REPO, 'configs', 'deeplabv3_voc_ce.py')
CE = dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)
LOVASZ = dict(type='LovaszLoss', reduction='none', loss_weight=0.5)


def _changed(cfg, **updates):
    """A copy of ``cfg`` with top-level keys replaced (None: removed)."""
    cfg_dict = copy.deepcopy(cfg.to_dict())
    for key, value in updates.items():
        if value is None:
            cfg_dict.pop(key, None)
        else:
            cfg_dict[key] = value
    return Config(cfg_dict)


def _with_model(cfg, **heads):
    model = copy.deepcopy(cfg.to_dict()['model'])
    model.update(heads)
    return _changed(cfg, model=model)


@pytest.mark.parametrize('name', list(METHODS))
def test_recipe_returns_a_new_config_that_builds(name):
    cfg = Config.fromfile(DEMO_CE)
    before = copy.deepcopy(cfg.to_dict())
    built = apply_method(cfg, name)
    assert cfg.to_dict() == before
    register_all_modules()
    loss = MODELS.build(built.model).decode_head.loss_decode
    assert type(loss).__name__ == (METHODS[name].loss_type or 'CrossEntropyLoss')
    hooks = [hook['type'] for hook in built.get('custom_hooks', [])]
    assert hooks == (['CALSMultiplierHook'] if name in ('cals', 'crac') else [])


def test_options_are_the_loss_arguments_and_do_not_clash():
    for name, method in METHODS.items():
        options = method_options(name)
        if method.loss_type:
            loss_options = set(options) - set(PROTOCOL_OPTIONS) - set(HOOK_OPTIONS)
            assert loss_options <= set(loss_parameters(method.loss_type))
            assert set(method.loss_defaults) <= loss_options
            assert not loss_options & (set(PROTOCOL_OPTIONS) | set(HOOK_OPTIONS))
    # CRaCLoss passes its keyword arguments on to CALSLoss: both are options.
    assert {'kernel_size', 'rho_step', 'lambd_max'} <= set(method_options('crac'))
    assert method_options('cals')['margin'] == 20.0
    assert method_options('crac')['margin'] == 5.0


def test_auxiliary_head_keeps_cross_entropy_unless_all_heads():
    cfg = Config.fromfile(R50_VOC_CE)
    decode_only = apply_method(cfg, 'ls')
    assert decode_only.model.decode_head.loss_decode == dict(
        type='LabelSmoothingLoss', smoothing=0.05, avg_non_ignore=True)
    assert decode_only.model.auxiliary_head.loss_decode == dict(
        CE, loss_weight=0.4, avg_non_ignore=True)
    every_head = apply_method(cfg, 'ls', heads='all')
    # The auxiliary head's weight 0.4 is carried over.
    assert every_head.model.auxiliary_head.loss_decode == dict(
        type='LabelSmoothingLoss', smoothing=0.05, avg_non_ignore=True,
        loss_weight=0.4)
    assert every_head.model.decode_head == decode_only.model.decode_head


def test_list_form_loss_keeps_its_other_terms():
    cfg = Config.fromfile(DEMO_CE)
    head = dict(cfg.model.decode_head.to_dict(), loss_decode=[CE, LOVASZ])
    auxiliary = [dict(type='FCNHead', in_channels=64, in_index=2, channels=16,
                      num_convs=1, concat_input=False, num_classes=6,
                      loss_decode=[dict(CE, loss_weight=0.4)])]
    cfg = _with_model(cfg, decode_head=head, auxiliary_head=auxiliary)
    built = apply_method(cfg, 'cals', margin=10.0)
    assert built.model.decode_head.loss_decode == [
        dict(type='CALSLoss', num_classes=6, margin=10.0, penalty='phr',
             avg_non_ignore=True), LOVASZ
    ]
    assert built.model.auxiliary_head[0].loss_decode == [
        dict(CE, loss_weight=0.4, avg_non_ignore=True)
    ]
    register_all_modules()
    model = MODELS.build(built.model)
    assert [type(loss).__name__ for loss in model.decode_head.loss_decode] == [
        'CALSLoss', 'LovaszLoss'
    ]


def test_cascade_changes_the_last_head_and_every_head_with_train_source():
    cfg = Config.fromfile(DEMO_CE)
    last = cfg.model.decode_head.to_dict()
    first = dict(last, type='FCNHead', loss_decode=dict(CE, loss_weight=0.4))
    cfg = _with_model(cfg, type='CascadeEncoderDecoder', num_stages=2,
                      decode_head=[first, last])
    built = apply_method(cfg, 'crac')
    assert built.model.decode_head[1].loss_decode.type == 'CRaCLoss'
    assert built.model.decode_head[0].loss_decode == dict(
        CE, loss_weight=0.4, avg_non_ignore=True)
    every_head = apply_method(cfg, 'crac', heads='all', source='train')
    assert every_head.model.decode_head[0].loss_decode == dict(
        type='CRaCLoss', num_classes=6, margin=5.0, rho_init=0.1, penalty='phr',
        avg_non_ignore=True, loss_weight=0.4)
    with pytest.raises(ValueError, match="heads='all' needs source='train'"):
        apply_method(cfg, 'crac', heads='all')


@pytest.fixture(scope='module')
def voc_root(tmp_path_factory):
    """Demo VOC data with the training images in two disjoint lists."""
    info = make_demo_dataset(str(tmp_path_factory.mktemp('voc')), 'voc',
                             num_train=12, num_val=2, size=16, seed=3)
    lists = osp.join(info['data_root'], 'ImageSets', 'Segmentation')
    for name, names in (('a', info['train'][:7]), ('b', info['train'][7:])):
        with open(osp.join(lists, f'{name}.txt'), 'w') as f:
            f.write('\n'.join(names) + '\n')
    return info


def _voc(data_root, ann_file):
    return dict(type='PascalVOCDataset', data_root=data_root,
                data_prefix=dict(img_path='JPEGImages',
                                 seg_map_path='SegmentationClass'),
                ann_file=f'ImageSets/Segmentation/{ann_file}',
                pipeline=[dict(type='LoadImageFromFile')])


def _names(dataset_cfg):
    dataset = DATASETS.build(dataset_cfg)
    return [osp.splitext(osp.basename(dataset.get_data_info(i)['img_path']))[0]
            for i in range(len(dataset))]


def _split(train_dataset, fraction=0.5, method='ce', **options):
    """apply_method on the demo config with ``train_dataset`` unsplit."""
    cfg = Config.fromfile(DEMO_CE)
    train = dict(cfg.train_dataloader.to_dict(), dataset=train_dataset)
    cfg = _changed(cfg, train_dataloader=train, holdout_dataloader=None,
                   holdout_fraction=None, selection_fraction=None)
    return apply_method(cfg, method, holdout_fraction=fraction, **options)


@pytest.mark.parametrize('wrapper', ['concat', 'repeat', 'concat_of_repeat'])
def test_wrapped_training_set_splits_into_disjoint_parts(voc_root, wrapper):
    root = voc_root['data_root']
    a, b = _voc(root, 'a.txt'), _voc(root, 'b.txt')
    train_dataset = dict(
        concat=dict(type='ConcatDataset', datasets=[a, b]),
        repeat=dict(type='RepeatDataset', times=3,
                    dataset=dict(type='ConcatDataset', datasets=[a, b])),
        concat_of_repeat=dict(type='ConcatDataset', datasets=[
            dict(type='RepeatDataset', times=2, dataset=a), b]))[wrapper]
    register_all_modules()
    cfg = _split(train_dataset)
    assert cfg.train_dataloader.dataset.type == 'HashSplitDataset'
    trained = _names(cfg.train_dataloader.dataset)
    held_out = _names(cfg.holdout_dataloader.dataset)
    assert trained and held_out
    assert not set(trained) & set(held_out)
    assert set(trained) | set(held_out) == set(voc_root['train'])
    # The hold-out loader reads each image once, with the test pipeline.
    assert len(held_out) == len(set(held_out))
    repeats = {'concat': 1, 'repeat': 3}.get(wrapper)
    if repeats:
        assert len(trained) == repeats * len(set(trained))
    holdout = cfg.holdout_dataloader.dataset
    assert holdout.pipeline == cfg.val_dataloader.dataset.pipeline


def test_selection_part_is_apart_from_training_and_the_multipliers(voc_root):
    """selection_fraction makes a third part by the same hash: no image of it is
    trained on or read by the multiplier hook, and the three parts are the
    training list."""
    register_all_modules()
    train_dataset = _voc(voc_root['data_root'], 'train.txt')
    cfg = _split(train_dataset, 0.3, 'cals', selection_fraction=0.3)
    assert cfg.selection_fraction == 0.3
    selection = dict(cfg.train_dataloader.dataset.to_dict(), split='selection')
    parts = dict(train=_names(cfg.train_dataloader.dataset),
                 holdout=_names(cfg.holdout_dataloader.dataset),
                 hook=_names(cfg.custom_hooks[0].holdout_dataloader.dataset),
                 selection=_names(selection))
    assert all(parts.values()) and parts['hook'] == parts['holdout']
    expected = {part: [n for n in voc_root['train']
                       if (hash_fraction(n) < 0.3) == (part == 'holdout')
                       and (0.3 <= hash_fraction(n) < 0.6) == (part == 'selection')]
                for part in ('train', 'holdout', 'selection')}
    assert {p: parts[p] for p in expected} == expected
    assert sum(map(len, expected.values())) == len(voc_root['train'])
    with pytest.raises(ValueError, match='selection_fraction must be >= 0 and '
                       'leave images to train on'):
        _split(train_dataset, 0.5, selection_fraction=0.5)


def test_a_selection_part_is_carved_from_a_split_s_training_part():
    """A config split without a selection part (the shipped R-50 ones) gets one
    from its training images; its held-out images stay; a config with one
    keeps it."""
    cfg = Config.fromfile(R50_VOC_CE)
    carved = apply_method(cfg, 'ls', selection_fraction=0.1)
    assert carved.selection_fraction == 0.1
    train, holdout = carved.train_dataloader.dataset, carved.holdout_dataloader.dataset
    assert train.selection_fraction == holdout.selection_fraction == 0.1
    assert train.holdout_fraction == holdout.holdout_fraction == 0.2
    assert 'selection_fraction' not in cfg.train_dataloader.dataset  # a copy
    demo = Config.fromfile(DEMO_CE)
    with pytest.raises(ValueError, match='selection_fraction=0.1, but '
                       'train_dataloader is already split with '
                       'selection_fraction=0.35'):
        apply_method(demo, 'ls', selection_fraction=0.1)
    assert apply_method(demo, 'ls').train_dataloader.dataset.selection_fraction == 0.35


def test_mosaic_wrapper_is_refused(voc_root):
    mosaic = dict(type='MultiImageMixDataset', pipeline=[],
                  dataset=_voc(voc_root['data_root'], 'a.txt'))
    with pytest.raises(ValueError, match='train_dataloader.dataset has a '
                       'MultiImageMixDataset'):
        _split(mosaic)


def test_ce_is_idempotent_and_cals_applies_once():
    cfg = Config.fromfile(R50_VOC_CE)
    assert apply_method(cfg, 'ce').to_dict() == cfg.to_dict()
    cals = apply_method(cfg, 'cals')
    for name in ('cals', 'ls', 'ce'):
        with pytest.raises(ValueError, match='model.decode_head.loss_decode is '
                           'already CALSLoss'):
            apply_method(cals, name)
    hook_only = _changed(cfg, custom_hooks=cals.to_dict()['custom_hooks'])
    with pytest.raises(ValueError, match='custom_hooks.0 is already a '
                       'CALSMultiplierHook'):
        apply_method(hook_only, 'crac')


def test_hook_options():
    cfg = Config.fromfile(R50_VOC_CE)
    hook, = apply_method(cfg, 'cals', source='train', interval=50).custom_hooks
    assert hook == dict(type='CALSMultiplierHook', source='train', interval=50)
    hook, = apply_method(cfg, 'cals', source='holdout', rounds=20).custom_hooks
    assert (hook.rounds, hook.holdout_dataloader) == (20, cfg.holdout_dataloader)
    # mmseg's VOC config validates on its test split: source='val' would tune the
    # multipliers on the test images, and is refused unless accepted by name.
    with pytest.raises(ValueError, match="reads the same dataset as test_dataloader.*"
                       "allow_test_tuning=true accepts it"):
        apply_method(cfg, 'cals', source='val')
    hook, = apply_method(cfg, 'cals', source='val', allow_test_tuning=True).custom_hooks
    assert hook == dict(type='CALSMultiplierHook', source='val')
    held_out_val = _changed(cfg, val_dataloader=dict(
        cfg.val_dataloader, dataset=dict(cfg.val_dataloader.dataset, data_prefix=dict(
            img_path='JPEGImages', seg_map_path='SegmentationClass'),
            ann_file='ImageSets/Segmentation/heldout.txt')))
    hook, = apply_method(held_out_val, 'cals', source='val').custom_hooks
    assert hook.source == 'val'
    # the same images through another pipeline are still the test images
    other_pipeline = _changed(cfg, val_dataloader=dict(
        cfg.val_dataloader, dataset=dict(cfg.val_dataloader.dataset, pipeline=[])))
    with pytest.raises(ValueError, match='reads the same dataset as test_dataloader'):
        apply_method(other_pipeline, 'cals', source='val')


@pytest.mark.parametrize('call, error, message', [
    (lambda cfg: apply_method(cfg, 'calz'), ValueError,
     r"unknown method 'calz'; the methods are \['ce', 'ls', 'fl', 'mbls', 'ecp', "
     r"'nacl', 'svls', 'cals', 'crac'\]"),
    (lambda cfg: apply_method(cfg, 'ls', margin=3.0), ValueError,
     r"unknown option\(s\) \['margin'\] for method 'ls'; its options are "
     r"\[.*'smoothing'.*\]"),
    (lambda cfg: apply_method(cfg.to_dict(), 'ls'), TypeError,
     'needs an mmengine Config, got dict'),
    (lambda cfg: apply_method(_changed(cfg, train_dataloader=None), 'cals'),
     ValueError, 'train_dataloader.dataset is missing'),
    (lambda cfg: apply_method(cfg, 'cals', margin=-1.0), ValueError,
     'model.decode_head.loss_decode: CALSLoss rejects its options: margin must '
     'be > 0'),
    (lambda cfg: apply_method(cfg, 'cals', rounds=10, interval=5), ValueError,
     'give rounds or interval, not both'),
    (lambda cfg: apply_method(cfg, 'cals', source='val', rounds=10,
                              allow_test_tuning=True), ValueError,
     "source='val' has a round per validation"),
    (lambda cfg: apply_method(cfg, 'cals', source='test'), ValueError,
     'source must be one of'),
    (lambda cfg: apply_method(cfg, 'ls', heads='auxiliary'), ValueError,
     r"heads must be one of \('decode', 'all'\)"),
    (lambda cfg: apply_method(cfg, 'ls', holdout_fraction=0.3), ValueError,
     'holdout_fraction=0.3, but train_dataloader is already split with '
     'holdout_fraction=0.2'),
    (lambda cfg: apply_method(_changed(cfg, holdout_dataloader=None), 'ls'),
     ValueError, 'already split by HashSplitDataset, but holdout_dataloader is '
     'missing'),
    (lambda cfg: apply_method(_changed(cfg, val_evaluator=dict(type='IoUMetric')),
                              'ls', exclude_classes=['sky']), ValueError,
     r"exclude_classes \['sky'\] are not classes of the dataset"),
])
def test_misuse_is_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call(Config.fromfile(R50_VOC_CE))


def test_loss_the_recipe_cannot_replace():
    cfg = Config.fromfile(DEMO_CE)
    head = cfg.model.decode_head.to_dict()
    for loss in (dict(type='DiceLoss'), dict(CE, use_sigmoid=True)):
        other = _with_model(cfg, decode_head=dict(head, loss_decode=loss))
        with pytest.raises(ValueError, match=r'model.decode_head.loss_decode has '
                           'no softmax CrossEntropyLoss to replace .* '
                           'replace_loss=True'):
            apply_method(other, 'svls')
        replaced = apply_method(other, 'svls', replace_loss=True)
        assert replaced.model.decode_head.loss_decode == dict(
            type='SVLSLoss', kernel_size=3, sigma=1.0, avg_non_ignore=True)
    two = _with_model(cfg, decode_head=dict(head, loss_decode=[CE, CE]))
    with pytest.raises(ValueError, match='has 2 CrossEntropyLoss entries'):
        apply_method(two, 'ls')
    weighted = _with_model(cfg, decode_head=dict(
        head, loss_decode=dict(CE, class_weight=[1.0] * 6)))
    for name in ('ls', 'fl', 'mbls', 'ecp', 'nacl', 'svls', 'cals', 'crac'):
        loss = apply_method(weighted, name).model.decode_head.loss_decode
        assert loss['class_weight'] == [1.0] * 6, name
    assert apply_method(weighted, 'cals').model.decode_head.loss_decode[
        'class_weight'] == [1.0] * 6
    no_classes = dict(head)
    no_classes.pop('num_classes')
    with pytest.raises(ValueError, match='model.decode_head.num_classes is '
                       'missing: CALSLoss needs the number of classes'):
        apply_method(_with_model(cfg, decode_head=no_classes), 'cals')


def test_method_config_name():
    assert method_config_name('configs/deeplabv3_voc_ce.py', 'cals',
                              {'source': 'train', 'margin': 10}) == (
        'deeplabv3_voc_cals_margin-10_source-train')
    assert method_config_name('x/my_config.py', 'ls', None) == 'my_config_ls'
    assert method_config_name('configs/deeplabv3_voc_ce.py', 'ce') == (
        'deeplabv3_voc_ce')
    assert method_config_name('a_ce.py', 'ce', {'exclude_classes': ['road']}) == (
        'a_ce_exclude_classes-road')
    built = apply_method(Config.fromfile(R50_VOC_CE), 'cals', groups='label')
    assert built.filename == osp.join(REPO, 'configs',
                                      'deeplabv3_voc_cals_groups-label.py')


def _run(args):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable] + args, env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_print_config_with_method_builds_the_shipped_cals_config(tmp_path):
    """tools/print_config.py resolves the config as tools/train.py does (the
    same cals_seg.utils.cli.build_config): the demo cross-entropy config with
    --method cals is the shipped demo CALS config."""
    dumped = str(tmp_path / 'resolved.py')
    result = _run(['tools/print_config.py', DEMO_CE, '--method', 'cals', '--dump',
                   dumped])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "type='CALSMultiplierHook'" in result.stdout
    assert Config.fromfile(dumped).to_dict() == Config.fromfile(DEMO_CALS).to_dict()


def test_train_tool_names_a_bad_method_option():
    result = _run(['tools/train.py', DEMO_CE, '--method', 'cals',
                   '--method-options', 'margn=10'])
    assert result.returncode != 0
    assert ("error: --method cals: unknown option(s) ['margn'] for method 'cals'"
            in result.stderr)
