"""Every loss against mmseg's CrossEntropyLoss contract: ``weight``,
``avg_factor``, ``reduction_override``, ``ignore_index``, ``avg_non_ignore``
and ``class_weight`` act on the whole per-pixel loss as mmseg's cross-entropy
lets them act on its own.

The reference: each loss's per-pixel formula written out here (plain torch,
float64, the label proportions by convolution), reduced by mmseg's own
``weight_reduce_loss`` with the ``avg_factor`` its ``cross_entropy`` picks for
``avg_non_ignore``; gradients by autograd through that reference.
"""
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from mmseg.models.losses import CrossEntropyLoss
from mmseg.models.losses.utils import weight_reduce_loss
from mmseg.registry import MODELS

import cals_seg  # noqa: F401
from cals_seg.utils.stack import installed_stack

C = 4
IGNORE = 255
CLASS_WEIGHT = [0.5, 2.0, 1.0, 3.0]


# The losses whose cross-entropy term is mmseg's CrossEntropyLoss itself.
MMSEG_CROSS_ENTROPY_BASE = ('CALSLoss', 'CRaCLoss', 'NACLLoss')


def _inputs(seed=0, ignore=IGNORE):
    generator = torch.Generator().manual_seed(seed)
    # Blocky labels, so that windows hold one label or several.
    coarse = torch.randint(0, C, (2, 3, 4), generator=generator)
    label = coarse.repeat_interleave(2, 1).repeat_interleave(2, 2)
    label[0, 1, :3] = ignore
    label[1, 4, 5] = ignore
    logits = torch.randn(2, C, 6, 8, generator=generator, dtype=torch.float64) * 3
    weight = torch.rand(2, 6, 8, generator=generator, dtype=torch.float64) + 0.5
    return logits, label, weight


def _proportions(label, valid, kernel):
    """Weighted share of each class among the valid in-image neighbours, by
    convolving the masked one-hot labels (zero padding) and the mask."""
    onehot = F.one_hot(label.where(valid, 0), C).permute(0, 3, 1, 2).double()
    onehot = onehot * valid.unsqueeze(1)
    half = kernel.shape[0] // 2
    weights = kernel.double().view(1, 1, *kernel.shape)
    counts = F.conv2d(onehot, weights.expand(C, 1, -1, -1), padding=half, groups=C)
    mass = F.conv2d(valid.unsqueeze(1).double(), weights, padding=half)
    return torch.where(valid.unsqueeze(1), counts / mass.clamp_min(1e-300), 0)


def _svls_kernel(size=3, sigma=1.0):
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    square = offsets.view(-1, 1)**2 + offsets.view(1, -1)**2
    kernel = torch.exp(-square / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    kernel[size // 2, size // 2] = 1 - kernel[size // 2, size // 2]
    return kernel / kernel.sum()


def _boundary(label):
    """A window (3 x 3, the border replicated) holds another label."""
    padded = F.pad(label.unsqueeze(1).double(), (1, 1, 1, 1), mode='replicate')
    window = F.unfold(padded, 3).view(label.shape[0], 9, *label.shape[1:])
    return (window != label.unsqueeze(1)).any(dim=1)


def _phr(h, lambd, rho):
    x = (lambd + rho * h).clamp_min(0)
    return (x * x - lambd * lambd) / (2 * rho)


# name -> (config, per-pixel reference(loss, z, label, valid, class weight of y))
def _ce(z, y):
    return -F.log_softmax(z, 1).gather(1, y.unsqueeze(1)).squeeze(1)


def _ls(loss, z, y, valid, cw):
    log_p = F.log_softmax(z, 1)
    return cw * (0.8 * _ce(z, y) - 0.2 * log_p.mean(1))


def _focal(loss, z, y, valid, cw):
    log_p_y = -_ce(z, y)
    return cw * -(1 - log_p_y.exp())**2 * log_p_y


def _mbls(loss, z, y, valid, cw):
    hinge = (z.amax(1, keepdim=True) - z - 2.0).clamp_min(0).mean(1)
    return cw * (_ce(z, y) + 0.3 * hinge)


def _ecp(loss, z, y, valid, cw):
    log_p = F.log_softmax(z, 1)
    return cw * (_ce(z, y) + 0.25 * (log_p.exp() * log_p).sum(1))


def _svls(loss, z, y, valid, cw):
    q = _proportions(y, valid, _svls_kernel())
    return cw * -(q * F.log_softmax(z, 1)).sum(1)


def _nacl(loss, z, y, valid, cw):
    tau = _proportions(y, valid, torch.full((3, 3), 1 / 9))
    return cw * _ce(z, y) + 0.3 * (tau - z).abs().mean(1)


def _cals(loss, z, y, valid, cw):
    m = loss.margin
    h = (z.amax(1, keepdim=True) - z - m) / m
    lambd = loss.multipliers.double().view(1, C, 1, 1)
    rho = loss.rho.double().view(1, C, 1, 1)
    return cw * _ce(z, y) + 0.7 * _phr(h, lambd, rho).mean(1)


def _crac(loss, z, y, valid, cw):
    near = _boundary(torch.where(valid, y, IGNORE))
    tau = _proportions(y, valid, torch.full((3, 3), 1 / 9))
    scale = torch.where(near, 1.0, loss.margin).unsqueeze(1)
    h = (scale * tau - z).abs()
    group = torch.arange(C).view(1, C, 1, 1) + C * near.long().unsqueeze(1)
    penalty = _phr(h, loss.multipliers.double()[group], loss.rho.double()[group])
    return cw * _ce(z, y) + 0.7 * loss.penalty_scale * penalty.mean(1)


LOSSES = {
    'LabelSmoothingLoss': (dict(smoothing=0.2), _ls),
    'SoftmaxFocalLoss': (dict(gamma=2.0), _focal),
    'MarginLabelSmoothingLoss': (dict(margin=2.0, lambd=0.3), _mbls),
    'ConfidencePenaltyLoss': (dict(beta=0.25), _ecp),
    'SVLSLoss': (dict(), _svls),
    'NACLLoss': (dict(alpha=0.3), _nacl),
    'CALSLoss': (dict(num_classes=C, margin=3.0, penalty_weight=0.7), _cals),
    'CRaCLoss': (dict(num_classes=C, margin=2.0, penalty_weight=0.7), _crac),
}

# What mmseg's decode head may pass, and what it would pass it with.
CASES = {
    'defaults': dict(),
    'weight': dict(weight=True),
    'avg_factor': dict(avg_factor=7.5),
    'mean': dict(reduction_override='mean'),
    'sum': dict(reduction_override='sum'),
    'none': dict(reduction_override='none'),
    'none_weight_avg_factor': dict(reduction_override='none', weight=True,
                                   avg_factor=3.0),
    'mean_weight_avg_factor': dict(reduction_override='mean', weight=True,
                                   avg_factor=11.0),
    'sum_weight': dict(reduction_override='sum', weight=True),
}


def _build(name, **options):
    config, reference = LOSSES[name]
    loss = MODELS.build(dict(type=name, loss_weight=1.5, **config, **options))
    if hasattr(loss, 'multipliers'):
        groups = loss.multipliers.numel()
        generator = torch.Generator().manual_seed(groups)
        loss.multipliers.copy_(torch.rand(groups, generator=generator) * 2 + 0.1)
        loss.rho.copy_(torch.rand(groups, generator=generator) * 3 + 0.5)
    return loss, reference


def _expected(loss, reference, logits, label, ignore_index, case, weight,
              avg_non_ignore, class_weight):
    valid = label != ignore_index
    y = label.where(valid, 0)
    cw = torch.ones(()) if class_weight is None else torch.tensor(
        class_weight, dtype=torch.float64)[y]
    per_pixel = reference(loss, logits, y, valid, cw).where(valid, 0)
    reduction = case.get('reduction_override') or 'mean'
    avg_factor = case.get('avg_factor')
    if avg_factor is None and avg_non_ignore and reduction == 'mean':
        avg_factor = int(valid.sum())  # mmseg's cross_entropy
    return 1.5 * weight_reduce_loss(per_pixel, weight, reduction, avg_factor)


@pytest.mark.parametrize('case', sorted(CASES))
@pytest.mark.parametrize('name', sorted(LOSSES))
def test_each_argument_reaches_the_whole_loss(name, case):
    """Fails wherever a loss drops an argument or applies it to one term."""
    _check(name, CASES[case], avg_non_ignore=True)


@pytest.mark.parametrize('name', sorted(LOSSES))
@pytest.mark.parametrize('avg_non_ignore', [False, True])
@pytest.mark.parametrize('with_class_weight', [False, True])
def test_avg_non_ignore_class_weight_and_another_ignore_index(
        name, avg_non_ignore, with_class_weight):
    if with_class_weight and name in MMSEG_CROSS_ENTROPY_BASE:
        # These losses use mmseg's cross_entropy as it is, whose class-weighted
        # mean fails where pixels are ignored, on each stack in its own way
        # (docs/architecture.md): mmseg 1.2.2 indexes class_weight with every label,
        # the ignored ones included; onedl-mmsegmentation 1.4.2 leaves them out, but
        # under avg_non_ignore masks that shorter tensor with the full-size mask.
        if installed_stack() == 'upstream' or avg_non_ignore:
            with pytest.raises(IndexError):
                _check(name, dict(weight=True), avg_non_ignore, ignore_index=-100,
                       class_weight=CLASS_WEIGHT)
        else:
            _check_fork_class_weighted_mean(name)
        return
    _check(name, dict(weight=True), avg_non_ignore, ignore_index=-100,
           class_weight=CLASS_WEIGHT if with_class_weight else None)


def _check_fork_class_weighted_mean(name):
    """onedl-mmsegmentation 1.4.2 without avg_non_ignore: the weighted sum over
    the class weights of the non-ignored pixels, as torch's weighted mean."""
    logits, label, weight = _inputs(ignore=-100)
    loss = MODELS.build(dict(type=name, class_weight=CLASS_WEIGHT,
                             **ZERO_STRENGTH[name]))
    value = loss(logits.float(), label, weight.float(), ignore_index=-100)
    class_weight = torch.tensor(CLASS_WEIGHT, dtype=torch.float64)
    per_pixel = F.cross_entropy(logits, label, weight=class_weight, reduction='none',
                                ignore_index=-100)
    expected = (per_pixel * weight).sum() / class_weight[label[label != -100]].sum()
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)


def _check(name, case, avg_non_ignore, ignore_index=IGNORE, class_weight=None):
    options = dict(avg_non_ignore=avg_non_ignore)
    if class_weight is not None:
        options['class_weight'] = class_weight
    loss, reference = _build(name, **options)
    logits, label, weight = _inputs(ignore=ignore_index)
    weight = weight if case.get('weight') else None
    kwargs = {k: v for k, v in case.items() if k != 'weight'}
    z = logits.float().requires_grad_()
    value = loss(z, label, None if weight is None else weight.float(),
                 ignore_index=ignore_index, **kwargs)
    x = logits.clone().requires_grad_()
    expected = _expected(loss, reference, x, label, ignore_index, case, weight,
                         avg_non_ignore, class_weight)
    assert value.shape == expected.shape
    torch.testing.assert_close(value.double(), expected.detach(), rtol=2e-5,
                               atol=1e-5)
    upstream = torch.rand(expected.shape, generator=torch.Generator().manual_seed(5),
                          dtype=torch.float64)
    (value * upstream.float()).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(z.grad.double(), x.grad, rtol=1e-4, atol=1e-6)


# The losses at zero strength (SVLS has none: its kernel always smooths).
ZERO_STRENGTH = dict(
    LabelSmoothingLoss=dict(smoothing=0.0), SoftmaxFocalLoss=dict(gamma=0.0),
    MarginLabelSmoothingLoss=dict(lambd=0.0), ConfidencePenaltyLoss=dict(beta=0.0),
    NACLLoss=dict(alpha=0.0), CALSLoss=dict(num_classes=C, penalty_weight=0.0),
    CRaCLoss=dict(num_classes=C, penalty_weight=0.0))


@pytest.mark.parametrize('name', sorted(ZERO_STRENGTH))
def test_zero_strength_cross_entropy_part_is_mmseg(name):
    """With class weights and every argument, the cross-entropy part is
    mmseg's CrossEntropyLoss itself."""
    logits, label, weight = _inputs(1)
    logits = logits.float()
    loss = MODELS.build(dict(type=name, class_weight=CLASS_WEIGHT, avg_non_ignore=True,
                             **ZERO_STRENGTH[name]))
    ce = CrossEntropyLoss(class_weight=CLASS_WEIGHT, avg_non_ignore=True)
    # Not the plain class-weighted mean: mmseg 1.2.2 fails on ignored pixels
    # there (see test_avg_non_ignore_class_weight_and_another_ignore_index).
    for kwargs in (dict(reduction_override='none'), dict(reduction_override='sum'),
                   dict(avg_factor=5.0)):
        torch.testing.assert_close(
            loss(logits, label, weight.float(), ignore_index=IGNORE, **kwargs),
            ce(logits, label, weight.float(), ignore_index=IGNORE, **kwargs))


def test_class_weight_from_a_file(tmp_path):
    path = tmp_path / 'weights.pkl'
    path.write_bytes(pickle.dumps(CLASS_WEIGHT))
    logits, label, _ = _inputs(2)
    for name in ('LabelSmoothingLoss', 'SVLSLoss'):
        from_file, _ = _build(name, class_weight=str(path))
        from_list, _ = _build(name, class_weight=CLASS_WEIGHT)
        torch.testing.assert_close(from_file(logits.float(), label),
                                   from_list(logits.float(), label))


@pytest.mark.parametrize('name', sorted(LOSSES))
def test_bad_arguments_are_named(name):
    loss, _ = _build(name)
    logits, label, weight = _inputs()
    logits = logits.float()
    with pytest.raises(TypeError, match='unexpected keyword'):
        loss(logits, label, ignore_index=IGNORE, reduction='sum')
    with pytest.raises(ValueError, match='reduction_override'):
        loss(logits, label, ignore_index=IGNORE, reduction_override='avg')
    with pytest.raises(ValueError, match='avg_factor'):
        loss(logits, label, ignore_index=IGNORE, avg_factor=2.0,
             reduction_override='sum')
    with pytest.raises(ValueError, match='weight'):
        loss(logits, label, weight[:, :2], ignore_index=IGNORE)


def test_statistics_are_those_of_the_unweighted_constraints():
    """A pixel weight weighs the loss, not the multiplier update."""
    logits, label, weight = _inputs(3)
    results = []
    for kwargs in (dict(), dict(weight=weight.float()),
                   dict(reduction_override='none')):
        loss, _ = _build('CRaCLoss')
        loss.collect_round_statistics = True
        loss(logits.float(), label, ignore_index=IGNORE, **kwargs)
        results.append(loss.pop_round_statistics())
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert math.isclose(float(results[0].count.sum()), C * int((label != IGNORE).sum()))
