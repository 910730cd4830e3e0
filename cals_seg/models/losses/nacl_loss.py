"""NACL: neighbour-aware calibration loss (Murugesan et al., "Trust your
neighbours: penalty-based constraints for model calibration", MICCAI 2023)."""
from typing import Optional, Union

import torch
from torch import Tensor

from mmseg.registry import MODELS

from ...functional.neighbourhood import ScaledProportions, kernel_weights
from ...functional.nacl import neighbourhood_deviation
from .penalty_objective import PenaltyObjective, base_loss_input
from .pixelwise import PixelwiseLoss
from .reduction import reduce_pixel_losses


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
    - **mmseg's contract** (:mod:`.reduction`): the per-pixel loss is
      ``CE_i + alpha * mean_k |tau_ik - z_ik|``; ``weight``, ``avg_factor``,
      ``reduction_override`` and ``avg_non_ignore`` act on all of it, as
      mmseg's cross-entropy acts on its own; ``class_weight`` weighs the
      cross-entropy term (it configures mmseg's ``CrossEntropyLoss``).
    - **No image kernels.** The authors' 'bilateral' and image-proportion
      kernels read the image, which an mmseg loss does not receive; 'mean' and
      'svls' are the label-only ones. The authors' ``kernel_ops='gaussian'``
      is not a gaussian: it is the SVLS filter (centre weight 1/2,
      calibrate/losses/utils.py ``get_svls_filter_2d``), which is ours with
      ``kernel='svls'`` (up to the border: they replicate it, ours leaves it
      out); asking for 'gaussian' is an error that says so.
    - **One gradient pass.** The penalty's gradient ``alpha sign(z - tau) /
      (C n)`` is formed in the forward pass and added into the cross-entropy's
      (:class:`PenaltyObjective`); on CPU one fused kernel forms the targets
      block by block, reads the logits once and writes the sign once. With a
      per-pixel ``weight`` or ``reduction_override='none'`` the targets are
      formed densely and autograd differentiates the map.

    Args:
        alpha (float): weight of the neighbourhood term. Default: 0.1.
        kernel_size (int): odd window size. Default: 3.
        kernel (str): 'mean' or 'svls'. Default: 'mean'.
        sigma (float): the standard deviation of the 'svls' kernel. Default: 1.
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
        if kernel == 'gaussian':
            raise ValueError(
                "NACLLoss kernel='gaussian': the authors' kernel_ops='gaussian' "
                '(Bala93/MarginLoss) is the SVLS filter, centre weight 1/2; use '
                "kernel='svls' for it")
        if kernel not in ('mean', 'svls'):
            raise ValueError(f"NACLLoss kernel must be 'mean' or 'svls', got "
                             f'{kernel!r}')
        if alpha < 0:
            raise ValueError(f'alpha must be >= 0, got {alpha}')
        self.alpha = alpha
        self.weights = kernel_weights(kernel, kernel_size, sigma)
        self.base_loss = MODELS.build(
            dict(type='CrossEntropyLoss', class_weight=class_weight,
                 avg_non_ignore=avg_non_ignore, loss_weight=1.0))

    def forward(self, cls_score: Tensor, label: Tensor,
                weight: Optional[Tensor] = None, avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None,
                ignore_index: int = 255) -> Tensor:
        """Args: as :meth:`PixelwiseLoss.forward`; logits ``(N, C, H, W)``.

        Returns:
            Tensor: scalar, or the ``(N, H, W)`` map for ``'none'``.
        """
        num_classes = cls_score.shape[1]
        # No class weight of its own (the base cross-entropy holds it): the
        # pixel weight is the sampler's ``weight``.
        valid, reduction, pixel_weight = self.prepare(
            cls_score, label, weight, avg_factor, reduction_override, ignore_index)
        targets = ScaledProportions(label, valid, self.weights)
        base_args = dict(avg_factor=avg_factor, reduction_override=reduction_override,
                         ignore_index=ignore_index)
        if weight is not None or reduction.mode == 'none':
            base = self.base_loss(cls_score, label, weight, **base_args)
            deviation = (cls_score.float() - targets.dense(num_classes)).abs()
            deviation = deviation.mean(dim=1).where(valid, 0)
            penalty = reduce_pixel_losses(deviation, pixel_weight, reduction)
            return self.loss_weight * (base + self.alpha * penalty)
        base_input, need_grad = base_loss_input(cls_score)
        base = self.base_loss(base_input, label, None, **base_args)
        denominator = reduction.divisor * num_classes
        total, direction = neighbourhood_deviation(cls_score.detach(), targets)
        penalty = (total / denominator).float()
        if not need_grad:
            return self.loss_weight * (base + self.alpha * penalty)
        objective = PenaltyObjective.apply(cls_score, (base_input, base), penalty,
                                           direction,
                                           1.0 / torch.as_tensor(denominator),
                                           self.alpha)
        return self.loss_weight * objective
