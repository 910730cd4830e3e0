"""The class-adaptive update of the ALM multipliers and penalty parameters."""
import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .cals import RoundStatistics

# Stored as the previous mean constraint of a class that has none yet: no value
# compares greater than it, so the first rho check only records.
NO_PREVIOUS_CONSTRAINT = math.inf


class MultiplierState(NamedTuple):
    """Per-class ALM state; every field is ``[C]``."""
    multipliers: Tensor
    rho: Tensor
    prev_constraint: Tensor


def update_multipliers(stats: RoundStatistics, state: MultiplierState,
                       round_index: int, *, lambd_min: float, lambd_max: float,
                       rho_max: float, gamma: float, tau: float,
                       rho_step: int,
                       entries: Optional[Tensor] = None) -> MultiplierState:
    """One update round of the class-adaptive ALM (Liu et al., CVPR 2023), from
    already all-reduced sums.

    - ``lambd_k <- clip(mean_i clip(P'(h_ik)), lambd_min, lambd_max)``;
    - when ``rho_step > 0`` and ``round_index % rho_step == 0``: ``rho_k <-
      min(gamma rho_k, rho_max)`` for classes whose mean constraint ``c_k`` is above
      ``tau * max(c_prev_k, 0)``;
    - at every round: ``c_prev_k <- c_k`` (the authors' ``update_rho``).

    The means run over each group's members (``stats.count``); a group with
    no member in the round keeps all of its state.

    ``entries`` gives the means ``E_g`` entries per group instead, of which
    the ``E_g - n_g`` that are not members enter with ``h = 0``: with ``P'(0;
    lambd, rho) = lambd`` for every penalty here,
    ``lambd_g <- clip((S_g + (E_g - n_g) lambd_g) / E_g)`` and ``c_g =
    sum h / E_g``. This is the update of CRaC's authors (github.com/Bala93/CRac,
    calibrate/lagrangian/aug_lagrangian_spatial_cls_bndry.py ``update_lambd``,
    ``set_lambd``, ``update_rho``), where each of the ``2C`` groups is a column
    with one entry per pixel of the round: a step of ``n_g / E_g`` from the
    old multiplier towards the members' mean, with the same fixed point. A
    group with no entry keeps its state.

    Args:
        stats (RoundStatistics): summed over every batch and rank of the round.
        state (MultiplierState): current values.
        round_index (int): 1-based number of this round.
        lambd_min, lambd_max, rho_max, gamma, tau, rho_step: the ALM parameters.
        entries (Tensor, optional): ``[G]`` entries of each group's means, at
            least its members; None: its members.

    Returns:
        MultiplierState: new tensors with the dtype and device of ``state``.
    """
    multipliers, rho, prev_constraint = state
    grad_sum = stats.grad_sum
    if entries is None:
        entries = stats.count
    else:
        if bool((entries < stats.count).any()):
            raise ValueError('entries must be at least the number of members of '
                             'each group')
        non_members = (entries - stats.count).to(grad_sum)
        grad_sum = grad_sum + non_members * multipliers.to(grad_sum).clamp(
            lambd_min, lambd_max)
    seen = entries > 0
    count = entries.clamp_min(1)
    new_multipliers = (grad_sum / count).clamp(lambd_min, lambd_max)
    new_multipliers = torch.where(seen, new_multipliers.to(multipliers), multipliers)
    constraint = (stats.constraint_sum / count).to(prev_constraint)
    new_rho = rho
    if rho_step > 0 and round_index % rho_step == 0:
        not_improved = seen & (constraint > tau * prev_constraint.clamp_min(0))
        new_rho = torch.where(not_improved, (rho * gamma).clamp_max(rho_max), rho)
    # Recorded at every round, as the authors' update_rho does: each check
    # compares with the round just before it, not with the previous check.
    new_prev = torch.where(seen, constraint, prev_constraint)
    return MultiplierState(new_multipliers, new_rho, new_prev)
