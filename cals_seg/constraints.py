"""Logit-distance constraints of CALS and the per-class statistics of an update round.

Shapes: logits are ``(N, C, *S)`` with the class axis at dim 1 (mmseg's layout,
``S`` the spatial axes, possibly none); masks and labels are ``(N, *S)``.
"""
from typing import NamedTuple, Tuple

import torch
from torch import Tensor

from .penalties import PenaltyFunction


class RoundStatistics(NamedTuple):
    """Additive per-class sums over the pixels of one update round.

    Sums, not means, so that batches and ranks merge by addition and the division
    happens once, after the all-reduce (DESIGN.md 1.4).

    Attributes:
        grad_sum (Tensor): ``[C]`` sum of ``clip(P'(h_ik), lambd_min, lambd_max)``.
        constraint_sum (Tensor): ``[C]`` sum of ``h_ik``.
        count (Tensor): ``[C]`` number of pixels that entered each sum.
        num_nonfinite (Tensor): scalar, pixels left out for non-finite logits.
    """
    grad_sum: Tensor
    constraint_sum: Tensor
    count: Tensor
    num_nonfinite: Tensor

    @classmethod
    def zeros(cls, num_classes: int, device=None) -> 'RoundStatistics':
        zero = torch.zeros(num_classes, dtype=torch.float64, device=device)
        return cls(zero, zero.clone(), zero.clone(),
                   torch.zeros((), dtype=torch.float64, device=device))

    def __add__(self, other: 'RoundStatistics') -> 'RoundStatistics':
        return RoundStatistics(*(a + b.to(a.device) for a, b in zip(self, other)))

    def flatten(self) -> Tensor:
        """All sums in one float64 vector, for a single all-reduce."""
        return torch.cat([t.reshape(-1) for t in self])

    @classmethod
    def unflatten(cls, flat: Tensor, num_classes: int) -> 'RoundStatistics':
        c = num_classes
        return cls(flat[:c], flat[c:2 * c], flat[2 * c:3 * c], flat[3 * c])


class ConstraintPenalty(NamedTuple):
    """Result of :func:`constraint_penalty`.

    Attributes:
        value (Tensor): scalar, mean of ``P(h_ik)`` over valid pixels and classes.
        grad_logits (Tensor | None): ``d value / d logits``, shaped like the logits.
        constraints (Tensor): ``h``, shaped like the logits, float32.
        grad (Tensor): ``P'(h)``, shaped like the logits, float32.
    """
    value: Tensor
    grad_logits: Tensor
    constraints: Tensor
    grad: Tensor


def logit_constraints(logits: Tensor,
                      margin: float,
                      normalize: bool = True) -> Tuple[Tensor, Tensor]:
    """Constraint values ``h_ik = (max_j z_ij - z_ik - m) / m`` (``/ m`` if normalised).

    Args:
        logits (Tensor): ``(N, C, *S)``; computed in float32 whatever its dtype,
            because the penalties' powers of ``h`` overflow float16.
        margin (float): the margin ``m > 0``.
        normalize (bool): divide by ``m`` so that the winning class has ``h = -1``.

    Returns:
        tuple[Tensor, Tensor]: ``h`` of shape ``(N, C, *S)`` and the index of the
        winning class, ``(N, 1, *S)``.
    """
    logits = logits.float()
    top, winner = logits.max(dim=1, keepdim=True)
    h = (top - margin) - logits
    if normalize:
        h = h.div_(margin)
    return h, winner


def _per_class_sum(x: Tensor) -> Tensor:
    """Sum a ``(N, C, *S)`` tensor over every axis but the class axis.

    Summed in the tensor's own dtype (torch's pairwise summation keeps float32
    accurate to about 1e-7 relative here) and returned as float64: asking for a
    float64 sum, or flattening the class axis first, costs 10-20x more.
    """
    dims = [d for d in range(x.dim()) if d != 1]
    return x.sum(dim=dims).double()


def round_statistics(constraints: Tensor, grad: Tensor, valid: Tensor,
                     lambd_min: float, lambd_max: float) -> RoundStatistics:
    """Per-class sums of one batch for a multiplier update round (DESIGN.md 1.4).

    Pixels whose constraints are not all finite are left out and counted.

    Args:
        constraints (Tensor): ``h``, ``(N, C, *S)``.
        grad (Tensor): ``P'(h)`` at the current multipliers, ``(N, C, *S)``.
        valid (Tensor): bool ``(N, *S)``; False for ignored pixels.
        lambd_min (float), lambd_max (float): clipping range of ``P'``.

    Returns:
        RoundStatistics: sums with ``C = constraints.shape[1]`` entries.
    """
    num_classes = constraints.shape[1]
    mask = valid.unsqueeze(1)
    clipped = grad.clamp(lambd_min, lambd_max)
    grad_sum = _per_class_sum(torch.where(mask, clipped, 0))
    constraint_sum = _per_class_sum(torch.where(mask, constraints, 0))
    num_valid = valid.sum(dtype=torch.float64)
    num_nonfinite = torch.zeros((), dtype=torch.float64, device=valid.device)
    # A non-finite logit makes both sums non-finite, so the common case costs no
    # extra pass over the pixels.
    if not (torch.isfinite(grad_sum).all() and torch.isfinite(constraint_sum).all()):
        finite_pixel = torch.isfinite(constraints).all(dim=1) & valid
        num_nonfinite = (valid & ~finite_pixel).sum(dtype=torch.float64)
        mask = finite_pixel.unsqueeze(1)
        grad_sum = _per_class_sum(torch.where(mask, clipped, 0))
        constraint_sum = _per_class_sum(torch.where(mask, constraints, 0))
        num_valid = finite_pixel.sum(dtype=torch.float64)
    count = num_valid.expand(num_classes).clone()
    return RoundStatistics(grad_sum, constraint_sum, count, num_nonfinite)


def constraint_penalty(logits: Tensor, valid: Tensor, multipliers: Tensor,
                       rho: Tensor, margin: float, normalize: bool,
                       penalty: PenaltyFunction,
                       need_grad: bool = True) -> ConstraintPenalty:
    """The CALS penalty, its gradient with respect to the logits, and ``h``, ``P'``.

    ``value = sum_{i valid, k} P(h_ik; lambd_k, rho_k) / (n_valid * C)``. Its gradient
    is assembled from ``P'`` directly: with ``s = m`` (normalised) or 1,
    ``d value / d z_ij = ([j = argmax_i] sum_k P'_ik - P'_ij) / (s n_valid C)``,
    so the one tensor ``P'`` serves the backward pass and the update statistics.

    Args:
        logits (Tensor): ``(N, C, *S)``, any float dtype.
        valid (Tensor): bool ``(N, *S)``.
        multipliers (Tensor): ``[C]`` lambda, treated as constants.
        rho (Tensor): ``[C]`` penalty parameters, treated as constants.
        margin (float), normalize (bool): see :func:`logit_constraints`.
        penalty (callable): one of :mod:`cals_seg.penalties`.
        need_grad (bool): compute ``grad_logits``; otherwise it is None.

    Returns:
        ConstraintPenalty
    """
    num_classes = logits.shape[1]
    h, winner = logit_constraints(logits, margin, normalize)
    class_shape = (1, num_classes) + (1, ) * (logits.dim() - 2)
    value, grad = penalty(h, multipliers.float().view(class_shape),
                          rho.float().view(class_shape))
    mask = valid.unsqueeze(1)
    denominator = valid.sum().clamp_min(1) * num_classes
    total = torch.where(mask, value, 0).sum() / denominator
    grad_logits = None
    if need_grad:
        scale = (margin if normalize else 1.0) * denominator
        grad_logits = torch.where(mask, grad, 0).div_(-scale)
        grad_logits.scatter_add_(1, winner, -grad_logits.sum(dim=1, keepdim=True))
    return ConstraintPenalty(total, grad_logits, h, grad)
