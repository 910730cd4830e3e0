"""Class Adaptive Label Smoothing (CALS) loss for mmseg decode heads."""
from typing import Optional, Union

import torch
import torch.nn as nn
from torch import Tensor

from mmseg.registry import MODELS

from ...functional.cals import (ConstraintPenalty, RoundStatistics, constraint_penalty,
                           grouped_constraint_penalty)
from ...functional.labels import check_label_range
from ...functional.groups import group_layout, group_names, num_groups
from ...functional.neighbourhood import ScaledProportions, boundary_mask
from ...functional.multipliers import (NO_PREVIOUS_CONSTRAINT, MultiplierState,
                           update_multipliers)
from ...functional.penalties import get_penalty
from ...functional.pixel_penalty import constraint_penalty_map
from .penalty_objective import PenaltyObjective, base_loss_input
from .reduction import check_pixel_weight, reduce_pixel_losses, resolve_reduction


@MODELS.register_module()
class CALSLoss(nn.Module):
    """Cross-entropy plus the Augmented-Lagrangian penalty of CALS (CVPR 2023).

    ``loss = loss_weight * (base_loss + penalty_weight * mean_{i valid, k}
    P(h_ik; lambd_k, rho_k))`` with ``h_ik = (max_j z_ij - z_ik - margin) / margin``.
    The multipliers ``lambd`` and penalty parameters ``rho`` are constants here;
    :class:`~cals_seg.engine.hooks.CALSMultiplierHook` updates them between rounds
    from the statistics this module collects (``source='train'``) or computes
    (:meth:`statistics_from_logits`). Ignored pixels get no penalty and give no
    statistics. The penalty is computed in float32 whatever the logits' dtype.

    ``forward`` keeps mmseg's ``CrossEntropyLoss`` contract for the whole
    per-pixel loss ``CE_i + penalty_weight * mean_k P(h_ik)`` (see
    :meth:`forward`): the 'mean' reduction divides the penalty, like the
    cross-entropy, by the number of all pixels, of the non-ignored ones
    (``avg_non_ignore``) or by ``avg_factor``.

    Like the authors' code (by-liu/CALS, ``AugLagrangianClass.get``: ``p.mean()``),
    the penalty is averaged over pixels AND classes, so ``penalty_weight=1``
    with ``avg_non_ignore=True`` reproduces their objective; do not scale it
    by ``C``. Differences from it:
    ignored and padded pixels get no penalty and give no statistics (theirs keeps
    them), and the statistics of a round are summed over ranks before dividing
    (theirs averages per-rank means).

    Defaults are those of the authors' segmentation configuration
    (configs/lag/aug_lagrangian_class.yaml): PHR, margin 20, lambda in
    [1e-6, 1e6], rho from 1 to 10, gamma 1.2, tau 0.9, rho checked every 10
    rounds. Their base cross-entropy averages over valid pixels: set
    ``avg_non_ignore=True`` to match it (the shipped configs do).

    Args:
        num_classes (int): number of classes ``C``; the logits must have ``C``
            channels.
        margin (float): logit-distance margin ``m``. Default: 20.
        penalty (str): 'phr', 'p2' or 'p3'. Default: 'phr'.
        penalty_weight (float): weight of the penalty term. Default: 1.0.
        lambd_min (float): initial and smallest multiplier. Default: 1e-6.
        lambd_max (float): largest multiplier. Default: 1e6.
        rho_init (float): initial penalty parameter. Default: 1.0.
        rho_max (float): largest penalty parameter. Default: 10.0.
        gamma (float): growth factor of rho. Default: 1.2.
        tau (float): required improvement ratio of the mean constraint. Default: 0.9.
        rho_step (int): rounds between rho checks; <= 0 keeps rho fixed. Default: 10.
        normalize (bool): divide distances by the margin. Default: True.
        class_weight (list[float] | str, optional): class weights of the default
            cross-entropy (mmseg semantics). Default: None.
        avg_non_ignore (bool): average the default cross-entropy over non-ignored
            pixels only (mmseg semantics). Default: False.
        base_loss (dict, optional): config of another mmseg loss to use instead of
            cross-entropy; then ``class_weight`` and ``avg_non_ignore`` belong in it.
        groups (str): which (pixel, logit) constraints share a multiplier
            (:mod:`cals_seg.functional.groups`): 'logit' (CALS: one per class, the
            default), 'label' (one per ground-truth class of the pixel),
            'label_logit' (one per pair) or 'region' (one per class inside
            regions and one at boundaries).
        region_width (int): half-width of the window that decides the
            'region' grouping's boundary pixels. Default: 1 (3 x 3).
        loss_weight (float): weight of the whole loss. Default: 1.0.
        loss_name (str): key in the loss dict; must start with ``loss_`` for mmseg
            to back-propagate it. Default: 'loss_cals'.
    """

    # Factor of the penalty's per-pixel class mean (CRaCLoss offers its
    # authors' normalisation).
    penalty_scale = 1.0

    def __init__(self,
                 num_classes: int,
                 margin: float = 20.0,
                 penalty: str = 'phr',
                 penalty_weight: float = 1.0,
                 lambd_min: float = 1e-6,
                 lambd_max: float = 1e6,
                 rho_init: float = 1.0,
                 rho_max: float = 10.0,
                 gamma: float = 1.2,
                 tau: float = 0.9,
                 rho_step: int = 10,
                 normalize: bool = True,
                 class_weight: Optional[Union[list, str]] = None,
                 avg_non_ignore: bool = False,
                 base_loss: Optional[dict] = None,
                 loss_weight: float = 1.0,
                 loss_name: str = 'loss_cals',
                 groups: str = 'logit',
                 region_width: int = 1):
        super().__init__()
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f'num_classes must be an int >= 2, got {num_classes!r}')
        if margin <= 0:
            raise ValueError(f'margin must be > 0, got {margin}')
        if not 0 < lambd_min <= lambd_max:
            raise ValueError('need 0 < lambd_min <= lambd_max, got '
                             f'lambd_min={lambd_min}, lambd_max={lambd_max}')
        if not 0 < rho_init <= rho_max:
            raise ValueError('need 0 < rho_init <= rho_max, got '
                             f'rho_init={rho_init}, rho_max={rho_max}')
        if gamma < 1:
            raise ValueError(f'gamma must be >= 1, got {gamma}')
        self.num_classes = num_classes
        self.groups = groups
        self.num_groups = num_groups(groups, num_classes)
        self.region_width = region_width
        self.margin = float(margin)
        self.penalty = penalty
        self.penalty_fn = get_penalty(penalty)
        self.penalty_weight = penalty_weight
        self.lambd_min = lambd_min
        self.lambd_max = lambd_max
        self.rho_max = rho_max
        self.gamma = gamma
        self.tau = tau
        self.rho_step = rho_step
        self.normalize = normalize
        self.loss_weight = loss_weight
        self._loss_name = loss_name

        if base_loss is None:
            base_loss = dict(type='CrossEntropyLoss', use_sigmoid=False,
                             class_weight=class_weight,
                             avg_non_ignore=avg_non_ignore, loss_weight=1.0)
        elif class_weight is not None or avg_non_ignore:
            raise ValueError('class_weight and avg_non_ignore configure the default '
                             'cross-entropy; with base_loss, set them inside it')
        self.base_loss = MODELS.build(base_loss)
        # The penalty is reduced as the base loss is: over the non-ignored
        # pixels when the base loss averages over them.
        self.avg_non_ignore = bool(getattr(self.base_loss, 'avg_non_ignore', False))

        size = (self.num_groups, )
        self.register_buffer('multipliers', torch.full(size, lambd_min))
        self.register_buffer('rho', torch.full(size, float(rho_init)))
        self.register_buffer('prev_constraint',
                             torch.full(size, NO_PREVIOUS_CONSTRAINT))
        self.register_buffer('num_rounds', torch.zeros((), dtype=torch.long))
        # Plain attributes, not buffers: they are per-rank partial sums that DDP's
        # buffer broadcast must not overwrite with rank 0's.
        self.collect_round_statistics = False
        self._round_sums: Optional[RoundStatistics] = None

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def extra_repr(self) -> str:
        return (f'num_classes={self.num_classes}, groups={self.groups!r}, '
                f'margin={self.margin}, penalty={self.penalty!r}, '
                f'penalty_weight={self.penalty_weight}')

    def group_names(self, class_names) -> list:
        """Readable names of the multipliers, for logs."""
        return group_names(self.groups, class_names)

    def reference(self, label: Tensor, valid: Tensor,
                  boundary: Optional[Tensor] = None) -> Optional[ScaledProportions]:
        """The targets ``r`` of constraints ``|r - z|``; None for CALS's
        logit distances (CRaCLoss overrides it). ``boundary``: the 'region'
        grouping's boundary mask, when there is one."""
        return None

    def _region_boundary(self, label: Tensor) -> Optional[Tensor]:
        """The 'region' grouping's boundary mask, formed once per step for the
        groups and CRaC's targets, which both read it; None for the others."""
        if self.groups != 'region':
            return None
        return boundary_mask(label, self.region_width)

    def _check_inputs(self, cls_score: Tensor, label: Tensor, ignore_index: int):
        if cls_score.dim() < 2 or cls_score.shape[1] != self.num_classes:
            raise ValueError(
                f'{type(self).__name__}: logits of shape {tuple(cls_score.shape)} '
                f'have {cls_score.shape[1] if cls_score.dim() > 1 else "no"} '
                f'channels at dim 1, expected num_classes={self.num_classes}')
        expected = (cls_score.shape[0], ) + tuple(cls_score.shape[2:])
        if tuple(label.shape) != expected:
            raise ValueError(f'{type(self).__name__}: labels of shape '
                             f'{tuple(label.shape)} do not match logits of shape '
                             f'{tuple(cls_score.shape)}; expected {expected}')
        try:
            check_label_range(label, self.num_classes, ignore_index)
        except ValueError as error:
            raise ValueError(f'{type(self).__name__}: {error}') from None

    def _penalty(self, logits: Tensor, label: Tensor, ignore_index: int,
                 need_grad: bool, need_statistics: bool) -> ConstraintPenalty:
        clip = (self.lambd_min, self.lambd_max) if need_statistics else None
        valid = label != ignore_index
        boundary = self._region_boundary(label)
        reference = self.reference(label, valid, boundary)
        if self.groups == 'logit' and reference is None:
            return constraint_penalty(logits, valid, self.multipliers, self.rho,
                                      self.margin, self.normalize, self.penalty_fn,
                                      need_grad=need_grad, statistics_clip=clip)
        group = group_layout(self.groups, label, valid, self.num_classes,
                             self.region_width, boundary)
        return grouped_constraint_penalty(
            logits, valid, group, self.multipliers, self.rho, self.margin,
            self.normalize, self.penalty_fn, reference, need_grad=need_grad,
            statistics_clip=clip)

    def forward(self,
                cls_score: Tensor,
                label: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None,
                ignore_index: int = 255) -> Tensor:
        """Compute the loss, with mmseg's ``CrossEntropyLoss.forward`` contract
        (:mod:`cals_seg.models.losses.reduction`) for the whole per-pixel loss
        ``base_i + penalty_weight * mean_k P(h_ik)``: the arguments reach the
        base loss as they are, and act on the penalty as mmseg's cross-entropy
        lets them act on its own per-pixel loss.

        Args:
            cls_score (Tensor): logits ``(N, C, H, W)`` (or ``(N, C)``).
            label (Tensor): class indices ``(N, H, W)`` (or ``(N, )``).
            weight (Tensor, optional): per-pixel weights ``(N, H, W)``.
            avg_factor (float, optional): divisor of the 'mean' reduction.
            reduction_override (str, optional): 'none', 'mean' or 'sum'.
            ignore_index (int): label of pixels to ignore. Default: 255.

        Returns:
            Tensor: scalar, or the ``(N, H, W)`` map for ``'none'``.
        """
        self._check_inputs(cls_score, label, ignore_index)
        check_pixel_weight(weight, label)
        valid = label != ignore_index
        reduction = resolve_reduction(label, valid, self.avg_non_ignore, avg_factor,
                                      reduction_override)
        base_args = dict(avg_factor=avg_factor, reduction_override=reduction_override,
                         ignore_index=ignore_index)
        penalty_weight = self.penalty_weight * self.penalty_scale
        collect = self.training and self.collect_round_statistics
        if weight is not None or reduction.mode == 'none':
            if collect:
                self.accumulate_round_statistics(self._penalty(
                    cls_score, label, ignore_index, need_grad=False,
                    need_statistics=True).statistics)
            base = self.base_loss(cls_score, label, weight, **base_args)
            penalty = reduce_pixel_losses(self._penalty_map(cls_score, label, valid),
                                          weight, reduction)
            if base.shape != penalty.shape:
                raise ValueError(
                    f'{type(self).__name__}: with reduction_override='
                    f'{reduction_override!r} the base loss returned shape '
                    f'{tuple(base.shape)}, the penalty {tuple(penalty.shape)}')
            return self.loss_weight * (base + penalty_weight * penalty)
        base_input, need_grad = base_loss_input(cls_score)
        base = self.base_loss(base_input, label, None, **base_args)
        result = self._penalty(cls_score, label, ignore_index, need_grad=need_grad,
                               need_statistics=collect)
        if result.statistics is not None:
            self.accumulate_round_statistics(result.statistics)
        # The penalty functions average the class means over the valid pixels;
        # mmseg's reduction divides their sum by its own divisor.
        rescale = valid.sum().clamp_min(1) / reduction.divisor
        value = result.value * rescale
        if need_grad:
            objective = PenaltyObjective.apply(cls_score, (base_input, base), value,
                                               result.grad_direction,
                                               result.grad_scale * rescale,
                                               penalty_weight)
        else:
            objective = base + penalty_weight * value
        return self.loss_weight * objective

    def _penalty_map(self, logits: Tensor, label: Tensor, valid: Tensor) -> Tensor:
        """``mean_k P(h_ik)`` at every pixel, ``(N, *S)``, by autograd."""
        boundary = self._region_boundary(label)
        reference = self.reference(label, valid, boundary)
        group = group_layout(self.groups, label, valid, self.num_classes,
                             self.region_width, boundary)
        return constraint_penalty_map(
            logits, valid, group, self.multipliers, self.rho, self.margin,
            self.normalize, self.penalty_fn,
            None if reference is None else reference.dense(self.num_classes))

    @torch.no_grad()
    def statistics_from_logits(self, logits: Tensor, label: Tensor,
                               ignore_index: int = 255) -> RoundStatistics:
        """Round statistics of held-out logits at the current multipliers.

        Args:
            logits (Tensor): ``(N, C, *S)``.
            label (Tensor): ``(N, *S)``.
            ignore_index (int): label of pixels to leave out.

        Returns:
            RoundStatistics
        """
        self._check_inputs(logits, label, ignore_index)
        return self._penalty(logits, label, ignore_index, need_grad=False,
                             need_statistics=True).statistics

    def accumulate_round_statistics(self, stats: RoundStatistics):
        """Add ``stats`` to the sums of the current round (this rank only)."""
        self._round_sums = stats if self._round_sums is None else (
            self._round_sums + stats)

    def pop_round_statistics(self) -> RoundStatistics:
        """Return the statistics collected since the last call, and reset them."""
        stats = self._round_sums
        self._round_sums = None
        if stats is None:
            stats = RoundStatistics.zeros(self.num_groups, self.multipliers.device)
        return stats

    def update_entries(self, stats: RoundStatistics) -> Optional[Tensor]:
        """How many entries each group's round means run over; None: its
        members (CRaCLoss offers its authors' update)."""
        return None

    @torch.no_grad()
    def apply_round(self, stats: RoundStatistics):
        """Update ``multipliers``, ``rho`` and ``prev_constraint`` from a round.

        Args:
            stats (RoundStatistics): sums over every batch and rank of the round.
        """
        self.num_rounds += 1
        state = MultiplierState(self.multipliers, self.rho, self.prev_constraint)
        stats = RoundStatistics(*(t.to(self.multipliers.device) for t in stats))
        new_state = update_multipliers(
            stats, state, int(self.num_rounds), lambd_min=self.lambd_min,
            lambd_max=self.lambd_max, rho_max=self.rho_max, gamma=self.gamma,
            tau=self.tau, rho_step=self.rho_step,
            entries=self.update_entries(stats))
        for buffer, value in zip(state, new_state):
            buffer.copy_(value)
