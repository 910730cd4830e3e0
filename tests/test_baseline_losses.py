"""LS, FL, MbLS and ECP against plain per-pixel loops and their CE limits."""
import math

import pytest
import torch

from mmseg.models.losses import CrossEntropyLoss
from mmseg.registry import MODELS

import cals_seg  # noqa: F401

IGNORE = 255


def _inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 3, 5, generator=generator) * 6
    label = torch.randint(0, 4, (2, 3, 5), generator=generator)
    label[0, 1, :2] = IGNORE
    return logits, label


def _probabilities(z):
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def _reference(kind, z, y, parameter):
    """One pixel's loss, written out from each paper's formula."""
    p = _probabilities(z)
    ce = -math.log(p[y])
    if kind == 'LabelSmoothingLoss':
        return (1 - parameter) * ce - parameter * sum(math.log(q) for q in p) / len(p)
    if kind == 'SoftmaxFocalLoss':
        return -(1 - p[y])**parameter * math.log(p[y])
    if kind == 'MarginLabelSmoothingLoss':
        hinge = sum(max(0.0, max(z) - v - 10.0) for v in z) / len(z)
        return ce + parameter * hinge
    entropy = -sum(q * math.log(q) for q in p)
    return ce - parameter * entropy


PARAMETERS = {
    'LabelSmoothingLoss': ('smoothing', 0.2),
    'SoftmaxFocalLoss': ('gamma', 2.0),
    'MarginLabelSmoothingLoss': ('lambd', 0.3),
    'ConfidencePenaltyLoss': ('beta', 0.25),
}


@pytest.mark.parametrize('kind', sorted(PARAMETERS))
@pytest.mark.parametrize('avg_non_ignore', [False, True])
def test_matches_plain_loop(kind, avg_non_ignore):
    name, value = PARAMETERS[kind]
    logits, label = _inputs()
    loss = MODELS.build({'type': kind, name: value, 'avg_non_ignore': avg_non_ignore,
                         'loss_weight': 0.5})
    total, valid = 0.0, 0
    for b in range(2):
        for i in range(3):
            for j in range(5):
                if label[b, i, j] != IGNORE:
                    total += _reference(kind, logits[b, :, i, j].tolist(),
                                        int(label[b, i, j]), value)
                    valid += 1
    expected = 0.5 * total / (valid if avg_non_ignore else label.numel())
    assert loss(logits, label, ignore_index=IGNORE).item() == pytest.approx(
        expected, rel=1e-5)


@pytest.mark.parametrize('kind', sorted(PARAMETERS))
def test_zero_strength_is_mmseg_cross_entropy(kind):
    name, _ = PARAMETERS[kind]
    logits, label = _inputs(seed=1)
    loss = MODELS.build({'type': kind, name: 0.0})
    expected = CrossEntropyLoss()(logits, label, ignore_index=IGNORE)
    assert loss(logits, label, ignore_index=IGNORE).item() == pytest.approx(
        expected.item(), rel=1e-6)


@pytest.mark.parametrize('kind', sorted(PARAMETERS))
def test_gradient_reaches_logits_and_not_ignored_pixels(kind):
    logits, label = _inputs(seed=2)
    logits.requires_grad_(True)
    MODELS.build({'type': kind})(logits, label, ignore_index=IGNORE).backward()
    ignored = (label == IGNORE).unsqueeze(1).expand_as(logits)
    assert torch.all(logits.grad[ignored] == 0)
    assert logits.grad[~ignored].abs().sum() > 0


@pytest.mark.parametrize('cfg, message', [
    (dict(type='LabelSmoothingLoss', smoothing=1.0), 'smoothing'),
    (dict(type='SoftmaxFocalLoss', gamma=-1), 'gamma'),
    (dict(type='MarginLabelSmoothingLoss', margin=0), 'margin'),
    (dict(type='ConfidencePenaltyLoss', beta=-0.1), 'beta'),
])
def test_bad_arguments_are_named(cfg, message):
    with pytest.raises(ValueError, match=message):
        MODELS.build(cfg)
