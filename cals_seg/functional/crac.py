"""CRaC's constraint targets (Murugesan et al., "Class and Region-Adaptive
Constraints for Network Calibration", MICCAI 2024).

CRaC constrains ``h_ik = |r_ik - z_ik|`` with ``r_ik = s_i tau_ik``: ``tau`` the
label proportions of the pixel's window (:mod:`cals_seg.functional.neighbourhood`),
``s_i`` the margin inside regions and 1 at boundary pixels; its multipliers are
grouped by class and region (``groups='region'``, :mod:`cals_seg.functional.groups`),
and its penalty, statistics and update are CALS's (:mod:`cals_seg.functional.cals`,
:mod:`cals_seg.functional.multipliers`).
"""
from typing import Optional

import torch
from torch import Tensor

from .neighbourhood import ScaledProportions, boundary_mask


def crac_targets(label: Tensor, valid: Tensor, window: Tensor, margin: float,
                 region_width: int = 1,
                 boundary: Optional[Tensor] = None) -> ScaledProportions:
    """The targets ``r = s * tau`` of a batch, described for the kernels.

    Args:
        label (Tensor): ``(N, H, W)`` classes.
        valid (Tensor): ``(N, H, W)`` bool.
        window (Tensor): ``(k, k)`` weights of the label proportions.
        margin (float): the interior scale ``s``.
        region_width (int): half-width of the window that decides whether a
            pixel is on a boundary (another label, the ignore label included).
        boundary (Tensor, optional): ``boundary_mask(label, region_width)``
            where the caller has it already (the 'region' grouping reads it too).

    Returns:
        ScaledProportions: with scale 1 at boundary pixels and ``margin``
        elsewhere.
    """
    if boundary is None:
        boundary = boundary_mask(label, region_width)
    return ScaledProportions(label, valid, window, torch.where(boundary, 1.0, margin))
