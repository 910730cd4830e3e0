"""NACL: neighbour-aware calibration loss (Murugesan et al., "Trust your
neighbours: penalty-based constraints for model calibration", MICCAI 2023)."""
from typing import Optional, Union

import torch
from torch import Tensor

from mmseg.registry import MODELS

from ...functional.labels import check_label_range
from ...functional.neighbourhood import ScaledProportions, kernel_weights
from ...functional.nacl import neighbourhood_deviation
from .penalty_objective import PenaltyObjective
from .pixelwise import PixelwiseLoss


@MODELS.register_module()
class NACLLoss(PixelwiseLoss):
    """Cross-entropy plus ``alpha * |tau - z|``: each logit is pulled towards the
    share of its class in the pixel's labelled neighbourhood.

    ``loss = CE + alpha * sum_{i valid, k} |tau_ik - z_ik| / (C * n)`` with ``n``
    the cross-entropy's denominator (all pixels, or the valid ones with
    ``avg_non_ignore``): the authors' ``CE + alpha * |tau - z|.mean()``.
    Defaults are the authors' (github.com/Bala93/MarginLoss, configs/loss/
    adaptive_margin_svls.yaml and calibrate/losses/spatial_adaptive_margin.py):
    3 x 3 window, mean kernel, L1 distance on the logits, alpha 0.1.

    Where ours differs, and why:

    - **Ignored and border pixels are not neighbours.** The authors unfold the
      label map with zero padding, so beyond the border every neighbour is class
      0, and they have no ignore label. Ours normalises by the valid neighbours
      (:mod:`cals_seg.functional.neighbourhood`), and ignored pixels get no penalty.
    - **mmseg's reduction** (``avg_non_ignore``, class weights); a sampler's
      pixel weights weigh the cross-entropy only, as in CALSLoss.
    - **No image kernels.** The authors' 'bilateral' and image-proportion
      kernels read the image, which an mmseg loss does not receive; 'mean' and
      'gaussian' are the label-only ones.
    - **One gradient pass.** The penalty's gradient ``alpha sign(z - tau) /
      (C n)`` is formed in the forward pass and added into the cross-entropy's
      (:class:`PenaltyObjective`); on CPU one fused kernel forms the targets
      block by block, reads the logits once and writes the sign once.

    Args:
        alpha (float): weight of the neighbourhood term. Default: 0.1.
        kernel_size (int): odd window size. Default: 3.
        kernel (str): 'mean' or 'gaussian'. Default: 'mean'.
        sigma (float): the gaussian's standard deviation. Default: 1.
        class_weight (list[float] | str, optional), avg_non_ignore (bool): of
            the cross-entropy, mmseg semantics.
        loss_weight (float): weight of the whole loss. Default: 1.0.
        loss_name (str): key in mmseg's loss dict. Default: 'loss_nacl'.
    """

    def __init__(self, alpha: float = 0.1, kernel_size: int = 3, kernel: str = 'mean',
                 sigma: float = 1.0, class_weight: Optional[Union[list, str]] = None,
                 avg_non_ignore: bool = False, loss_weight: float = 1.0,
                 loss_name: str = 'loss_nacl'):
        super().__init__(avg_non_ignore, loss_weight, loss_name)
        if kernel not in ('mean', 'gaussian'):
            raise ValueError(f"NACLLoss kernel must be 'mean' or 'gaussian', got "
                             f'{kernel!r}')
        if alpha < 0:
            raise ValueError(f'alpha must be >= 0, got {alpha}')
        self.alpha = alpha
        self.weights = kernel_weights(kernel, kernel_size, sigma)
        self.base_loss = MODELS.build(
            dict(type='CrossEntropyLoss', class_weight=class_weight,
                 avg_non_ignore=avg_non_ignore, loss_weight=1.0))

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
        need_grad = cls_score.requires_grad and torch.is_grad_enabled()
        base_input = cls_score.detach().requires_grad_() if need_grad else cls_score
        base = self.base_loss(base_input, label, weight, ignore_index=ignore_index,
                              **kwargs)
        denominator = self.denominator(label, valid) * num_classes
        targets = ScaledProportions(label, valid, self.weights)
        total, direction = neighbourhood_deviation(cls_score.detach(), targets)
        penalty = (total / denominator).float()
        if not need_grad:
            return self.loss_weight * (base + self.alpha * penalty)
        objective = PenaltyObjective.apply(cls_score, (base_input, base), penalty,
                                           direction,
                                           torch.tensor(1.0 / denominator),
                                           self.alpha)
        return self.loss_weight * objective
