"""SVLS: spatially varying label smoothing (Islam and Glocker, "Spatially Varying
Label Smoothing: Capturing Uncertainty from Expert Annotations", IPMI 2021)."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mmseg.registry import MODELS

from ...functional.labels import check_label_range
from ...functional.neighbourhood import ScaledProportions, kernel_weights
from ...functional.svls import soft_label_shift
from .penalty_objective import PenaltyObjective
from .pixelwise import PixelwiseLoss


@MODELS.register_module()
class SVLSLoss(PixelwiseLoss):
    """Cross-entropy against soft targets from the labels around each pixel.

    Per pixel: ``-sum_k q_ik log p_ik`` with ``q`` the labels filtered by SVLS's
    kernel, a ``k x k`` gaussian whose centre weight is the sum of the others
    (the pixel's own label keeps half the mass), normalised. Inside a region the
    target is the one-hot label; near a boundary it mixes the classes around.
    Defaults are the authors' as packaged in github.com/Bala93/MarginLoss
    (configs/loss/svls.yaml, calibrate/losses/utils.py ``CELossWithSVLS_2D``):
    3 x 3, sigma 1.

    Where ours differs, and why: the authors pad the one-hot labels by
    replicating the border and have no ignore label; ours leaves ignored and
    beyond-border pixels out and renormalises the kernel over the remaining
    ones (:mod:`cals_seg.functional.neighbourhood`). Reduction as mmseg's
    cross-entropy: the mean over all pixels, or over the valid ones with
    ``avg_non_ignore``; a sampler's pixel weights multiply each pixel's loss.

    Computed as PyTorch's hard-label cross-entropy plus ``sum_k (onehot_ik -
    q_ik) z_ik`` (:func:`cals_seg.functional.svls.soft_label_shift`), the
    same loss and gradient, since ``q`` sums to 1: on CPU in one fused pass,
    elsewhere with ``q`` formed only at pixels near another label. The loss
    costs little more than cross-entropy.

    Args:
        kernel_size (int): odd window size. Default: 3.
        sigma (float): the gaussian's standard deviation. Default: 1.
        avg_non_ignore (bool): average over non-ignored pixels only.
        loss_weight (float): weight of the loss. Default: 1.0.
        loss_name (str): key in mmseg's loss dict. Default: 'loss_svls'.
    """

    def __init__(self, kernel_size: int = 3, sigma: float = 1.0,
                 avg_non_ignore: bool = False, loss_weight: float = 1.0,
                 loss_name: str = 'loss_svls'):
        super().__init__(avg_non_ignore, loss_weight, loss_name)
        self.weights = kernel_weights('svls', kernel_size, sigma)

    def forward(self, cls_score: Tensor, label: Tensor,
                weight: Optional[Tensor] = None, ignore_index: int = 255,
                **kwargs) -> Tensor:
        """Args: logits ``(N, C, H, W)``, labels ``(N, H, W)``, as every mmseg loss.

        Returns:
            Tensor: scalar loss.
        """
        num_classes = cls_score.shape[1]
        check_label_range(label, num_classes, ignore_index)
        valid = label != ignore_index
        denominator = self.denominator(label, valid)
        need_grad = cls_score.requires_grad and torch.is_grad_enabled()
        base_input = cls_score.detach().requires_grad_() if need_grad else cls_score
        hard = F.cross_entropy(base_input.float(), label, ignore_index=ignore_index,
                               reduction='sum' if weight is None else 'none')
        if weight is not None:
            hard = (hard * weight).sum()
        hard = hard / denominator
        total, direction = soft_label_shift(
            cls_score.detach(), ScaledProportions(label, valid, self.weights), weight)
        correction = (total / denominator).float()
        if not need_grad:
            return self.loss_weight * (hard + correction)
        objective = PenaltyObjective.apply(cls_score, (base_input, hard), correction,
                                           direction, torch.tensor(1.0 / denominator),
                                           1.0)
        return self.loss_weight * objective
