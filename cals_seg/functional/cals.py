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


def _finite_pixels(logits: Tensor, top: Tensor) -> Tensor:
    """``(N, *S)`` bool: the pixels whose logits are all finite, from the
    largest logit ``top`` (``(N, *S)``) and the smallest: NaN propagates
    through both, +inf reaches the largest and -inf the smallest. Two
    reductions, not an ``(N, C, *S)`` mask."""
    return torch.isfinite(top) & torch.isfinite(logits.amin(dim=1))


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
    """Round sums from ``P'`` (zero at invalid pixels) and the logits, over the
    valid pixels whose logits are all finite; the other valid pixels are
    counted in ``num_nonfinite``.

    ``sum_i h_ik = (sum_i top_i - sum_i z_ik - n m) / s`` over those pixels.
    Pixels are left out by masked copies rather than gathered, and nothing is
    read back to the host: a gather, or a test of whether any logit is
    non-finite, would wait for the device at every training step.
    """
    num_classes = logits.shape[1]
    finite = _finite_pixels(logits, top.squeeze(1))
    member = valid & finite
    excluded = ~member.unsqueeze(1)
    num_members = member.sum(dtype=torch.float64)
    grad_sum = _class_sums(grad.clamp(lambd_min, lambd_max).masked_fill_(excluded, 0))
    top_sum = top.masked_fill(excluded, 0).sum(dtype=torch.float64)
    logit_sum = _class_sums(logits.masked_fill(excluded, 0))
    constraint_sum = (top_sum - logit_sum - num_members * margin) / scale
    return RoundStatistics(grad_sum, constraint_sum,
                           num_members.expand(num_classes).clone(),
                           (valid & ~finite).sum(dtype=torch.float64))


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
        statistics = _round_statistics(logits, top, grad, valid, margin, scale,
                                       *statistics_clip)
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


class _RowSegments(NamedTuple):
    """The pixels ordered by their row of a group table
    (:meth:`cals_seg.functional.groups.GroupLayout.table`), to sum per-pixel
    values by row without host synchronisation: ``torch.bincount`` reads its
    output size back from CUDA, a boolean gather its length, and
    scatter-adding a few million values into a few bins serialises on
    atomics. Here a sum is the difference of a float64 cumulative sum at the
    row's bounds (its rounding error is that of the float64 total).

    Attributes:
        order (Tensor): int64 ``[N * prod(S)]``, the pixels sorted by row.
        bounds (Tensor): int64 ``[R + 1]``, where each row starts in ``order``.
    """
    order: Tensor
    bounds: Tensor

    @classmethod
    def of(cls, rows: Tensor, num_rows: int) -> '_RowSegments':
        flat = rows.reshape(-1)
        order = flat.argsort(stable=True)
        starts = torch.arange(num_rows + 1, device=rows.device)
        return cls(order, torch.searchsorted(flat[order], starts))

    def sums(self, values: Tensor) -> Tensor:
        """``[M, N * prod(S)]`` float64 values per pixel -> ``[M, R]`` sums."""
        cumulative = torch.nn.functional.pad(values[:, self.order].cumsum(dim=1),
                                             (1, 0))
        return cumulative[:, self.bounds[1:]] - cumulative[:, self.bounds[:-1]]


def _grouped_terms(penalty: PenaltyFunction, logits: Tensor, valid: Tensor,
                   group: GroupLayout, multipliers: Tensor, rho: Tensor,
                   margin: float, scale: float,
                   reference: Optional[Union[Tensor, ScaledProportions]],
                   need_grad: bool, statistics_clip: Optional[Tuple[float, float]]):
    """:func:`grouped_constraint_penalty` in PyTorch operations, a logit at a
    time: the multipliers of logit ``k`` are column ``k`` of the group table
    read at each pixel's row, so neither an ``(N, C, *S)`` group index nor
    gathered multiplier maps are formed; every temporary is ``(N, *S)``. Of
    the logits' size there are only the gradient direction and, for
    :class:`ScaledProportions`, the dense targets, which the direction then
    overwrites logit by logit. Nothing is read back to the host.

    Returns:
        tuple: the float64 sum of ``P`` over valid pairs, the gradient
        direction (or None) and the round statistics (or None).
    """
    num_classes = logits.shape[1]
    owned_reference = isinstance(reference, ScaledProportions)
    if owned_reference:
        reference = reference.dense(num_classes)
    distance = reference is None
    stride = group.logit_stride
    rows = group.rows()
    lambd_table, rho_table = group.table(multipliers.float()), group.table(rho.float())
    invalid = ~valid
    top = logits.amax(dim=1) if distance else None
    direction = winners = None
    if need_grad:
        direction = reference if owned_reference else torch.empty_like(logits)
        winners = torch.zeros_like(logits[:, 0]) if distance else None
    if statistics_clip is not None:
        finite = _finite_pixels(logits, logits.amax(dim=1) if top is None else top)
        excluded = ~(valid & finite)
        segments = _RowSegments.of(rows, lambd_table.shape[0])
        # [2, R, width]: the sums of clip(P') and of h per group; with stride 0
        # every logit of a pixel adds to one group, so pixels are summed first.
        group_sums = logits.new_zeros((2, ) + lambd_table.shape, dtype=torch.float64)
        pixel_sums = 0
    total = logits.new_zeros((), dtype=torch.float64)
    for k in range(num_classes):
        if stride or k == 0:  # with stride 0 every logit reads column 0
            lambd = lambd_table[:, k * stride][rows]
            rho_k = rho_table[:, k * stride][rows]
        z = logits[:, k]
        if distance:
            h = torch.sub(top, z).sub_(margin).div_(scale)
        else:
            target = reference[:, k].float()
            h = torch.sub(target, z).abs_().div_(scale)
        h.masked_fill_(invalid, 0)  # ignored pixels: finite, and masked below
        value, grad = penalty(h, lambd, rho_k)
        total += value.masked_fill_(invalid, 0).sum(dtype=torch.float64)
        grad.masked_fill_(invalid, 0)
        if statistics_clip is not None:
            pair = torch.stack([grad.clamp(*statistics_clip), h])
            pair = pair.masked_fill_(excluded, 0).double().view(2, -1)
            if stride:
                group_sums[:, :, k] = segments.sums(pair)
            else:
                pixel_sums = pixel_sums + pair
        if need_grad:
            if distance:
                winners += z == top
            else:
                grad.mul_(torch.sign(z - target))
            direction[:, k] = grad
    statistics = None
    if statistics_clip is not None:
        if not stride:
            group_sums[:, :, 0] = segments.sums(pixel_sums)
        members = segments.sums((~excluded).double().view(1, -1))[0]
        count = members.unsqueeze(1).expand(lambd_table.shape) * (
            1 if stride else num_classes)
        statistics = RoundStatistics(group_sums[0].flatten(), group_sums[1].flatten(),
                                     count.flatten(),
                                     (valid & ~finite).sum(dtype=torch.float64))
    if need_grad and distance:
        # d h_ik / d z_ij = ([j wins at i] - [j = k]) / s, the winner's share
        # split among tied winners, as constraint_penalty does.
        share = direction.sum(dim=1).div_(winners)
        for k in range(num_classes):
            direction[:, k].sub_(torch.where(logits[:, k] == top, share, 0))
    return total, direction, statistics


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
        group (GroupLayout): the groups, from
            :func:`cals_seg.functional.groups.group_layout`.
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
    total, direction, statistics = _grouped_terms(
        penalty, logits, valid, group, multipliers, rho, margin, scale, reference,
        need_grad, statistics_clip)
    return ConstraintPenalty((total / denominator).float(), direction, grad_scale,
                             statistics)
