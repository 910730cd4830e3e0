"""CALSMultiplierHook(rounds=N): N multiplier rounds spread evenly over
``runner.max_iters``, the k-th after iteration floor(k * max_iters / N), on one
rank and on two (gloo)."""
import glob
import os.path as osp
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mmengine.logging import MessageHub, MMLogger

from cals_seg.engine.hooks import CALSMultiplierHook
from cals_seg.models.losses import CALSLoss

NUM_CLASSES = 3


class _Runner:
    """What the hook reads of mmengine's Runner while training: a model with a
    decode head holding a CALSLoss, the iteration counters, logger, message hub
    and the training set's class names."""

    def __init__(self, max_iters: int, name: str):
        head = torch.nn.Module()
        head.loss_decode = CALSLoss(num_classes=NUM_CLASSES, margin=1.0,
                                    avg_non_ignore=True)
        self.model = torch.nn.Module()
        self.model.decode_head = head
        self.max_iters = max_iters
        self.iter = 0
        self.logger = MMLogger.get_instance(f'rounds_{name}')
        self.message_hub = MessageHub.get_instance(f'rounds_{name}')
        metainfo = dict(classes=tuple(f'c{k}' for k in range(NUM_CLASSES)))
        self.train_dataloader = SimpleNamespace(
            dataset=SimpleNamespace(metainfo=metainfo))


def _train(max_iters: int, seed: int = 0, **hook_args):
    """Run ``max_iters`` training iterations (a CALSLoss forward on random logits
    each) under the hook; return the iterations after which a round ended, and
    the loss."""
    runner = _Runner(max_iters, f'{max_iters}_{seed}_{sorted(hook_args.items())}')
    hook = CALSMultiplierHook(source='train', **hook_args)
    hook.before_train(runner)
    loss = runner.model.decode_head.loss_decode
    generator = torch.Generator().manual_seed(seed)
    ends = []
    for iteration in range(max_iters):
        runner.iter = iteration
        logits = 4 * torch.randn(2, NUM_CLASSES, 4, 4, generator=generator)
        loss(logits, torch.randint(0, NUM_CLASSES, (2, 4, 4), generator=generator))
        rounds_before = int(loss.num_rounds)
        hook.after_train_iter(runner, iteration)
        if int(loss.num_rounds) > rounds_before:
            ends.append(iteration + 1)
    return ends, loss


@pytest.mark.parametrize('max_iters, rounds, expected', [
    (50, 10, [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]),
    (7, 3, [2, 4, 7]),
    (1000, 7, [142, 285, 428, 571, 714, 857, 1000]),
    (4, 1, [4]),
])
def test_rounds_are_spread_over_the_schedule(max_iters, rounds, expected):
    ends, loss = _train(max_iters, rounds=rounds)
    assert ends == expected
    assert int(loss.num_rounds) == rounds


def test_interval_still_counts_iterations():
    assert _train(20, interval=7)[0] == [7, 14]
    assert _train(250)[0] == [100, 200]  # neither given: every 100 iterations


def test_more_rounds_than_iterations_is_a_round_every_iteration():
    with pytest.warns(UserWarning, match='rounds=5 on a schedule of 3 iterations'):
        assert _train(3, rounds=5)[0] == [1, 2, 3]


@pytest.mark.parametrize('kwargs, message', [
    (dict(rounds=10, interval=5), 'give rounds or interval, not both'),
    (dict(rounds=10, interval='epoch'), 'give rounds or interval, not both'),
    (dict(rounds=0), 'rounds must be an int >= 1'),
    (dict(rounds=2.5), 'rounds must be an int >= 1'),
    (dict(rounds=True), 'rounds must be an int >= 1'),
    (dict(rounds=3, source='val'), "source='val' has a round per validation"),
])
def test_bad_rounds_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CALSMultiplierHook(**kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}',
                            rank=rank, world_size=2)
    try:
        # Each rank sees different data; the hook sums statistics over ranks.
        ends, loss = _train(50, seed=rank, rounds=10)
        torch.save(dict(ends=ends, multipliers=loss.multipliers.clone()),
                   osp.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_rounds_on_two_ranks(tmp_path):
    mp.spawn(_rank_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    results = [torch.load(str(tmp_path / f'rank{r}.pt')) for r in range(2)]
    for result in results:
        assert result['ends'] == list(range(5, 51, 5))
    assert torch.equal(results[0]['multipliers'], results[1]['multipliers'])
    # The two ranks' data differ, so the reduced update differs from one rank's.
    _, single = _train(50, seed=0, rounds=10)
    assert not torch.equal(single.multipliers, results[0]['multipliers'])


def test_rounds_through_the_runner_and_the_recipe(tmp_path):
    """apply_method's hook on a real Runner: max_iters comes from the training
    loop, and the hold-out rounds run after iterations 2, 4 and 6."""
    from mmengine.runner import Runner

    from cals_seg.datasets.demo_data import make_demo_dataset
    from cals_seg.methods import apply_method
    from helpers import demo_config
    data_root = make_demo_dataset(str(tmp_path / 'data'), 'voc', num_train=6,
                                  num_val=2, size=48, seed=2)['data_root']
    cfg = demo_config('deeplabv3_r18tiny_1500it_demo-voc_ce.py', data_root,
                      str(tmp_path / 'work'), iterations=6, batch_size=2)
    # A small margin makes the constraints active on an untrained network.
    cfg = apply_method(cfg, 'cals', rounds=3, margin=0.05)
    runner = Runner.from_cfg(cfg)
    runner.train()
    loss = runner.model.decode_head.loss_decode
    assert int(loss.num_rounds) == 3
    assert torch.all(loss.multipliers > loss.lambd_min)
    log = open(glob.glob(str(tmp_path / 'work' / '*' / '*.log'))[0]).read()
    assert 'CALSMultiplierHook: 3 rounds over 6 iterations, one every 2 iterations' \
        in log
