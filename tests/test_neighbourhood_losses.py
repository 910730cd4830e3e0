"""NACL and SVLS: their neighbourhood targets against a loop over pixels, the
losses against their formulas, the penalty's gradient against its closed form."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmseg.registry import MODELS

import cals_seg  # noqa: F401
from cals_seg.functional.neighbourhood import kernel_weights, neighbourhood_proportions
from helpers import blocky_batch

IGNORE = 255


def _batch(seed=0):
    return blocky_batch(seed, size=(9, 11))


def _loop_proportions(label, classes, kernel):
    n, height, width = label.shape
    half = kernel.shape[0] // 2
    result = np.zeros((n, classes, height, width))
    for b in range(n):
        for i in range(height):
            for j in range(width):
                if label[b, i, j] == IGNORE:
                    continue  # an ignored pixel has no target
                total = 0.0
                for di in range(-half, half + 1):
                    for dj in range(-half, half + 1):
                        y, x = i + di, j + dj
                        if 0 <= y < height and 0 <= x < width and \
                                label[b, y, x] != IGNORE:
                            w = kernel[di + half, dj + half]
                            result[b, label[b, y, x], i, j] += w
                            total += w
                if total > 0:
                    result[b, :, i, j] /= total
    return result


@pytest.mark.parametrize('kernel, size', [('mean', 3), ('mean', 5),
                                          ('gaussian', 5), ('svls', 3)])
def test_proportions_match_a_loop_over_valid_neighbours(kernel, size):
    _, label = _batch()
    weights = kernel_weights(kernel, size, sigma=1.0)
    got = neighbourhood_proportions(label, label != IGNORE, 4, weights)
    expected = _loop_proportions(label.numpy(), 4, weights.numpy())
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_svls_kernel_keeps_half_the_mass_at_the_centre():
    kernel = kernel_weights('svls', 3)
    assert float(kernel[1, 1]) == pytest.approx(0.5)
    assert float(kernel.sum()) == pytest.approx(1.0)


def _reference_nacl(logits, label, alpha, valid_only):
    valid = label != IGNORE
    target = torch.from_numpy(_loop_proportions(
        label.numpy(), logits.shape[1], np.full((3, 3), 1 / 9))).float()
    ce = F.cross_entropy(logits, label.where(valid, 0), reduction='none')
    per_pixel = ce + alpha * (target - logits).abs().mean(dim=1)
    denominator = valid.sum() if valid_only else label.numel()
    return per_pixel[valid].sum() / denominator, target


@pytest.mark.parametrize('avg_non_ignore', [False, True])
def test_nacl_value_and_gradient(avg_non_ignore):
    logits, label = _batch(1)
    loss = MODELS.build(dict(type='NACLLoss', avg_non_ignore=avg_non_ignore))
    x = logits.clone().requires_grad_(True)
    with warnings.catch_warnings():
        # A tensor divisor (avg_non_ignore) once reached torch.tensor(), which warns.
        warnings.simplefilter('error', UserWarning)
        value = loss(x, label, ignore_index=IGNORE)
    value.backward()
    expected, target = _reference_nacl(logits, label, 0.1, avg_non_ignore)
    assert value.item() == pytest.approx(float(expected), rel=1e-5)
    # The gradient is CE's plus the penalty's closed form alpha/C sign(z - tau) / n.
    valid = label != IGNORE
    denominator = valid.sum() if avg_non_ignore else label.numel()
    ce_grad = torch.softmax(logits, 1) - F.one_hot(label.where(valid, 0), 4).permute(
        0, 3, 1, 2)
    closed = (ce_grad + 0.1 / 4 * torch.sign(logits - target)) * valid.unsqueeze(1)
    torch.testing.assert_close(x.grad, closed / denominator, atol=1e-6, rtol=1e-5)


def test_svls_is_cross_entropy_inside_regions_and_soft_at_boundaries():
    logits, label = _batch(2)
    label[label == IGNORE] = 0
    loss = MODELS.build(dict(type='SVLSLoss'))
    value = loss(logits, label, ignore_index=IGNORE)
    target = torch.from_numpy(_loop_proportions(
        label.numpy(), 4, kernel_weights('svls', 3).numpy())).float()
    expected = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    uniform = torch.zeros_like(label)
    assert float(loss(logits, uniform)) == pytest.approx(
        float(F.cross_entropy(logits, uniform)), rel=1e-5)


@pytest.mark.parametrize('avg_non_ignore', [False, True])
@pytest.mark.parametrize('with_weight', [False, True])
def test_svls_value_and_gradient_match_soft_targets_by_autograd(avg_non_ignore,
                                                                with_weight):
    # Computed as hard CE plus a correction at boundary pixels: held here to
    # the dense soft-target cross-entropy, targets from the loop.
    logits, label = _batch(3)
    valid = label != IGNORE
    weight = torch.rand(label.shape, generator=torch.Generator().manual_seed(1)) + (
        0.5) if with_weight else None
    loss = MODELS.build(dict(type='SVLSLoss', avg_non_ignore=avg_non_ignore))
    x = logits.clone().requires_grad_(True)
    value = loss(x, label, weight, ignore_index=IGNORE)
    value.backward()
    target = torch.from_numpy(_loop_proportions(
        label.numpy(), 4, kernel_weights('svls', 3).numpy())).float()
    z = logits.clone().requires_grad_(True)
    per_pixel = -(target * torch.log_softmax(z, 1)).sum(1)
    if weight is not None:
        per_pixel = per_pixel * weight
    denominator = valid.sum() if avg_non_ignore else label.numel()
    expected = per_pixel.sum() / denominator
    expected.backward()
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    torch.testing.assert_close(x.grad, z.grad, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        assert float(loss(logits, label, weight)) == pytest.approx(float(value))


def test_bad_options_are_named():
    with pytest.raises(ValueError, match='odd int'):
        MODELS.build(dict(type='SVLSLoss', kernel_size=4))
    with pytest.raises(ValueError, match="'mean' or 'svls'"):
        MODELS.build(dict(type='NACLLoss', kernel='bilateral'))
