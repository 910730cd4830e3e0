"""CRaC: class and region-adaptive constraints (Murugesan et al., "Class and
Region-Adaptive Constraints for Network Calibration", MICCAI 2024)."""
from torch import Tensor

from mmseg.registry import MODELS

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
      ``sum_j (mean - u_j) != 0`` over the unfolded window, is zero for every
      window up to rounding (the deviations from a mean sum to zero), so nearly
      every pixel falls in the interior group. Ours marks a pixel as boundary
      when its window holds another label, which is what the paper describes;
      the ignore label counts as one, because VOC's and Cityscapes' ignored
      pixels trace object outlines (on our demo data, with ignored pixels as
      nobody's neighbours, a 3 x 3 window finds no boundary pixel at all).
    - **Means over each group's members.** The authors' multiplier update
      averages ``clip(P')`` over all pixels, members or not (non-members enter
      with ``h = 0``), so a group's multiplier shrinks with its share of
      pixels. Ours averages over the group's (pixel, logit) pairs, as CALS
      averages over a class's pixels; the penalty is still the mean over all
      valid pixels and classes.
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
        loss_name (str): Default: 'loss_crac'.
        **kwargs: the other arguments of :class:`CALSLoss` (penalty, lambda,
            rho and base-loss settings); ``normalize`` defaults to False.
    """

    def __init__(self, num_classes: int, margin: float = 5.0, rho_init: float = 0.1,
                 groups: str = 'region', region_width: int = 1, kernel_size: int = 3,
                 normalize: bool = False, loss_name: str = 'loss_crac', **kwargs):
        super().__init__(num_classes, margin=margin, rho_init=rho_init, groups=groups,
                         region_width=region_width, normalize=normalize,
                         loss_name=loss_name, **kwargs)
        self.kernel = kernel_weights('mean', kernel_size)

    def reference(self, label: Tensor, valid: Tensor) -> ScaledProportions:
        return crac_targets(label, valid, self.kernel, self.margin, self.region_width)
