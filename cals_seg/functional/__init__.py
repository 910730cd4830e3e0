"""The maths of cals-seg as pure functions over tensors.

Imports torch and numpy only (never mmengine, mmcv or mmseg), so it runs, and is
tested, without the OpenMMLab stack. Where each method lives:

- penalty-Lagrangian functions P, P' (PHR, P2, P3): :mod:`.penalties`
- CALS: the logit-distance constraints, their penalty, gradient and round
  statistics (also with grouped multipliers and neighbourhood targets, which
  CRaC uses): :mod:`.cals`; the multiplier and rho update: :mod:`.multipliers`;
  multiplier groupings: :mod:`.groups`
- CRaC's targets: :mod:`.crac`; NACL's penalty: :mod:`.nacl`; SVLS's soft-label
  term: :mod:`.svls`; the label proportions and boundary masks they share:
  :mod:`.neighbourhood`
- calibration statistics and errors (ECE, MCE, AECE, CECE, NLL, Brier,
  selective risk): :mod:`.calibration`
"""
from .calibration import (CalibrationStatistics, calibration_errors,
                          calibration_statistics, selective_risk)
from .cals import (ConstraintPenalty, RoundStatistics, constraint_penalty,
                   grouped_constraint_penalty)
from .crac import crac_targets
from .groups import GroupLayout, group_layout
from .multipliers import MultiplierState, update_multipliers
from .nacl import neighbourhood_deviation
from .neighbourhood import (ScaledProportions, boundary_mask, kernel_weights,
                            neighbourhood_proportions)
from .penalties import get_penalty, p2, p3, phr
from .svls import soft_label_shift

__all__ = [
    'CalibrationStatistics', 'ConstraintPenalty', 'GroupLayout', 'MultiplierState',
    'RoundStatistics', 'ScaledProportions', 'boundary_mask',
    'calibration_errors', 'calibration_statistics', 'constraint_penalty',
    'crac_targets', 'get_penalty', 'group_layout', 'grouped_constraint_penalty',
    'kernel_weights', 'neighbourhood_deviation', 'neighbourhood_proportions', 'p2',
    'p3', 'phr', 'selective_risk', 'soft_label_shift', 'update_multipliers'
]
