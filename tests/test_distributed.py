"""Two gloo ranks through tools/dist_train.sh (torchrun, --launcher pytorch).

The runs are made deterministic and rank-independent (GroupNorm, no dropout, no
flips, unshuffled data, learning rate 0), so a 2-rank run with batch 1 per rank
sees exactly the pixels of a 1-rank run with batch 2, and its multipliers must be
the same up to float summation order.
"""
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch

from cals_seg.datasets.demo_data import make_demo_dataset
from cals_seg.utils.checkpoint import load_mmengine_checkpoint
from helpers import REPO, deterministic_config, read_scalars, shipped_args

KEYS = ('multipliers', 'rho', 'prev_constraint', 'num_rounds')
# Per-sample normalisation: batch composition does not change the logits.
GROUP_NORM = dict(type='GN', num_groups=4, requires_grad=True)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('dist')
    # 3 validation images: an odd count, so the sampler pads one rank.
    return make_demo_dataset(str(root), 'voc', num_train=8, num_val=3, size=48,
                             seed=4)['data_root']


def _write_config(data_root, path, source, batch_size, loss='cals'):
    cfg = deterministic_config(data_root, str(path.parent), iterations=6,
                               batch_size=batch_size, hook_interval=2)
    if loss == 'crac':  # CRaC: class x {interior, boundary} multipliers
        cfg.model.decode_head.loss_decode = dict(
            type='CRaCLoss', num_classes=cfg.model.decode_head.num_classes)
    cfg.model.backbone.norm_cfg = GROUP_NORM
    cfg.model.decode_head.norm_cfg = GROUP_NORM
    cfg.optim_wrapper.optimizer.lr = 0.0
    if source == 'holdout':
        cfg.custom_hooks[0].update(
            source='holdout', holdout_dataloader=cfg.val_dataloader.to_dict())
    cfg.dump(str(path))


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _train(config, work_dir, ranks):
    """2 ranks through tools/dist_train.sh as the README shows; 1 without."""
    # PYTHON: dist_train.sh would otherwise take .venv's, whatever stack runs the tests
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1', PYTHON=sys.executable,
               PORT=str(_free_port()),
               PATH=osp.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
    if ranks > 1:
        command = ['bash', osp.join(REPO, 'tools', 'dist_train.sh'), config,
                   str(ranks), '--work-dir', work_dir]
    else:
        command = [sys.executable, osp.join(REPO, 'tools', 'train.py'), config,
                   '--work-dir', work_dir]
    result = subprocess.run(command, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    state = load_mmengine_checkpoint(osp.join(work_dir, 'iter_6.pth'))
    prefix = 'decode_head.loss_decode.'
    loss_state = {k: state['state_dict'][prefix + k] for k in KEYS}
    val = [r for r in read_scalars(work_dir) if 'ECE' in r][-1]
    return loss_state, val


@pytest.mark.parametrize('source, loss', [('train', 'cals'), ('holdout', 'cals'),
                                          ('holdout', 'crac')])
def test_two_ranks_match_one(data_root, tmp_path, source, loss):
    two_dir, one_dir = tmp_path / 'two', tmp_path / 'one'
    two_dir.mkdir()
    one_dir.mkdir()
    _write_config(data_root, two_dir / 'cfg.py', source, batch_size=1, loss=loss)
    _write_config(data_root, one_dir / 'cfg.py', source, batch_size=2, loss=loss)
    two, two_val = _train(str(two_dir / 'cfg.py'), str(two_dir), ranks=2)
    one, one_val = _train(str(one_dir / 'cfg.py'), str(one_dir), ranks=1)
    assert int(two['num_rounds']) == int(one['num_rounds']) == 3
    if loss == 'cals':
        assert torch.all(one['multipliers'] > 1e-6)
    else:  # 2C groups; both halves (interior and boundary) must have moved
        classes = one['multipliers'].numel() // 2
        assert one['multipliers'].shape == (2 * classes, )
        assert torch.any(one['multipliers'][:classes] > 1e-6)
        assert torch.any(one['multipliers'][classes:] > 1e-6)
    # Convolutions of a batch of 1 and of 2 round differently in float32; the
    # test margin (1/0.05) magnifies that in h, hence 1e-3 and not 1e-6.
    for key in ('multipliers', 'rho', 'prev_constraint'):
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=1e-6)
    for key in ('ECE', 'AECE', 'CECE', 'NLL', 'Brier', 'fg/ECE', 'mIoU'):
        assert two_val[key] == pytest.approx(one_val[key], rel=1e-3), key


def _disagreeing_rank(rank, port, queue):
    import torch.distributed as dist
    from cals_seg.engine.hooks.cals_multiplier_hook import _check_same_on_every_rank
    from cals_seg.models.losses import CALSLoss
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    loss = CALSLoss(num_classes=3)
    _check_same_on_every_rank('agreeing', loss)
    loss.multipliers[1] += rank * 1e-7
    try:
        _check_same_on_every_rank('decode_head.loss_decode', loss)
        queue.put((rank, 'no error'))
    except RuntimeError as error:
        queue.put((rank, str(error)))
    dist.destroy_process_group()


def test_ranks_that_disagree_stop_with_an_error():
    import torch.multiprocessing as mp
    port = _free_port()
    context = mp.get_context('spawn')
    queue = context.Queue()
    processes = [context.Process(target=_disagreeing_rank, args=(rank, port, queue))
                 for rank in range(2)]
    for p in processes:
        p.start()
    messages = dict(queue.get(timeout=120) for _ in processes)
    for p in processes:
        p.join(timeout=60)
    assert all('ranks disagree on lambda/rho of decode_head.loss_decode' in m
               for m in messages.values()), messages


def test_shipped_r50_config_runs_on_cpu_ranks_through_dist_train(tmp_path):
    """A CPU dry run of a shipped config (SyncBN) through tools/dist_train.sh, as
    the README shows it, with no environment activated: the script finds the
    project's .venv by itself."""
    info = make_demo_dataset(str(tmp_path / 'data'), 'voc', num_train=6, num_val=2,
                             size=64, seed=1)
    work_dir = str(tmp_path / 'work')
    args = shipped_args('configs/deeplabv3_voc_cals.py', info['data_root'],
                        work_dir, iterations=2)
    # As a user runs it with the stack's venv activated (.venv, or .venv-upstream for
    # `make test STACK=upstream`): the script takes VIRTUAL_ENV's python, and PATH's
    # `python` could not import torch. Outside a venv, the running one stays on PATH.
    in_venv = sys.prefix != sys.base_prefix
    path = '/usr/bin:/bin' if in_venv else (
        osp.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1', PATH=path,
               PORT=str(_free_port()))
    env.pop('PYTHON', None)
    if in_venv:
        env['VIRTUAL_ENV'] = sys.prefix
    else:
        env.pop('VIRTUAL_ENV', None)
    result = subprocess.run(
        ['bash', osp.join(REPO, 'tools', 'dist_train.sh'), args[1], '2'] + args[2:],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert 'SyncBN does not run on CPU ranks' in output
    state = load_mmengine_checkpoint(osp.join(work_dir, 'iter_2.pth'))
    assert int(state['state_dict']['decode_head.loss_decode.num_rounds']) == 1
