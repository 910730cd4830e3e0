"""The constraint penalty of CALS and CRaC as a per-pixel map, for mmseg's
``reduction='none'`` and per-pixel loss weights.

:func:`cals_seg.functional.cals.constraint_penalty` and its grouped variant
return the penalty summed over the batch, with a gradient they form
themselves. A per-pixel weight, or a loss returned per pixel, needs the
penalty of each pixel instead: the mean over classes of ``P(h_ik)``, whose sum
over valid pixels divided by their number is those functions' value. Formed
here with PyTorch operations that autograd differentiates (the gradient of
``amax`` splits the winner's share among tied winners, as theirs does).
"""
from typing import Optional

from torch import Tensor

from .groups import GroupLayout
from .penalties import PenaltyFunction


def constraint_penalty_map(logits: Tensor, valid: Tensor, group: GroupLayout,
                           multipliers: Tensor, rho: Tensor, margin: float,
                           normalize: bool, penalty: PenaltyFunction,
                           reference: Optional[Tensor] = None) -> Tensor:
    """``mean_k P(h_ik; lambd_g, rho_g)`` at every pixel, 0 where not valid.

    Args:
        logits (Tensor): ``(N, C, *S)``, any float dtype (computed in float32).
        valid (Tensor): bool ``(N, *S)``.
        group (GroupLayout): the multiplier of each (pixel, logit).
        multipliers (Tensor), rho (Tensor): ``[G]``, constants.
        margin (float), normalize (bool), penalty: as
            :func:`cals_seg.functional.cals.constraint_penalty`.
        reference (Tensor, optional): CRaC's targets ``r``, shaped like the
            logits; None for CALS's distances ``max_j z_j - z_k - m``.

    Returns:
        Tensor: ``(N, *S)`` float32, differentiable with respect to ``logits``.
    """
    mask = valid.unsqueeze(1)
    # Zero logits at ignored pixels keep their (masked) penalty and its
    # gradient finite whatever the logits there are.
    logits = logits.float().where(mask, 0)
    scale = margin if normalize else 1.0
    if reference is None:
        h = (logits.amax(dim=1, keepdim=True) - logits - margin) / scale
    else:
        h = (reference.float() - logits).abs() / scale
    # Each pixel's row of the per-group tables, (N, C or 1, *S) after the move.
    rows = group.rows()
    value, _ = penalty(h, group.table(multipliers.float())[rows].movedim(-1, 1),
                       group.table(rho.float())[rows].movedim(-1, 1))
    return value.where(mask, 0).mean(dim=1)
