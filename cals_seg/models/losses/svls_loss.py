"""SVLS: spatially varying label smoothing (Islam and Glocker, "Spatially Varying
Label Smoothing: Capturing Uncertainty from Expert Annotations", IPMI 2021)."""
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from mmseg.registry import MODELS

from ...functional.neighbourhood import ScaledProportions, kernel_weights
from ...functional.svls import soft_label_shift
from .penalty_objective import PenaltyObjective, base_loss_input
from .pixelwise import PixelwiseLoss
from .reduction import reduce_pixel_losses


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
    ones (:mod:`cals_seg.functional.neighbourhood`). The reduction and the
    arguments of ``forward`` are mmseg's cross-entropy's (:mod:`.reduction`):
    ``weight`` and ``class_weight[y_i]`` multiply each pixel's loss.

    Computed as PyTorch's hard-label cross-entropy plus ``sum_k (onehot_ik -
    q_ik) z_ik`` (:func:`cals_seg.functional.svls.soft_label_shift`), the
    same loss and gradient, since ``q`` sums to 1: on CPU in one fused pass,
    elsewhere with ``q`` formed densely and turned into the gradient in place
    (no host synchronisation). The loss costs little more than cross-entropy.
    ``reduction_override='none'`` forms the per-pixel map with ``q`` dense and
    autograd.

    Args:
        kernel_size (int): odd window size. Default: 3.
        sigma (float): the gaussian's standard deviation. Default: 1.
        avg_non_ignore (bool): average over non-ignored pixels only.
        loss_weight (float): weight of the loss. Default: 1.0.
        loss_name (str): key in mmseg's loss dict. Default: 'loss_svls'.
        class_weight (list[float] | str, optional): per-class weights of the
            pixels (mmseg's ``get_class_weight``). Default: None.
    """

    def __init__(self, kernel_size: int = 3, sigma: float = 1.0,
                 avg_non_ignore: bool = False, loss_weight: float = 1.0,
                 loss_name: str = 'loss_svls',
                 class_weight: Optional[Union[list, str]] = None):
        super().__init__(avg_non_ignore, loss_weight, loss_name, class_weight)
        self.weights = kernel_weights('svls', kernel_size, sigma)

    def forward(self, cls_score: Tensor, label: Tensor,
                weight: Optional[Tensor] = None, avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None,
                ignore_index: int = 255) -> Tensor:
        """Args: as :meth:`PixelwiseLoss.forward`; logits ``(N, C, H, W)``.

        Returns:
            Tensor: scalar, or the ``(N, H, W)`` map for ``'none'``.
        """
        num_classes = cls_score.shape[1]
        valid, reduction, pixel_weight = self.prepare(
            cls_score, label, weight, avg_factor, reduction_override, ignore_index)
        targets = ScaledProportions(label, valid, self.weights)
        if reduction.mode == 'none':
            soft = targets.dense(num_classes)
            per_pixel = -(soft * F.log_softmax(cls_score.float(), dim=1)).sum(dim=1)
            return self.loss_weight * reduce_pixel_losses(per_pixel, pixel_weight,
                                                          reduction)
        base_input, need_grad = base_loss_input(cls_score)
        hard = F.cross_entropy(base_input.float(), label, ignore_index=ignore_index,
                               reduction='sum' if pixel_weight is None else 'none')
        if pixel_weight is not None:
            hard = (hard * pixel_weight).sum()
        hard = hard / reduction.divisor
        total, direction = soft_label_shift(cls_score.detach(), targets, pixel_weight)
        correction = (total / reduction.divisor).float()
        if not need_grad:
            return self.loss_weight * (hard + correction)
        objective = PenaltyObjective.apply(
            cls_score, (base_input, hard), correction, direction,
            1.0 / torch.as_tensor(reduction.divisor), 1.0)
        return self.loss_weight * objective
