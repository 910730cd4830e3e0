"""One update round (docs/methods.md, CALS) against a hand computation."""
import io
import math

import pytest
import torch

import cals_seg  # noqa: F401
from cals_seg.functional.cals import RoundStatistics
from cals_seg.models.losses import CALSLoss
from test_penalties import _reference

IGNORE = 255
PARAMS = dict(lambd_min=1e-6, lambd_max=1e6, rho_max=10.0, gamma=1.2, tau=0.9)


def _fixed_batch():
    logits = torch.tensor([[[[9.0, 0.0], [1.0, -2.0]],
                            [[0.0, 4.0], [8.0, 3.0]],
                            [[-6.0, 12.0], [0.5, 3.0]]]])  # (1, 3, 2, 2)
    label = torch.tensor([[[0, 1], [IGNORE, 2]]])
    return logits, label


def _hand_round(loss, logits, label, multipliers, rho):
    """g_k and c_k of the update round, pixel by pixel."""
    grads = [[] for _ in range(loss.num_classes)]
    constraints = [[] for _ in range(loss.num_classes)]
    for y in range(label.shape[1]):
        for x in range(label.shape[2]):
            if label[0, y, x] == IGNORE:
                continue
            z = logits[0, :, y, x].tolist()
            for k in range(loss.num_classes):
                h = (max(z) - z[k] - loss.margin) / loss.margin
                dp = _reference(loss.penalty, h, multipliers[k], rho[k])[1]
                grads[k].append(min(max(dp, PARAMS['lambd_min']),
                                    PARAMS['lambd_max']))
                constraints[k].append(h)
    g = [sum(v) / len(v) for v in grads]
    c = [sum(v) / len(v) for v in constraints]
    return [min(max(v, PARAMS['lambd_min']), PARAMS['lambd_max']) for v in g], c


@pytest.mark.parametrize('penalty', ['phr', 'p2', 'p3'])
def test_round_equals_hand_computation(penalty):
    logits, label = _fixed_batch()
    loss = CALSLoss(num_classes=3, margin=2.0, penalty=penalty, rho_step=1,
                    **PARAMS)
    start_lambd = [0.3, 1e-6, 2.0]
    start_rho = [1.0, 9.0, 5.0]
    loss.multipliers.copy_(torch.tensor(start_lambd))
    loss.rho.copy_(torch.tensor(start_rho))
    prev = [-0.5, 0.4, 0.2]
    loss.prev_constraint.copy_(torch.tensor(prev))

    loss.apply_round(loss.statistics_from_logits(logits, label, IGNORE))

    lambd, c = _hand_round(loss, logits, label, start_lambd, start_rho)
    rho = [
        min(PARAMS['gamma'] * r, PARAMS['rho_max'])
        if ck > PARAMS['tau'] * max(p, 0) else r
        for r, ck, p in zip(start_rho, c, prev)
    ]
    torch.testing.assert_close(loss.multipliers,
                               torch.tensor(lambd, dtype=torch.float32))
    torch.testing.assert_close(loss.rho, torch.tensor(rho, dtype=torch.float32))
    torch.testing.assert_close(loss.prev_constraint,
                               torch.tensor(c, dtype=torch.float32))
    assert int(loss.num_rounds) == 1


def _round_with(loss, constraint_means):
    """Apply a round whose mean constraints are ``constraint_means`` (P' 0.5)."""
    count = torch.full((len(constraint_means), ), 10.0, dtype=torch.float64)
    sums = torch.tensor(constraint_means, dtype=torch.float64) * count
    loss.apply_round(RoundStatistics(count * 0.5, sums, count,
                                     torch.zeros((), dtype=torch.float64)))


def test_rho_rule_grows_only_unimproved_classes_every_rho_step_rounds():
    loss = CALSLoss(num_classes=3, rho_step=2, **PARAMS)
    _round_with(loss, [0.5, 0.5, -0.2])  # round 1: no check, but recorded
    assert torch.all(loss.rho == 1.0)
    torch.testing.assert_close(loss.prev_constraint, torch.tensor([0.5, 0.5, -0.2]))
    _round_with(loss, [0.46, 0.44, 0.1])  # round 2: compared with round 1:
    # 0.46 > 0.45 grows; 0.44 does not; class 2 was satisfied (prev < 0) and is
    # violated now: grows.
    torch.testing.assert_close(loss.rho, torch.tensor([1.2, 1.0, 1.2]))
    _round_with(loss, [5.0, 5.0, 5.0])  # round 3: no check
    torch.testing.assert_close(loss.rho, torch.tensor([1.2, 1.0, 1.2]))
    for _ in range(40):
        _round_with(loss, [5.0, 5.0, 5.0])
    assert torch.all(loss.rho == PARAMS['rho_max'])
    torch.testing.assert_close(loss.multipliers, torch.full((3, ), 0.5))


def _authors_update_rho(constraints, rho_min, rho_max, gamma, tao, rho_step):
    """A plain transcription of ``AugLagrangianClass.update_rho`` (by-liu/CALS,
    calibrate/lagrangian/aug_lagrangian_class.py), one class at a time: rho after
    every epoch, given each epoch's mean constraints."""
    rho = [rho_min] * len(constraints[0])
    prev = None
    history = []
    for epoch, curr in enumerate(constraints):
        if (epoch + 1) % rho_step == 0 and prev is not None:
            rho = [gamma * r if c > max(p, 0) * tao else r
                   for r, c, p in zip(rho, curr, prev)]
            rho = [min(max(r, rho_min), rho_max) for r in rho]
        prev = curr
        history.append(list(rho))
    return history


@pytest.mark.parametrize('rho_step', [1, 3, 10])
def test_rho_sequence_matches_the_authors_update_rho_over_30_rounds(rho_step):
    generator = torch.Generator().manual_seed(rho_step)
    # Mean constraints that wander around zero, so classes alternate between
    # satisfied, improving and not improving.
    constraints = (torch.randn(30, 4, generator=generator, dtype=torch.float64) *
                   0.4 + torch.linspace(0.3, -0.1, 30, dtype=torch.float64)[:, None])
    expected = _authors_update_rho(constraints.tolist(), 1.0, PARAMS['rho_max'],
                                   PARAMS['gamma'], PARAMS['tau'], rho_step)
    loss = CALSLoss(num_classes=4, rho_step=rho_step, **PARAMS)
    grew = False
    for round_constraints, rho in zip(constraints.tolist(), expected):
        _round_with(loss, round_constraints)
        torch.testing.assert_close(loss.rho.double(), torch.tensor(rho,
                                   dtype=torch.float64), rtol=1e-6, atol=0)
        grew |= max(rho) > 1.0
    assert grew, 'the sequence never exercised a growth of rho'


def test_class_without_pixels_keeps_its_state():
    loss = CALSLoss(num_classes=2, rho_step=1, **PARAMS)
    loss.multipliers.copy_(torch.tensor([0.25, 0.75]))
    count = torch.tensor([4.0, 0.0], dtype=torch.float64)
    loss.apply_round(
        RoundStatistics(torch.tensor([2.0, 0.0], dtype=torch.float64),
                        torch.tensor([1.0, 0.0], dtype=torch.float64), count,
                        torch.zeros((), dtype=torch.float64)))
    torch.testing.assert_close(loss.multipliers, torch.tensor([0.5, 0.75]))
    assert math.isinf(loss.prev_constraint[1].item())


def test_train_statistics_accumulate_over_batches():
    logits, label = _fixed_batch()
    loss = CALSLoss(num_classes=3, margin=2.0, **PARAMS)
    loss.collect_round_statistics = True
    loss.train()
    loss(logits, label, ignore_index=IGNORE)
    loss(logits * 2, label, ignore_index=IGNORE)
    collected = loss.pop_round_statistics()
    expected = (loss.statistics_from_logits(logits, label, IGNORE) +
                loss.statistics_from_logits(logits * 2, label, IGNORE))
    for a, b in zip(collected, expected):
        torch.testing.assert_close(a, b)
    assert float(loss.pop_round_statistics().count.sum()) == 0
    loss.eval()
    loss(logits, label, ignore_index=IGNORE)
    assert float(loss.pop_round_statistics().count.sum()) == 0


def test_nonfinite_pixels_are_left_out_and_counted():
    logits, label = _fixed_batch()
    loss = CALSLoss(num_classes=3, margin=2.0, **PARAMS)
    clean = loss.statistics_from_logits(logits, label, IGNORE)
    broken = logits.clone()
    broken[0, 1, 0, 0] = float('nan')
    stats = loss.statistics_from_logits(broken, label, IGNORE)
    assert int(stats.num_nonfinite) == 1
    assert torch.all(stats.count == clean.count - 1)
    assert torch.isfinite(stats.grad_sum).all()


def test_checkpoint_round_trip_restores_state_exactly():
    logits, label = _fixed_batch()
    loss = CALSLoss(num_classes=3, margin=2.0, rho_step=1, **PARAMS)
    for scale in (1.0, 3.0, 5.0):
        loss.apply_round(loss.statistics_from_logits(logits * scale, label, IGNORE))
    buffer = io.BytesIO()
    torch.save({'state_dict': loss.state_dict()}, buffer)
    buffer.seek(0)
    restored = CALSLoss(num_classes=3, margin=2.0, rho_step=1, **PARAMS)
    restored.load_state_dict(torch.load(buffer, weights_only=True)['state_dict'])
    for name in ('multipliers', 'rho', 'prev_constraint', 'num_rounds'):
        assert torch.equal(getattr(restored, name), getattr(loss, name)), name
    assert int(restored.num_rounds) == 3
