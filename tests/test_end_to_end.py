"""Real runs: MMEngine's Runner, mmseg models, datasets in their on-disk layouts."""
import glob
import math
import os.path as osp

import pytest
import torch
from mmengine.runner import Runner

import cals_seg  # noqa: F401
from cals_seg.datasets.demo_data import make_demo_dataset
from cals_seg.engine.hooks import find_cals_losses
from cals_seg.utils.checkpoint import load_mmengine_checkpoint
from cals_seg.utils.stack import installed_stack
from helpers import REPO, demo_config, read_scalars, run_tool, shipped_args


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo')
    return {
        layout: make_demo_dataset(str(root / layout), layout, num_train=6,
                                  num_val=3, size=64, seed=1)
        for layout in ('voc', 'cityscapes')
    }


@pytest.mark.parametrize('model', ['deeplabv3', 'pspnet'])
@pytest.mark.parametrize('layout', ['voc', 'cityscapes'])
def test_runner_trains_with_cals_and_validates(model, layout, demo_data,
                                               tmp_path):
    cfg = demo_config(f'{model}_r18tiny_1500it_demo-voc_cals.py',
                      demo_data[layout]['data_root'], str(tmp_path),
                      layout=layout)
    runner = Runner.from_cfg(cfg)
    runner.train()

    (_, loss), = find_cals_losses(runner.model)
    assert int(loss.num_rounds) == 2
    assert torch.all(loss.multipliers > loss.lambd_min)
    assert torch.isfinite(loss.multipliers).all() and torch.isfinite(loss.rho).all()
    records = read_scalars(str(tmp_path))
    train = [r for r in records if 'cals/lambda_mean' in r]
    assert train and train[-1]['cals/lambda_mean'] == pytest.approx(
        loss.multipliers.mean().item(), rel=1e-5)
    for name in demo_data[layout]['classes']:
        assert f'cals/lambda/{name}' in train[-1]
    val = [r for r in records if 'mIoU' in r]
    assert val and {'ECE', 'AECE', 'CECE', 'NLL', 'Brier'} <= set(val[-1])
    checkpoint = load_mmengine_checkpoint(osp.join(str(tmp_path), 'iter_4.pth'))
    saved = checkpoint['state_dict']['decode_head.loss_decode.multipliers']
    assert torch.equal(saved, loss.multipliers)


def test_val_source_warns_and_updates_after_each_validation(demo_data, tmp_path):
    cfg = demo_config('deeplabv3_r18tiny_1500it_demo-voc_cals.py',
                      demo_data['voc']['data_root'], str(tmp_path))
    cfg.train_cfg.val_interval = 2
    cfg.custom_hooks = [dict(type='CALSMultiplierHook', source='val')]
    runner = Runner.from_cfg(cfg)
    with pytest.warns(UserWarning, match="source='val' tunes the multipliers"):
        runner.train()
    (_, loss), = find_cals_losses(runner.model)
    assert int(loss.num_rounds) == 2
    assert torch.any(loss.multipliers > loss.lambd_min)
    runner.val()  # a validation outside training leaves the multipliers alone
    assert int(loss.num_rounds) == 2


def test_epoch_interval_is_one_round_per_pass_over_the_training_part(demo_data,
                                                                      tmp_path):
    cfg = demo_config('deeplabv3_r18tiny_1500it_demo-voc_cals.py',
                      demo_data['voc']['data_root'], str(tmp_path), iterations=6,
                      batch_size=2)
    # One of the six training images held out: 5 to train on, an epoch of
    # ceil(5 / 2) = 3 iterations (the test configs' fixed interval is 2).
    for loader in (cfg.train_dataloader, cfg.custom_hooks[0].holdout_dataloader):
        loader.dataset.holdout_fraction = 0.18
    cfg.custom_hooks[0].interval = 'epoch'
    runner = Runner.from_cfg(cfg)
    runner.train()
    (_, loss), = find_cals_losses(runner.model)
    assert len(runner.train_dataloader.dataset) == 5
    assert int(loss.num_rounds) == 6 // math.ceil(5 / 2)


@pytest.mark.parametrize('config, layout', [('configs/deeplabv3_voc_cals.py', 'voc'),
                                            ('configs/pspnet_cityscapes_cals.py',
                                             'cityscapes')])
def test_train_tool_runs_shipped_config_and_resumes(config, layout, demo_data,
                                                    tmp_path):
    work_dir = str(tmp_path / 'work')
    data_root = demo_data[layout]['data_root']
    first = run_tool(shipped_args(config, data_root, work_dir))
    assert first.returncode == 0, first.stderr[-3000:]
    records = read_scalars(work_dir)
    assert any('cals/lambda_mean' in r for r in records)
    assert any('mIoU' in r and 'ECE' in r for r in records)
    saved = load_mmengine_checkpoint(osp.join(work_dir, 'iter_4.pth'))
    multipliers = saved['state_dict']['decode_head.loss_decode.multipliers']
    assert torch.all(multipliers > 1e-6)

    resumed = run_tool(
        shipped_args(config, data_root, work_dir, iterations=6) + ['--resume'])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = '\n'.join(open(p).read() for p in glob.glob(
        osp.join(work_dir, '*', '*.log')))
    assert 'resumed' in log.lower() or 'Resumed' in log
    final = load_mmengine_checkpoint(osp.join(work_dir, 'iter_6.pth'))
    assert int(final['state_dict']['decode_head.loss_decode.num_rounds']) == 3


@pytest.mark.parametrize('config', ['configs/pspnet_voc_cals.py',
                                    'configs/deeplabv3_voc_crac.py',
                                    'configs/pspnet_voc_nacl.py',
                                    'configs/deeplabv3_voc_svls.py'])
def test_mmseg_own_train_tool_runs_shipped_config(config, demo_data, tmp_path):
    import mmseg
    tool = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', 'train.py')
    args = shipped_args(config, demo_data['voc']['data_root'], str(tmp_path))
    if installed_stack() == 'maintained':
        # onedl-mmengine 0.10.12 cannot find mmseg's configs (the `mmseg::` bases)
        # before custom_imports run; the way round (docs/architecture.md): the
        # config that tools/print_config.py --dump resolves.
        failed = run_tool([tool] + args[1:])
        assert 'mmsegmentation is not installed' in failed.stderr
        resolved = str(tmp_path / 'resolved.py')
        dumped = run_tool(['tools/print_config.py', config, '--dump', resolved])
        assert dumped.returncode == 0, dumped.stderr[-3000:]
        args[1] = resolved
    result = run_tool([tool] + args[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(osp.join(str(tmp_path), 'iter_4.pth'), weights_only=True)
    state = saved['state_dict']
    if config.endswith('_cals.py'):
        assert torch.all(state['decode_head.loss_decode.multipliers'] > 1e-6)
    elif config.endswith('_crac.py'):  # 2C groups, of which some have moved
        multipliers = state['decode_head.loss_decode.multipliers']
        assert multipliers.shape == (42, ) and torch.any(multipliers > 1e-6)
    records = read_scalars(str(tmp_path))
    assert any('mIoU' in r and 'ECE_boundary' in r for r in records)


def test_missing_dataset_is_one_clear_line(tmp_path):
    result = run_tool(['tools/train.py', osp.join(REPO, 'configs',
                                                  'deeplabv3_voc_cals.py')],
                      cwd=str(tmp_path))
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert 'data/VOCdevkit/VOC2012' in lines[0] and 'make demo' in lines[0]
