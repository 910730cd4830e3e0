"""Mixed precision, non-finite logits, empty inputs: the state stays sane."""
import warnings
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MessageHub, MMLogger
from mmengine.optim.optimizer import amp_optimizer_wrapper
from mmengine.runner import Runner

import cals_seg  # noqa: F401
from cals_seg.datasets.demo_data import make_demo_dataset
from cals_seg.engine.hooks import CALSMultiplierHook, find_cals_losses
from cals_seg.models.losses import CALSLoss
from helpers import demo_config


@pytest.mark.parametrize('penalty', ['phr', 'p2', 'p3'])
def test_bf16_logits_up_to_1e4_keep_penalty_gradient_and_statistics_finite(
        penalty):
    torch.manual_seed(0)
    loss = CALSLoss(num_classes=5, penalty=penalty, rho_step=1)
    loss.multipliers.fill_(1e3)
    loss.rho.fill_(10.0)
    logits = (torch.rand(2, 5, 8, 8) * 2 - 1) * 1e4
    logits = logits.to(torch.bfloat16).requires_grad_(True)
    label = torch.randint(0, 5, (2, 8, 8))
    loss.train()
    loss.collect_round_statistics = True
    value = loss(logits, label)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad.float()).all()
    stats = loss.pop_round_statistics()
    assert all(torch.isfinite(t).all() for t in stats)
    loss.apply_round(stats)
    assert torch.isfinite(loss.multipliers).all() and torch.isfinite(loss.rho).all()


class _Runner(SimpleNamespace):
    """What the hook's round needs of a runner: a logger and a message hub."""


def _hook_with(loss):
    hook = CALSMultiplierHook(source='train', interval=1)
    hook._losses = [('decode_head.loss_decode', loss)]
    hook._class_names = [f'c{k}' for k in range(loss.num_classes)]
    return hook


def test_nonfinite_logits_are_counted_in_a_warning_and_left_out():
    loss = CALSLoss(num_classes=3, margin=0.5)
    loss.train()
    loss.collect_round_statistics = True
    logits = torch.randn(1, 3, 4, 4) * 3
    label = torch.randint(0, 3, (1, 4, 4))
    logits[0, 1, 0, :3] = float('nan')
    logits[0, 2, 3, 3] = float('inf')
    with torch.no_grad():
        loss(logits, label)
    hook = _hook_with(loss)
    runner = _Runner(logger=MMLogger.get_instance('faults'),
                     message_hub=MessageHub.get_instance('faults'))
    hook._reduce_pending()
    assert hook._totals['decode_head.loss_decode'].count.tolist() == [12.0] * 3
    with pytest.warns(UserWarning, match='4 pixels with non-finite logits'):
        hook._finish_round(runner)
    assert torch.isfinite(loss.multipliers).all() and torch.isfinite(loss.rho).all()


def test_round_without_pixels_keeps_multipliers():
    loss = CALSLoss(num_classes=3)
    loss.multipliers.copy_(torch.tensor([0.1, 0.2, 0.3]))
    hook = _hook_with(loss)
    runner = _Runner(logger=MMLogger.get_instance('faults'),
                     message_hub=MessageHub.get_instance('faults'))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        hook._finish_round(runner)
    torch.testing.assert_close(loss.multipliers, torch.tensor([0.1, 0.2, 0.3]))


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return make_demo_dataset(str(tmp_path_factory.mktemp('faults')), 'voc',
                             num_train=4, num_val=2, size=48,
                             seed=6)['data_root']


def test_amp_bf16_training_keeps_state_finite(data_root, tmp_path, monkeypatch):
    # mmengine's AmpOptimWrapper refuses to start without an accelerator; the
    # rest of it (bf16 autocast, a disabled grad scaler) runs on the CPU.
    monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available', lambda: True)
    cfg = demo_config('deeplabv3_r18tiny_1500it_demo-voc_cals.py', data_root,
                      str(tmp_path), iterations=4)
    cfg.optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16',
                             optimizer=cfg.optim_wrapper.optimizer)
    runner = Runner.from_cfg(cfg)
    runner.train()
    (_, loss), = find_cals_losses(runner.model)
    assert int(loss.num_rounds) == 2
    assert torch.isfinite(loss.multipliers).all()
    assert torch.all(loss.multipliers > loss.lambd_min)


def _empty_annotation_list(dataset, tmp_path):
    empty = tmp_path / 'empty.txt'
    empty.write_text('')
    return dict(dataset, ann_file=str(empty))


def _split_without_images(dataset, tmp_path):
    return dict(type='HashSplitDataset', dataset=dataset, split='holdout',
                holdout_fraction=1e-12)


@pytest.mark.parametrize('make_empty, message', [
    (_empty_annotation_list, 'holdout_dataloader could not be built'),
    (_split_without_images, 'holdout_dataloader yields no batch'),
])
def test_empty_holdout_fails_at_start(data_root, tmp_path, make_empty, message):
    cfg = demo_config('deeplabv3_r18tiny_1500it_demo-voc_cals.py', data_root,
                      str(tmp_path), iterations=4)
    holdout = cfg.val_dataloader.to_dict()
    holdout['dataset'] = make_empty(holdout['dataset'], tmp_path)
    cfg.custom_hooks = [
        dict(type='CALSMultiplierHook', source='holdout', interval=2,
             holdout_dataloader=holdout)
    ]
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match=message):
        runner.train()
    assert runner.iter == 0


@pytest.mark.parametrize('kwargs, message', [
    (dict(source='epoch'), 'source must be one of'),
    (dict(interval=0), 'interval'),
    (dict(interval='week'), "interval must be an int >= 1 or 'epoch'"),
    (dict(interval=True), 'interval'),
    (dict(source='holdout'), 'holdout_dataloader is required'),
    (dict(source='train', holdout_dataloader={}), 'holdout_dataloader'),
])
def test_bad_hook_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CALSMultiplierHook(**kwargs)
