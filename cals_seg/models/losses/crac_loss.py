"""CRaC: class and region-adaptive constraints (Murugesan et al., "Class and
Region-Adaptive Constraints for Network Calibration", MICCAI 2024)."""
from typing import Optional

from torch import Tensor

from mmseg.registry import MODELS

from ...functional.cals import RoundStatistics
from ...functional.crac import crac_targets
from ...functional.neighbourhood import ScaledProportions, kernel_weights
from .cals_loss import CALSLoss


@MODELS.register_module()
class CRaCLoss(CALSLoss):
    """Cross-entropy plus an Augmented-Lagrangian penalty on ``h_ik = |r_ik -
    z_ik|``, with one multiplier per class inside regions and one per class at
    boundaries.

    ``r_ik = s_i tau_ik``: ``tau`` the share of class ``k`` among the pixel's
    3 x 3 labelled neighbours, ``s_i`` the margin inside regions and 1 at
    boundaries (pixels whose window holds another label). The multipliers and
    penalty parameters are updated between rounds exactly as CALS's, by
    :class:`~cals_seg.engine.hooks.CALSMultiplierHook`. Defaults are the authors'
    settings (github.com/Bala93/CRac): their README's training commands set
    margin 5 and rho 0.1 over configs/lag/spatial_bndry_cls_aug_lag.yaml and
    calibrate/lagrangian/aug_lagrangian_spatial_cls_bndry.py, which give PHR,
    no normalisation, lambda in [1e-6, 1e6], rho at most 10, gamma 1.2, tau
    0.9, rho checked every 10 rounds, 2C multipliers. (That yaml's own margin,
    1, is overridden by every command: with it an interior pixel's target
    logits are one-hot of height 1, a softmax confidence of e / (e + C - 1).)

    Where ours differs, and why:

    - **Which pixels are boundary pixels.** The authors' test,
      ``sum_j (mean - u_j) != 0`` over the zero-padded unfolded window, is
      zero in exact arithmetic for every window (deviations from a mean sum
      to zero); what it marks is decided by float32 rounding. On CPU it marks
      no constant window and most, not all, mixed windows: 81-87 % of the
      mixed 3 x 3 windows of blocky label maps with 4, 19 and 21 classes, 97 %
      with 2 classes. Ours marks a pixel as boundary exactly when its window
      holds another label, which is what the paper describes; the ignore
      label counts as one, because VOC's and Cityscapes' ignored pixels trace
      object outlines (on our demo data, with ignored pixels as nobody's
      neighbours, a 3 x 3 window finds no boundary pixel at all).
    - **Penalty normalisation** (``penalty_normalization``). The authors
      average ``P`` over ``2C`` entries per pixel, the interior and boundary
      copies of each class, of which the ``C`` non-member ones have ``h = 0``
      and ``P(0) = 0``: half of the mean over the ``C`` classes. Ours
      ('classes') is the mean over the ``C`` classes, as CALS's; 'authors'
      halves it, which is the same as halving ``penalty_weight``.
    - **Multiplier update** (``multiplier_update``). The authors average
      ``clip(P')`` and ``h`` over every pixel of the round in each of the
      ``2C`` columns, members or not; non-members enter with ``h = 0``, that
      is with ``P'(0) = lambd_old``. So their multiplier moves from the old
      value towards the members' mean by the group's share of pixels, a
      damped version of ours with the same fixed point (and their mean
      constraint, which decides rho, is scaled by that share). Ours
      ('members') averages over the group's members, as CALS averages over a
      class's pixels; 'authors' is theirs
      (:func:`cals_seg.functional.multipliers.update_multipliers`, ``entries``:
      every valid pixel of the round, which the per-group counts give).
    - **Neighbours of the proportions:** ignored and beyond-border pixels are
      not counted (theirs pads with class 0), and ignored pixels get no penalty
      and give no statistics.
    - **Where the multipliers come from:** the authors update them from an
      evaluation pass over their validation set once per epoch; the shipped
      configs use the held-out part of the training split, as for CALS, so
      the reported split stays unseen.

    Args:
        num_classes (int): ``C``.
        margin (float): the interior scale ``s``. Default: 5.
        rho_init (float): initial penalty parameter. Default: 0.1.
        groups (str): multiplier grouping. Default: 'region' (CRaC's).
        region_width (int): half-width of the boundary window. Default: 1.
        kernel_size (int): window of the label proportions. Default: 3.
        penalty_normalization (str): 'classes' (mean over the ``C`` classes)
            or 'authors' (over ``2C`` entries: half of it). Default: 'classes'.
        multiplier_update (str): 'members' (means over each group's members)
            or 'authors' (over every pixel, non-members at ``h = 0``; needs
            ``groups='region'``). Default: 'members'.
        loss_name (str): Default: 'loss_crac'.
        **kwargs: the other arguments of :class:`CALSLoss` (penalty, lambda,
            rho and base-loss settings); ``normalize`` defaults to False.
    """

    PENALTY_NORMALIZATIONS = {'classes': 1.0, 'authors': 0.5}
    MULTIPLIER_UPDATES = ('members', 'authors')

    def __init__(self, num_classes: int, margin: float = 5.0, rho_init: float = 0.1,
                 groups: str = 'region', region_width: int = 1, kernel_size: int = 3,
                 normalize: bool = False, penalty_normalization: str = 'classes',
                 multiplier_update: str = 'members', loss_name: str = 'loss_crac',
                 **kwargs):
        super().__init__(num_classes, margin=margin, rho_init=rho_init, groups=groups,
                         region_width=region_width, normalize=normalize,
                         loss_name=loss_name, **kwargs)
        if penalty_normalization not in self.PENALTY_NORMALIZATIONS:
            raise ValueError('penalty_normalization must be one of '
                             f'{tuple(self.PENALTY_NORMALIZATIONS)}, got '
                             f'{penalty_normalization!r}')
        if multiplier_update not in self.MULTIPLIER_UPDATES:
            raise ValueError(f'multiplier_update must be one of '
                             f'{self.MULTIPLIER_UPDATES}, got {multiplier_update!r}')
        if multiplier_update == 'authors' and groups != 'region':
            raise ValueError("multiplier_update='authors' is defined for "
                             f"groups='region' (CRaC's), got groups={groups!r}")
        self.penalty_normalization = penalty_normalization
        self.penalty_scale = self.PENALTY_NORMALIZATIONS[penalty_normalization]
        self.multiplier_update = multiplier_update
        self.kernel = kernel_weights('mean', kernel_size)

    def reference(self, label: Tensor, valid: Tensor,
                  boundary: Optional[Tensor] = None) -> ScaledProportions:
        return crac_targets(label, valid, self.kernel, self.margin, self.region_width,
                            boundary)

    def update_entries(self, stats: RoundStatistics) -> Optional[Tensor]:
        """Under 'authors', every group's means run over all pixels of the
        round: each pixel has one (pixel, logit k) pair in either group ``k``
        (interior) or ``C + k`` (boundary), so their counts add up to it."""
        if self.multiplier_update != 'authors':
            return None
        c = self.num_classes
        pixels = stats.count[:c] + stats.count[c:]
        return pixels.repeat(2)
