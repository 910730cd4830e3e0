"""CALSLoss against a plain-loop reading of its definition (docs/methods.md,
CALS) and mmseg's CE."""
import pytest
import torch

from mmseg.models.losses import CrossEntropyLoss
from mmseg.registry import MODELS

import cals_seg  # noqa: F401
from cals_seg.models.losses import CALSLoss
from cals_seg.functional.penalties import get_penalty
from test_penalties import _reference

NUM_CLASSES = 4
IGNORE = 255


def _inputs(seed=0, n=2, h=3, w=5, scale=8.0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, NUM_CLASSES, h, w, generator=generator,
                         dtype=torch.float64) * scale
    label = torch.randint(0, NUM_CLASSES, (n, h, w), generator=generator)
    label[0, 0, :2] = IGNORE
    label[1, 2, 4] = IGNORE
    return logits, label


def _loss(**kwargs):
    loss = CALSLoss(num_classes=NUM_CLASSES, margin=kwargs.pop('margin', 3.0),
                    **kwargs)
    loss.multipliers.copy_(torch.tensor([0.5, 1e-6, 2.0, 0.1]))
    loss.rho.copy_(torch.tensor([1.0, 2.0, 5.0, 10.0]))
    return loss


def _plain_penalty(loss, logits, label):
    """Mean over valid pixels and classes of P(h_ik), one pixel at a time."""
    total, count = 0.0, 0
    n, c, height, width = logits.shape
    for b in range(n):
        for y in range(height):
            for x in range(width):
                if label[b, y, x] == IGNORE:
                    continue
                z = logits[b, :, y, x].tolist()
                for k in range(c):
                    h = (max(z) - z[k] - loss.margin) / loss.margin
                    total += _reference(loss.penalty, h, loss.multipliers[k].item(),
                                        loss.rho[k].item())[0]
                    count += 1
    return total / count


@pytest.mark.parametrize('penalty', ['phr', 'p2', 'p3'])
def test_penalty_equals_plain_loop(penalty):
    logits, label = _inputs()
    loss = _loss(penalty=penalty, penalty_weight=0.7, loss_weight=2.0)
    ce = CrossEntropyLoss()(logits.float(), label, ignore_index=IGNORE)
    value = loss(logits.float(), label, ignore_index=IGNORE)
    # Without avg_non_ignore, mmseg averages over all pixels: the penalty's
    # class means too.
    valid_share = (label != IGNORE).sum() / label.numel()
    expected = 2.0 * (ce + 0.7 * valid_share * _plain_penalty(loss, logits, label))
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize('penalty', ['phr', 'p2', 'p3'])
@pytest.mark.parametrize('normalize', [True, False])
def test_gradient_matches_autograd(penalty, normalize):
    logits, label = _inputs(seed=3)
    loss = _loss(penalty=penalty, normalize=normalize, penalty_weight=1.5)
    logits = logits.float().requires_grad_(True)
    loss(logits, label, ignore_index=IGNORE).backward()

    # Reference: the same objective written with differentiable torch ops.
    reference_logits = logits.detach().double().requires_grad_(True)
    scale = loss.margin if normalize else 1.0
    h = (reference_logits.amax(dim=1, keepdim=True) - reference_logits -
         loss.margin) / scale
    shape = (1, NUM_CLASSES, 1, 1)
    value, _ = get_penalty(penalty)(h, loss.multipliers.double().view(shape),
                                    loss.rho.double().view(shape))
    valid = (label != IGNORE).unsqueeze(1)
    # mmseg's mean over all pixels (avg_non_ignore=False) of the class means.
    penalty_value = value[valid.expand_as(value)].sum() / value.numel()
    ce = CrossEntropyLoss()(reference_logits, label, ignore_index=IGNORE)
    (ce + 1.5 * penalty_value).backward()
    torch.testing.assert_close(logits.grad.double(), reference_logits.grad,
                               rtol=1e-4, atol=1e-7)
    assert not loss.multipliers.requires_grad and not loss.rho.requires_grad
    assert all(p.grad is None for p in loss.parameters())


def test_gradient_scales_with_loss_weight_and_upstream_gradient():
    # Base and penalty share one gradient tensor (CALSLoss' _Objective): both
    # must follow loss_weight and the gradient arriving from upstream.
    logits, label = _inputs(seed=4)
    grads = []
    for loss_weight, upstream in ((1.0, 1.0), (2.0, 3.0)):
        x = logits.float().requires_grad_(True)
        loss = _loss(penalty_weight=1.5, loss_weight=loss_weight)
        (upstream * loss(x, label, ignore_index=IGNORE)).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], 6 * grads[0], rtol=1e-5, atol=1e-8)


def test_second_backward_is_a_clear_error():
    logits, label = _inputs(seed=6)
    value = _loss()(logits.float().requires_grad_(True), label, ignore_index=IGNORE)
    value.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match='back-propagated only once'):
        value.backward()


def test_ignored_pixels_contribute_nothing():
    logits, label = _inputs(seed=5)
    loss = _loss(penalty='p2', avg_non_ignore=True)
    logits = logits.float().requires_grad_(True)
    value = loss(logits, label, ignore_index=IGNORE)
    value.backward()
    ignored = (label == IGNORE).unsqueeze(1).expand_as(logits)
    assert torch.all(logits.grad[ignored] == 0)
    changed = logits.detach().clone()
    changed[ignored] = 1e4 * torch.randn(int(ignored.sum()))
    assert loss(changed, label, ignore_index=IGNORE).item() == pytest.approx(
        value.item(), rel=1e-6)


@pytest.mark.parametrize('kwargs', [
    dict(),
    dict(class_weight=[1.0, 2.0, 0.5, 1.0]),
    dict(avg_non_ignore=True),
])
def test_base_part_is_mmseg_cross_entropy(kwargs):
    logits, label = _inputs(seed=7)
    logits = logits.float()
    if 'class_weight' in kwargs:
        # mmseg 1.2.2's cross-entropy cannot weigh classes of ignored labels.
        label[label == IGNORE] = 0
    loss = _loss(penalty_weight=0.0, **kwargs)
    weight = torch.rand(label.shape)
    expected = CrossEntropyLoss(**kwargs)(logits, label, weight,
                                          ignore_index=IGNORE)
    assert loss(logits, label, weight,
                ignore_index=IGNORE).item() == pytest.approx(expected.item(),
                                                             rel=1e-6)


def test_nested_base_loss_and_registry():
    loss = MODELS.build(
        dict(type='CALSLoss', num_classes=NUM_CLASSES, penalty_weight=0.0,
             base_loss=dict(type='DiceLoss', loss_weight=1.0)))
    logits, label = _inputs(seed=8)
    label[label == IGNORE] = 0
    expected = MODELS.build(dict(type='DiceLoss'))(logits.float(), label)
    assert loss(logits.float(), label).item() == pytest.approx(expected.item())
    assert loss.loss_name == 'loss_cals'
    with pytest.raises(ValueError, match='inside it'):
        CALSLoss(num_classes=3, class_weight=[1, 1, 1],
                 base_loss=dict(type='CrossEntropyLoss'))


def test_buffers_are_saved_in_state_dict():
    loss = _loss()
    state = loss.state_dict()
    for name in ('multipliers', 'rho', 'prev_constraint', 'num_rounds'):
        assert name in state
    assert state['multipliers'].shape == (NUM_CLASSES, )


def test_wrong_channel_count_is_named():
    loss = _loss()
    logits, label = _inputs()
    with pytest.raises(ValueError, match='expected num_classes=4'):
        loss(logits[:, :3].float(), label)


@pytest.mark.parametrize('bad_value', [4, -1, 254])
def test_out_of_range_labels_are_named(bad_value):
    loss = _loss()
    logits, label = _inputs()
    label[1, 1, 1] = bad_value
    with pytest.raises(ValueError, match=rf'\[{bad_value}\] outside \[0, 4\)'):
        loss(logits.float(), label, ignore_index=IGNORE)


def test_label_shape_mismatch_is_named():
    loss = _loss()
    logits, label = _inputs()
    with pytest.raises(ValueError, match='do not match'):
        loss(logits.float(), label[:, :2])


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_classes=1), 'num_classes'),
    (dict(num_classes=3, margin=0), 'margin'),
    (dict(num_classes=3, penalty='relu'), 'relu'),
    (dict(num_classes=3, rho_init=20.0), 'rho_init'),
    (dict(num_classes=3, lambd_min=0.0), 'lambd_min'),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CALSLoss(**kwargs)


def test_penalty_in_float32_for_half_precision_logits():
    logits, label = _inputs(seed=9, scale=1e3)
    loss = _loss(penalty='p2', margin=10.0)
    loss.multipliers.fill_(5.0)
    half = logits.to(torch.bfloat16).requires_grad_(True)
    value = loss(half, label, ignore_index=IGNORE)
    value.backward()
    assert torch.isfinite(value)
    assert half.grad.dtype == torch.bfloat16
    assert torch.isfinite(half.grad.float()).all()
