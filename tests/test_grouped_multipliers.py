"""Multipliers indexed by groups of (pixel, logit) constraints, and CRaC's
constraints: against plain loops over pixels, autograd, and the CALS path."""
import numpy as np
import pytest
import torch

from mmseg.registry import MODELS

import cals_seg  # noqa: F401
from cals_seg.functional.cals import constraint_penalty, grouped_constraint_penalty
from cals_seg.functional.groups import GROUPINGS, group_layout, group_names, num_groups
from cals_seg.functional.penalties import phr
from helpers import blocky_batch

IGNORE = 255
C = 4


def _batch(seed=0):
    return blocky_batch(seed, classes=C, scale=6.0)


def _loop_boundary(label, width=1):
    """Whether a neighbour in the window has another label (ignore included)."""
    n, height, wide = label.shape
    near = np.zeros(label.shape, dtype=bool)
    for b in range(n):
        for i in range(height):
            for j in range(wide):
                for y in range(max(0, i - width), min(height, i + width + 1)):
                    for x in range(max(0, j - width), min(wide, j + width + 1)):
                        if label[b, y, x] != label[b, i, j]:
                            near[b, i, j] = True
    return near


def _loop_group(grouping, label, near, b, i, j, k):
    y = label[b, i, j]
    return dict(logit=k, label=y, label_logit=y * C + k,
                region=k + C * int(near[b, i, j]))[grouping]


@pytest.mark.parametrize('grouping', GROUPINGS)
def test_group_layout_matches_a_loop(grouping):
    _, label = _batch()
    valid = label != IGNORE
    layout = group_layout(grouping, label, valid, C)
    # Each group's own number, looked up as the penalty looks up multipliers.
    table = layout.table(torch.arange(num_groups(grouping, C)))
    rows = layout.rows()
    near = _loop_boundary(label.numpy())
    lab = label.numpy()
    for b, i, j in zip(*np.nonzero(valid.numpy())):
        for k in range(C):
            expected = _loop_group(grouping, lab, near, b, i, j, k)
            assert int(layout.base[b, i, j]) + layout.logit_stride * k == expected
            assert int(table[rows[b, i, j], k * layout.logit_stride]) == expected
    names = group_names(grouping, ['a', 'b', 'c', 'd'])
    assert len(names) == len(set(names)) == num_groups(grouping, C)


def test_group_table_names_a_size_that_does_not_fit():
    _, label = _batch()
    layout = group_layout('region', label, label != IGNORE, C)
    with pytest.raises(ValueError, match='multiple of 4 groups'):
        layout.table(torch.ones(2 * C + 1))


def _reference(logits, label, grouping, lambd, rho, margin, reference):
    """The penalty and round sums by a loop over valid (pixel, logit) pairs,
    and the penalty's gradient by autograd."""
    z = logits.double().clone().requires_grad_(True)
    valid = label != IGNORE
    near = _loop_boundary(label.numpy())
    lab = label.numpy()
    total = 0
    groups = len(lambd)
    grad_sum, h_sum, count = np.zeros(groups), np.zeros(groups), np.zeros(groups)
    for b, i, j in zip(*np.nonzero(valid.numpy())):
        for k in range(C):
            g = _loop_group(grouping, lab, near, b, i, j, k)
            if reference is None:
                h = (z[b, :, i, j].max() - z[b, k, i, j] - margin) / margin
            else:
                h = (reference[b, k, i, j].double() - z[b, k, i, j]).abs()
            value, derivative = phr(h, lambd[g].double(), rho[g].double())
            total = total + value
            grad_sum[g] += float(derivative.clamp(1e-6, 1e6))
            h_sum[g] += float(h)
            count[g] += 1
    total = total / (int(valid.sum()) * C)
    total.backward()
    return float(total), z.grad, (grad_sum, h_sum, count)


@pytest.mark.parametrize('grouping', GROUPINGS)
@pytest.mark.parametrize('with_reference', [False, True])
@pytest.mark.parametrize('backend', ['auto', 'torch'])
def test_grouped_penalty_matches_loops_and_autograd(grouping, with_reference,
                                                    backend):
    logits, label = _batch(1)
    valid = label != IGNORE
    generator = torch.Generator().manual_seed(3)
    groups = num_groups(grouping, C)
    lambd = torch.rand(groups, generator=generator) * 2
    rho = torch.rand(groups, generator=generator) + 0.5
    reference = torch.rand(logits.shape, generator=generator) * 4 if (
        with_reference) else None
    margin = 3.0 if reference is None else 1.0
    result = grouped_constraint_penalty(
        logits, valid, group_layout(grouping, label, valid, C), lambd, rho, margin,
        reference is None, phr, reference, statistics_clip=(1e-6, 1e6),
        backend=backend)
    value, grad, sums = _reference(logits, label, grouping, lambd, rho, margin,
                                   reference)
    assert float(result.value) == pytest.approx(value, rel=1e-5)
    torch.testing.assert_close(result.grad_direction * result.grad_scale,
                               grad.float(), atol=1e-7, rtol=1e-4)
    for got, want in zip(result.statistics[:3], sums):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('backend', ['auto', 'torch'])
def test_logit_grouping_equals_the_cals_path(backend):
    logits, label = _batch(2)
    valid = label != IGNORE
    lambd, rho = torch.rand(C) * 3, torch.rand(C) + 1
    grouped = grouped_constraint_penalty(logits, valid, group_layout(
        'logit', label, valid, C), lambd, rho, 5.0, True, phr,
        statistics_clip=(1e-6, 1e6), backend=backend)
    cals = constraint_penalty(logits, valid, lambd, rho, 5.0, True, phr,
                              statistics_clip=(1e-6, 1e6), backend=backend)
    assert float(grouped.value) == pytest.approx(float(cals.value), rel=1e-5)
    torch.testing.assert_close(grouped.grad_direction * grouped.grad_scale,
                               cals.grad_direction * cals.grad_scale,
                               atol=1e-8, rtol=1e-4)
    for got, want in zip(grouped.statistics, cals.statistics):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_crac_targets_are_scaled_proportions_and_its_round_updates_groups():
    logits, label = _batch(4)
    loss = MODELS.build(dict(type='CRaCLoss', num_classes=C, margin=2.0))
    valid = label != IGNORE
    reference = loss.reference(label, valid).dense(C)
    near = _loop_boundary(label.numpy())
    lab = label.numpy()
    for b, i, j in zip(*np.nonzero(valid.numpy())):
        window = lab[b, max(0, i - 1):i + 2, max(0, j - 1):j + 2]
        kept = window[window != IGNORE]
        scale = 1.0 if near[b, i, j] else 2.0
        for k in range(C):
            expected = scale * np.mean(kept == k)
            assert float(reference[b, k, i, j]) == pytest.approx(expected, abs=1e-6)
    loss.train()
    loss.collect_round_statistics = True
    loss(logits.requires_grad_(), label).backward()
    stats = loss.pop_round_statistics()
    loss.apply_round(stats)
    seen = stats.count > 0
    expected = (stats.grad_sum / stats.count.clamp_min(1)).clamp(1e-6, 1e6).float()
    torch.testing.assert_close(loss.multipliers[seen], expected[seen])
    assert loss.multipliers.shape == (2 * C, ) and bool(seen[C:].any())


def test_crac_forms_the_boundary_mask_once_per_step(monkeypatch):
    # The 'region' groups and CRaC's targets read the same mask; it was formed
    # for each of them.
    from cals_seg.functional import crac, groups, neighbourhood
    from cals_seg.models.losses import cals_loss
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return neighbourhood.boundary_mask(*args, **kwargs)

    for module in (crac, groups, cals_loss):
        monkeypatch.setattr(module, 'boundary_mask', counted)
    logits, label = _batch(5)
    loss = MODELS.build(dict(type='CRaCLoss', num_classes=C))
    loss(logits.requires_grad_(), label).backward()
    assert len(calls) == 1
    loss(logits, label, reduction_override='none')
    assert len(calls) == 2
