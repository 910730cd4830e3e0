"""The class-adaptive update of the ALM multipliers and penalty parameters."""
import math
from typing import NamedTuple

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
                       rho_step: int) -> MultiplierState:
    """One update round of the class-adaptive ALM (Liu et al., CVPR 2023), from
    already all-reduced sums.

    - ``lambd_k <- clip(mean_i clip(P'(h_ik)), lambd_min, lambd_max)``;
    - when ``rho_step > 0`` and ``round_index % rho_step == 0``: ``rho_k <-
      min(gamma rho_k, rho_max)`` for classes whose mean constraint ``c_k`` is above
      ``tau * max(c_prev_k, 0)``;
    - at every round: ``c_prev_k <- c_k`` (the authors' ``update_rho``).

    A class with no pixel in the round keeps all of its state.

    Args:
        stats (RoundStatistics): summed over every batch and rank of the round.
        state (MultiplierState): current values.
        round_index (int): 1-based number of this round.
        lambd_min, lambd_max, rho_max, gamma, tau, rho_step: the ALM parameters.

    Returns:
        MultiplierState: new tensors with the dtype and device of ``state``.
    """
    multipliers, rho, prev_constraint = state
    seen = stats.count > 0
    count = stats.count.clamp_min(1)
    new_multipliers = (stats.grad_sum / count).clamp(lambd_min, lambd_max)
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
