"""Logit-distance constraints of CALS and the per-class statistics of an update round.

Shapes: logits are ``(N, C, *S)`` with the class axis at dim 1 (mmseg's layout,
``S`` the spatial axes, possibly none); masks and labels are ``(N, *S)``.
"""
import math
from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from .groups import GroupLayout
from .neighbourhood import ScaledProportions
from .. import ops
from ..ops import use_kernel
from .penalties import PenaltyFunction, phr


class RoundStatistics(NamedTuple):
    """Additive per-group sums over the pixels of one update round (a group is
    a class under CALS's grouping, :mod:`cals_seg.functional.groups`).

    Sums, not means, so that batches and ranks merge by addition and the division
    happens once, after the all-reduce.

    Attributes:
        grad_sum (Tensor): ``[G]`` sum of ``clip(P'(h_ik), lambd_min, lambd_max)``.
        constraint_sum (Tensor): ``[G]`` sum of ``h_ik``.
        count (Tensor): ``[G]`` number of (pixel, logit) pairs in each sum.
        num_nonfinite (Tensor): scalar, pixels left out for non-finite logits.
    """
    grad_sum: Tensor
    constraint_sum: Tensor
    count: Tensor
    num_nonfinite: Tensor

    @classmethod
    def zeros(cls, num_groups: int, device=None) -> 'RoundStatistics':
        zero = torch.zeros(num_groups, dtype=torch.float64, device=device)
        return cls(zero, zero.clone(), zero.clone(),
                   torch.zeros((), dtype=torch.float64, device=device))

    def __add__(self, other: 'RoundStatistics') -> 'RoundStatistics':
        return RoundStatistics(*(a + b.to(a.device) for a, b in zip(self, other)))

    def flatten(self) -> Tensor:
        """All sums in one float64 vector, for a single all-reduce."""
        return torch.cat([t.reshape(-1) for t in self])

    @classmethod
    def unflatten(cls, flat: Tensor, num_groups: int) -> 'RoundStatistics':
        c = num_groups
        return cls(flat[:c], flat[c:2 * c], flat[2 * c:3 * c], flat[3 * c])


class ConstraintPenalty(NamedTuple):
    """Result of :func:`constraint_penalty`.

    Attributes:
        value (Tensor): scalar, mean of ``P(h_ik)`` over valid pixels and classes.
        grad_direction (Tensor | None): float32 tensor shaped like the logits;
            ``d value / d logits = grad_scale * grad_direction``. The scale is kept
            apart so that the backward pass applies it together with its incoming
            gradient, in the one pass over the tensor it makes anyway.
        grad_scale (Tensor | None): scalar, see ``grad_direction``.
        statistics (RoundStatistics | None): the round sums of the batch, when
            asked for.
    """
    value: Tensor
    grad_direction: Optional[Tensor]
    grad_scale: Optional[Tensor]
    statistics: Optional[RoundStatistics]


def _class_sums(x: Tensor) -> Tensor:
    """Sum a ``(N, C, *S)`` tensor over every axis but the class axis.

    Summed in the tensor's own dtype (torch's pairwise summation keeps float32
    accurate to about 1e-7 relative here) and returned as float64: asking for a
    float64 sum, or flattening the class axis first, costs 10-20x more.
    """
    dims = [d for d in range(x.dim()) if d != 1]
    return x.sum(dim=dims).double()


def _valid_class_sums(x: Tensor, valid: Tensor) -> Tensor:
    """Per-class sums of ``x`` over the pixels where ``valid`` is True, float64.

    The sum over all pixels minus the sum over the gathered invalid ones: invalid
    pixels are usually few, and this reads ``x`` once without writing a masked
    copy of it (3x faster). A non-finite value at an invalid pixel makes the
    sums non-finite; callers check.
    """
    excluded = x.movedim(1, -1)[~valid]
    return _class_sums(x) - excluded.sum(dim=0).double()


def _phr_terms(logits: Tensor, top: Tensor, valid: Tensor, num_valid: Tensor,
               multipliers: Tensor, rho: Tensor, margin: float,
               scale: float) -> Tuple[Tensor, Tensor]:
    """Per-class sums of the PHR penalty over valid pixels, and ``P'`` (zero at
    invalid pixels).

    ``P' = max(0, lambd + rho h)`` is affine in ``d = max_j z_j - z`` before the
    clamp, and the sum of ``P = (P'^2 - lambd^2) / (2 rho)`` needs only the sum of
    squares of ``P'``: neither ``h`` nor ``P`` is materialised, so the penalty is one
    new tensor and a few in-place passes over it. Invalid pixels get ``d = -inf``,
    which the clamp turns into ``P' = 0`` without a masking pass.
    """
    top = top.masked_fill(~valid.unsqueeze(1), -math.inf)
    grad = torch.sub(top, logits)
    # lambd + rho h in one pass: addcmul may write into its own input.
    torch.addcmul(multipliers - rho * (margin / scale), grad, rho / scale, out=grad)
    grad.clamp_min_(0)
    n, c = grad.shape[:2]
    # Norms along the contiguous pixel axis, then over images: 3-4x faster than
    # one norm over the strided (N, *S) axes.
    squares = torch.linalg.vector_norm(grad.reshape(n, c, -1), dim=2).double()
    squares = squares.square().sum(dim=0)
    return _phr_class_values(squares, num_valid, multipliers, rho), grad


def _phr_class_values(squares: Tensor, num_valid: Tensor, multipliers: Tensor,
                      rho: Tensor) -> Tensor:
    """``sum_i P(h_ik)`` per class from ``sum_i P'_ik^2`` over valid pixels."""
    lambd, rho = multipliers.view(-1).double(), rho.view(-1).double()
    return (squares - num_valid * lambd * lambd) / (2 * rho)


def _phr_kernel(logits: Tensor, valid: Tensor, num_valid: Tensor, multipliers: Tensor,
                rho: Tensor, margin: float, scale: float, need_grad: bool,
                statistics_clip: Optional[Tuple[float, float]], backend: str):
    """The PHR penalty through the fused kernel :func:`cals_seg.ops.phr_penalty`
    (C++ on CPU, Triton on CUDA or for ``backend`` 'triton').

    Returns:
        tuple: per-class sums of ``P``, the gradient direction (or None) and the
        round statistics (or None), as :func:`constraint_penalty` defines them.
    """
    n, c = logits.shape[:2]
    lambd_min, lambd_max = statistics_clip or (0.0, 0.0)
    multipliers, rho = multipliers.view(-1), rho.view(-1)
    sums = ops.phr_penalty(
        logits=logits.reshape(n, c, -1).contiguous(),
        valid=valid.reshape(n, -1).contiguous(),
        offset=(multipliers - rho * (margin / scale)).contiguous(),
        slope=(rho / scale).contiguous(), need_grad=need_grad,
        need_statistics=statistics_clip is not None, lambd_min=lambd_min,
        lambd_max=lambd_max, backend=backend)
    statistics = None
    if statistics_clip is not None:
        statistics = RoundStatistics(sums.clipped,
                                     (sums.distance - sums.num_finite * margin) / scale,
                                     sums.num_finite.expand(c).clone(),
                                     sums.num_nonfinite)
    return (_phr_class_values(sums.squares, num_valid, multipliers, rho),
            sums.direction.view(logits.shape) if need_grad else None, statistics)


def _generic_terms(penalty: PenaltyFunction, logits: Tensor, top: Tensor,
                   valid: Tensor, multipliers: Tensor, rho: Tensor, margin: float,
                   scale: float) -> Tuple[Tensor, Tensor]:
    """As :func:`_phr_terms`, for any penalty function, through ``h`` and ``P``."""
    h = torch.sub(top, logits).sub_(margin).div_(scale)
    value, grad = penalty(h, multipliers, rho)
    # Multiplying by a float mask is 3x faster than masked_fill with a mask
    # broadcast over classes.
    weight = valid.unsqueeze(1).to(grad.dtype)
    return _class_sums(value.mul_(weight)), grad.mul_(weight)


def _round_statistics(logits: Tensor, top: Tensor, grad: Tensor, valid: Tensor,
                      margin: float, scale: float, lambd_min: float,
                      lambd_max: float) -> RoundStatistics:
    """Round sums from ``P'`` (already zero at invalid pixels) and the logits.

    ``sum_i h_ik = (sum_i top_i - sum_i z_ik - n m) / s`` over valid pixels.
    """
    num_classes = logits.shape[1]
    num_valid = valid.sum(dtype=torch.float64)
    num_excluded = valid.numel() - num_valid
    # P' = 0 at excluded pixels, which the clip turns into lambd_min each.
    grad_sum = _class_sums(grad.clamp(lambd_min, lambd_max)) - lambd_min * num_excluded
    top_sum = top.squeeze(1).masked_fill(~valid, 0).sum(dtype=torch.float64)
    logit_sum = _valid_class_sums(logits, valid)
    constraint_sum = (top_sum - logit_sum - num_valid * margin) / scale
    return RoundStatistics(grad_sum, constraint_sum,
                           num_valid.expand(num_classes).clone(),
                           torch.zeros((), dtype=torch.float64, device=valid.device))


def _finite_round_statistics(logits: Tensor, top: Tensor, grad: Tensor,
                             valid: Tensor, margin: float, scale: float,
                             lambd_min: float, lambd_max: float) -> RoundStatistics:
    """:func:`_round_statistics` with pixels that have a non-finite logit left out
    and counted. A non-finite logit makes the sums non-finite, so the common case
    costs no extra pass over the pixels."""
    stats = _round_statistics(logits, top, grad, valid, margin, scale, lambd_min,
                              lambd_max)
    if torch.isfinite(stats.grad_sum).all() and torch.isfinite(
            stats.constraint_sum).all():
        return stats
    finite = valid & torch.isfinite(logits).all(dim=1)
    mask = finite.unsqueeze(1)
    stats = _round_statistics(logits.masked_fill(~mask, 0),
                              top.masked_fill(~mask, 0), grad.masked_fill(~mask, 0),
                              finite, margin, scale, lambd_min, lambd_max)
    return stats._replace(num_nonfinite=(valid & ~finite).sum(dtype=torch.float64))


@torch.no_grad()
def constraint_penalty(logits: Tensor,
                       valid: Tensor,
                       multipliers: Tensor,
                       rho: Tensor,
                       margin: float,
                       normalize: bool,
                       penalty: PenaltyFunction,
                       need_grad: bool = True,
                       statistics_clip: Optional[Tuple[float, float]] = None,
                       backend: str = 'auto') -> ConstraintPenalty:
    """The CALS penalty, its gradient with respect to the logits, and round sums.

    ``h_ik = (max_j z_ij - z_ik - m) / s`` with ``s = m`` (normalised) or 1, in
    float32 whatever the logits' dtype (the penalties' powers of ``h`` overflow
    float16). ``value = sum_{i valid, k} P(h_ik; lambd_k, rho_k) / (n_valid * C)``.
    Its gradient is assembled from ``P'`` directly:
    ``d value / d z_ij = ([j wins at i] sum_k P'_ik - P'_ij) / (s n_valid C)``, where
    pixels with tied largest logits split the winner's share evenly (the gradient
    of ``amax``). The one tensor ``P'`` serves the backward pass and the update
    statistics. Runs without autograd: the caller attaches the gradient.

    Args:
        logits (Tensor): ``(N, C, *S)``, any float dtype.
        valid (Tensor): bool ``(N, *S)``.
        multipliers (Tensor): ``[C]`` lambda, treated as constants.
        rho (Tensor): ``[C]`` penalty parameters, treated as constants.
        margin (float): the margin ``m > 0``.
        normalize (bool): divide distances by ``m`` so that the winning class has
            ``h = -1``.
        penalty (callable): one of :mod:`cals_seg.functional.penalties`.
        need_grad (bool): compute the gradient; otherwise its fields are None.
        statistics_clip (tuple[float, float], optional): ``(lambd_min,
            lambd_max)``, the clipping range of ``P'`` in the round sums; given,
            the batch's :class:`RoundStatistics` are computed as well.
        backend (str): 'kernel' runs the fused kernel of the logits' device
            (phr only; C++ on CPU, Triton on CUDA), 'triton' the Triton kernel,
            'torch' the PyTorch operations that run on any device, 'auto' the C++
            kernel on CPU and PyTorch on CUDA (:func:`cals_seg.ops.use_kernel`).
            All compute the same sums; they differ only in float rounding and at
            ignored pixels with non-finite logits.

    Returns:
        ConstraintPenalty
    """
    num_classes = logits.shape[1]
    logits = logits.float()
    num_valid = valid.sum()
    denominator = num_valid.clamp_min(1) * num_classes
    scale = margin if normalize else 1.0
    grad_scale = -1 / (scale * denominator) if need_grad else None
    if use_kernel(backend, logits, penalty is phr, 'the phr penalty'):
        class_values, direction, statistics = _phr_kernel(
            logits, valid, num_valid, multipliers.float(), rho.float(), margin,
            scale, need_grad, statistics_clip, backend)
        return ConstraintPenalty((class_values.sum() / denominator).float(),
                                 direction, grad_scale, statistics)

    top = logits.amax(dim=1, keepdim=True)
    class_shape = (1, num_classes) + (1, ) * (logits.dim() - 2)
    multipliers = multipliers.float().view(class_shape)
    rho = rho.float().view(class_shape)
    if penalty is phr:
        class_values, grad = _phr_terms(logits, top, valid, num_valid, multipliers,
                                        rho, margin, scale)
    else:
        class_values, grad = _generic_terms(penalty, logits, top, valid,
                                            multipliers, rho, margin, scale)
    statistics = None
    if statistics_clip is not None:
        statistics = _finite_round_statistics(logits, top, grad, valid, margin,
                                              scale, *statistics_clip)
    direction = None
    if need_grad:
        # A float indicator: summing or multiplying a bool one converts it first.
        winner = torch.eq(logits, top, out=torch.empty_like(logits))
        winner_share = grad.sum(dim=1, keepdim=True).div_(
            winner.sum(dim=1, keepdim=True))
        # In place: P' becomes P' - [wins] * share, the gradient up to its scale.
        direction = grad.addcmul_(winner, winner_share, value=-1)
    return ConstraintPenalty((class_values.sum() / denominator).float(), direction,
                             grad_scale, statistics)


def _grouped_kernel(logits: Tensor, valid: Tensor, group: GroupLayout,
                    multipliers: Tensor, rho: Tensor, margin: float, scale: float,
                    targets: Optional[ScaledProportions], need_grad: bool,
                    statistics_clip: Optional[Tuple[float, float]], backend: str):
    """The grouped PHR penalty through the fused kernel
    :func:`cals_seg.ops.grouped_phr_penalty` (C++ on CPU, Triton on CUDA or for
    ``backend`` 'triton').

    Returns:
        tuple: the sum of ``P`` over valid pairs, the gradient direction (or
        None) and the round statistics (or None), as
        :func:`grouped_constraint_penalty` defines them.
    """
    n, c = logits.shape[:2]
    height, width = logits.shape[2:] if logits.dim() == 4 else (1, valid[0].numel())
    multipliers, rho = multipliers.float().contiguous(), rho.float().contiguous()
    if targets is None:
        label = torch.where(valid, 0, -1).to(torch.int32).reshape(n, -1)
        offset, weights, target_scale = multipliers - rho * (margin / scale), None, None
    else:
        label, offset, weights = targets.kernel_labels(), multipliers, targets.weights
        target_scale = targets.scale
    empty = logits.new_empty(0)
    lambd_min, lambd_max = statistics_clip or (0.0, 0.0)
    sums = ops.grouped_phr_penalty(
        logits=logits.reshape(n, c, -1).contiguous(), label=label, height=height,
        width=width, group_base=group.base.reshape(n, -1).to(torch.int32).contiguous(),
        logit_stride=group.logit_stride, offset=offset.contiguous(),
        slope=(rho / scale).contiguous(), lambd=multipliers, rho=rho,
        weights=empty if weights is None else weights.float().contiguous(),
        target_scale=(empty if target_scale is None else
                      target_scale.float().reshape(n, -1).contiguous()),
        need_grad=need_grad, need_statistics=statistics_clip is not None,
        lambd_min=lambd_min, lambd_max=lambd_max, backend=backend)
    statistics = None
    if statistics_clip is not None:
        distance = sums.distance
        if targets is None:
            distance = distance - sums.count * margin
        statistics = RoundStatistics(sums.clipped, distance / scale, sums.count,
                                     sums.num_nonfinite)
    return (sums.value, sums.direction.view(logits.shape) if need_grad else None,
            statistics)


@torch.no_grad()
def grouped_constraint_penalty(logits: Tensor,
                               valid: Tensor,
                               group: GroupLayout,
                               multipliers: Tensor,
                               rho: Tensor,
                               margin: float,
                               normalize: bool,
                               penalty: PenaltyFunction,
                               reference: Optional[Union[Tensor,
                                                         ScaledProportions]] = None,
                               need_grad: bool = True,
                               statistics_clip: Optional[Tuple[float, float]] = None,
                               backend: str = 'auto') -> ConstraintPenalty:
    """:func:`constraint_penalty` with a multiplier per group of (pixel, logit)
    constraints (:mod:`cals_seg.functional.groups`).

    Constraints: CALS's ``h_ik = (max_j z_ij - z_ik - m) / s`` when
    ``reference`` is None; otherwise CRaC's ``h_ik = |r_ik - z_ik| / s``. With
    ``g = group[i, k]``: ``value = sum_{i valid, k} P(h_ik; lambd_g, rho_g) /
    (n_valid * C)``, and the round statistics are per group: the sums of
    ``clip(P'(h_ik))`` and ``h_ik`` and the number of (pixel, logit) pairs.

    Args:
        logits (Tensor): ``(N, C, *S)``, any float dtype.
        valid (Tensor): bool ``(N, *S)``.
        group (GroupLayout): the groups, from :func:`cals_seg.functional.groups.group_layout`.
        multipliers (Tensor), rho (Tensor): ``[G]``.
        margin (float), normalize (bool), penalty: as :func:`constraint_penalty`.
        reference (Tensor | ScaledProportions, optional): ``r``, shaped like the
            logits or described by the labels (then, on CPU, formed block by
            block inside the kernel).
        need_grad (bool), statistics_clip (tuple, optional): as
            :func:`constraint_penalty`.
        backend (str): 'kernel' runs the fused kernel of the logits' device
            (phr, no dense reference; C++ on CPU, Triton on CUDA), 'triton' the
            Triton kernel, 'torch' the PyTorch operations, 'auto' the C++ kernel
            on CPU where it applies and PyTorch on CUDA
            (:func:`cals_seg.ops.use_kernel`). They differ only in float rounding
            and at ignored pixels with non-finite logits.

    Returns:
        ConstraintPenalty: statistics of ``G`` groups.
    """
    num_classes = logits.shape[1]
    logits = logits.float()
    scale = margin if normalize else 1.0
    num_valid = valid.sum()
    denominator = num_valid.clamp_min(1) * num_classes
    distance = reference is None
    grad_scale = None
    if need_grad:
        # d h / d z carries -1/s for distances, +sign(z - r)/s for targets.
        grad_scale = (-1 if distance else 1) / (scale * denominator.double())
    if use_kernel(backend, logits, penalty is phr and (
            distance or (isinstance(reference, ScaledProportions)
                         and logits.dim() == 4)),
                  'the phr penalty, no dense reference'):
        total, direction, statistics = _grouped_kernel(
            logits, valid, group, multipliers, rho, margin, scale, reference,
            need_grad, statistics_clip, backend)
        return ConstraintPenalty((total / denominator).float(), direction, grad_scale,
                                 statistics)
    if isinstance(reference, ScaledProportions):
        reference = reference.dense(num_classes)
    num_groups, index = multipliers.numel(), group.index()
    mask = valid.unsqueeze(1).expand_as(logits)
    if distance:
        top = logits.amax(dim=1, keepdim=True)
        h = torch.sub(top, logits).sub_(margin).div_(scale)
    else:
        h = torch.sub(reference.float(), logits).abs_().div_(scale)
    h = h.masked_fill(~mask, 0)  # ignored pixels: finite, and masked below
    value, grad = penalty(h, multipliers.float()[index], rho.float()[index])
    weight = mask.to(grad.dtype)
    total = (value * weight).sum(dtype=torch.float64) / denominator
    grad = grad * weight
    statistics = None
    if statistics_clip is not None:
        finite = mask & torch.isfinite(logits).all(dim=1, keepdim=True)
        members = index.expand_as(logits)[finite]
        statistics = RoundStatistics(
            torch.bincount(members, grad[finite].clamp(*statistics_clip).double(),
                           num_groups),
            torch.bincount(members, h[finite].double(), num_groups),
            torch.bincount(members, minlength=num_groups).double(),
            (valid & ~finite[:, 0]).sum(dtype=torch.float64))
    direction = None
    if need_grad:
        if distance:
            # d h_ik / d z_ij = ([j wins at i] - [j = k]) / s, the winner's share
            # split among tied winners, as constraint_penalty does.
            winner = torch.eq(logits, top).to(grad.dtype)
            share = grad.sum(dim=1, keepdim=True).div_(winner.sum(dim=1, keepdim=True))
            direction = grad.addcmul_(winner, share, value=-1)
        else:
            direction = grad.mul_(torch.sign(logits - reference.float()))
    return ConstraintPenalty(total.float(), direction, grad_scale, statistics)
