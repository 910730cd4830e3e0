"""CRaC's and NACL's options that reproduce their authors' code, against plain
transcriptions of that code (github.com/Bala93/CRac,
calibrate/lagrangian/aug_lagrangian_spatial_cls_bndry.py; github.com/Bala93/
MarginLoss, calibrate/losses/utils.py ``get_svls_filter_2d``), fed our
constraints and our boundary pixels so that only the rule under test differs."""
import pytest
import torch
import torch.nn.functional as F

from mmseg.registry import MODELS

import cals_seg  # noqa: F401
from cals_seg.functional.neighbourhood import boundary_mask, neighbourhood_proportions

C = 3
IGNORE = 255


def _inputs(seed):
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, C, (2, 3, 3), generator=generator)
    label = coarse.repeat_interleave(3, 1).repeat_interleave(3, 2)
    logits = torch.randn(2, C, 9, 9, generator=generator) * 4
    return logits, label


def _phr(h, lambd, rho):
    x = lambd + rho * h
    value = torch.where(x >= 0, (x * x - lambd * lambd) / (2 * rho),
                        -lambd * lambd / (2 * rho))
    return value, torch.where(x >= 0, x, torch.zeros_like(h))


def _hcat(loss, logits, label):
    """Their ``hcat``: per pixel, the C constraints in the columns of its
    region and zeros in the other C, ordered as our groups (interior first)."""
    valid = torch.ones_like(label, dtype=torch.bool)
    tau = neighbourhood_proportions(label, valid, C, torch.full((3, 3), 1 / 9))
    near = boundary_mask(label, 1).unsqueeze(1)
    h = (torch.where(near, 1.0, loss.margin) * tau - logits).abs()
    h, near = h.movedim(1, -1).reshape(-1, C), near.movedim(1, -1).reshape(-1, 1)
    return torch.cat([h * ~near, h * near], dim=-1).double()


class AuthorsUpdate:
    """update_lambd / set_lambd / update_rho, transcribed (phr, one rank)."""

    def __init__(self, lambd, rho, lambd_min, lambd_max, rho_max, gamma, tao,
                 rho_step):
        self.lambd, self.rho = lambd.double(), rho.double()
        self.lambd_min, self.lambd_max, self.rho_max = lambd_min, lambd_max, rho_max
        self.gamma, self.tao, self.rho_step = gamma, tao, rho_step
        self.prev_constraints = None

    def round(self, hcat, epoch):
        _, grad_p = _phr(hcat, self.lambd, self.rho)
        grad_p = grad_p.clamp(self.lambd_min, self.lambd_max)
        self.lambd = (grad_p.sum(0) / len(grad_p)).clamp(self.lambd_min,
                                                         self.lambd_max)
        current = hcat.sum(0) / len(hcat)
        if (epoch + 1) % self.rho_step == 0 and self.prev_constraints is not None:
            self.rho = torch.where(
                current > self.prev_constraints.clamp(min=0) * self.tao,
                self.gamma * self.rho, self.rho).clamp(max=self.rho_max)
        self.prev_constraints = current


def test_authors_multiplier_update_matches_their_rule_over_rounds():
    loss = MODELS.build(dict(type='CRaCLoss', num_classes=C, rho_init=0.3,
                             rho_step=2, multiplier_update='authors'))
    loss.multipliers.copy_(torch.linspace(0.2, 1.5, 2 * C))
    theirs = AuthorsUpdate(loss.multipliers.clone(), loss.rho.clone(),
                           loss.lambd_min, loss.lambd_max, loss.rho_max, loss.gamma,
                           loss.tau, loss.rho_step)
    members = MODELS.build(dict(type='CRaCLoss', num_classes=C, rho_init=0.3,
                                rho_step=2))
    members.load_state_dict(loss.state_dict())
    for epoch in range(5):
        logits, label = _inputs(epoch)
        hcat = _hcat(loss, logits, label)
        loss.apply_round(loss.statistics_from_logits(logits, label, IGNORE))
        members.apply_round(members.statistics_from_logits(logits, label, IGNORE))
        theirs.round(hcat, epoch)
        torch.testing.assert_close(loss.multipliers.double(), theirs.lambd,
                                   rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(loss.rho.double(), theirs.rho)
    assert bool((theirs.rho > 0.3).any())  # rho was raised on the way
    # Ours differs: means over the members only.
    assert not torch.allclose(members.multipliers.double(), theirs.lambd, rtol=1e-3)


def test_authors_update_is_a_damped_step_with_our_fixed_point():
    logits, label = _inputs(7)
    ours = MODELS.build(dict(type='CRaCLoss', num_classes=C))
    authors = MODELS.build(dict(type='CRaCLoss', num_classes=C,
                                multiplier_update='authors'))
    authors.load_state_dict(ours.state_dict())
    old = ours.multipliers.clone()
    stats = ours.statistics_from_logits(logits, label, IGNORE)
    ours.apply_round(stats)
    authors.apply_round(stats)
    share = stats.count / (stats.count[:C] + stats.count[C:]).repeat(2)
    expected = old + share.float() * (ours.multipliers - old)
    torch.testing.assert_close(authors.multipliers, expected, rtol=1e-5, atol=1e-7)


def test_authors_penalty_normalisation_is_their_mean_over_2c_entries():
    logits, label = _inputs(3)
    config = dict(type='CRaCLoss', num_classes=C, avg_non_ignore=True)
    ours = MODELS.build(config)
    authors = MODELS.build(dict(config, penalty_normalization='authors'))
    lambd = torch.linspace(0.5, 2.0, 2 * C)
    for loss in (ours, authors):
        loss.multipliers.copy_(lambd)
    ce = F.cross_entropy(logits, label)
    penalty, _ = _phr(_hcat(ours, logits, label), lambd.double(),
                      ours.rho.double())
    assert float(authors(logits, label) - ce) == pytest.approx(
        float(penalty.mean()), rel=1e-5)
    assert float(ours(logits, label) - ce) == pytest.approx(
        2 * float(penalty.mean()), rel=1e-5)


@pytest.mark.parametrize('options, message', [
    (dict(penalty_normalization='pixels'), 'penalty_normalization'),
    (dict(multiplier_update='damped'), 'multiplier_update'),
    (dict(multiplier_update='authors', groups='logit'), "groups='region'"),
])
def test_bad_crac_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        MODELS.build(dict(type='CRaCLoss', num_classes=C, **options))


def _their_svls_targets(label):
    """MarginLoss's ``get_svls_filter_2d``: a normalised 3 x 3 gaussian
    (sigma 1) whose centre becomes the sum of the others, applied to the
    one-hot labels with replicate padding, divided by the kernel's sum."""
    grid = torch.arange(3.0)
    square = (grid.view(-1, 1) - 1)**2 + (grid.view(1, -1) - 1)**2
    kernel = torch.exp(-square / 2)
    kernel = kernel / kernel.sum()
    neighbours = 1 - kernel[1, 1]
    kernel[1, 1] = neighbours
    kernel = kernel / neighbours
    onehot = F.one_hot(label, C).permute(0, 3, 1, 2).float()
    padded = F.pad(onehot, (1, 1, 1, 1), mode='replicate')
    return F.conv2d(padded, kernel.expand(C, 1, 3, 3), groups=C) / kernel.sum()


def test_nacl_svls_kernel_is_the_authors_gaussian():
    logits, label = _inputs(4)
    loss = MODELS.build(dict(type='NACLLoss', kernel='svls', avg_non_ignore=True))
    target = _their_svls_targets(label)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    # Away from the border (where they replicate and we renormalise), NACL's
    # penalty with kernel='svls' is theirs with kernel_ops='gaussian'.
    expected = F.cross_entropy(logits, label, reduction='none') + 0.1 * (
        target - logits).abs().mean(1)
    value = loss(logits, label, reduction_override='none')
    torch.testing.assert_close(value[inner[0], inner[2], inner[3]],
                               expected[inner[0], inner[2], inner[3]])
    with pytest.raises(ValueError, match="kernel='svls'"):
        MODELS.build(dict(type='NACLLoss', kernel='gaussian'))
