"""Training N iterations equals training N/2, stopping, and resuming."""
import os
import os.path as osp

import pytest
import torch

from cals_seg.datasets.demo_data import make_demo_dataset
from cals_seg.utils.checkpoint import load_mmengine_checkpoint
from helpers import deterministic_config, run_tool

PREFIX = 'decode_head.loss_decode.'


def _run(data_root, work_dir, iterations, resume=False, loss='cals'):
    # A round every 3 iterations and a checkpoint every 4: the checkpoint at
    # iteration 4 falls inside a round, so the hook's running totals must travel.
    cfg = deterministic_config(data_root, work_dir, iterations=iterations,
                               batch_size=2, hook_interval=3)
    cfg.default_hooks.checkpoint.interval = 4
    if loss == 'cals-label':  # one multiplier per ground-truth class
        cfg.model.decode_head.loss_decode.groups = 'label'
    cfg.train_cfg.val_interval = 100
    os.makedirs(work_dir, exist_ok=True)
    path = osp.join(work_dir, f'cfg_{iterations}.py')
    cfg.dump(path)
    args = ['tools/train.py', path, '--work-dir', work_dir]
    result = run_tool(args + (['--resume'] if resume else []))
    assert result.returncode == 0, result.stderr[-3000:]
    return load_mmengine_checkpoint(osp.join(work_dir, f'iter_{iterations}.pth'))


@pytest.mark.parametrize('loss', ['cals', 'cals-label'])
def test_resume_continues_exactly(tmp_path, loss):
    data_root = make_demo_dataset(str(tmp_path / 'data'), 'voc', num_train=6,
                                  num_val=2, size=48, seed=5)['data_root']
    straight = _run(data_root, str(tmp_path / 'straight'), 8, loss=loss)
    _run(data_root, str(tmp_path / 'resumed'), 4, loss=loss)
    halfway = load_mmengine_checkpoint(str(tmp_path / 'resumed' / 'iter_4.pth'))
    assert halfway['cals_multiplier_hook'], 'the open round was not saved'
    resumed = _run(data_root, str(tmp_path / 'resumed'), 8, resume=True, loss=loss)

    assert int(resumed['state_dict'][PREFIX + 'num_rounds']) == 2
    for key in ('multipliers', 'rho', 'prev_constraint', 'num_rounds'):
        torch.testing.assert_close(resumed['state_dict'][PREFIX + key],
                                   straight['state_dict'][PREFIX + key],
                                   rtol=1e-6, atol=0)
    for name, flat in straight['cals_multiplier_hook'].items():
        torch.testing.assert_close(resumed['cals_multiplier_hook'][name], flat,
                                   rtol=1e-6, atol=1e-9)
    assert not torch.equal(
        resumed['state_dict'][PREFIX + 'multipliers'],
        halfway['state_dict'][PREFIX + 'multipliers'])
