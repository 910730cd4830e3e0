"""Softmax focal loss (FL) for calibration."""
from typing import Optional, Union

import torch.nn.functional as F
from torch import Tensor

from mmseg.registry import MODELS

from .pixelwise import PixelwiseLoss


@MODELS.register_module()
class SoftmaxFocalLoss(PixelwiseLoss):
    """Focal loss on the softmax: ``-(1 - p_y)^gamma log p_y`` per pixel.

    mmseg's own ``FocalLoss`` is the sigmoid (detection) form; this is the
    multi-class form used for calibration. The default ``gamma=3`` is the fixed
    value Mukhoti et al., "Calibrating Deep Neural Networks using Focal Loss",
    NeurIPS 2020, recommend, and the one the MbLS/CALS papers compare against.

    Args:
        gamma (float): focusing parameter ``>= 0``; 0 is cross-entropy.
            Default: 3.0.
        avg_non_ignore (bool), loss_weight (float), loss_name (str),
            class_weight (list[float] | str, optional): see
            :class:`PixelwiseLoss`; a class weight multiplies the whole loss
            of a pixel of that class.
    """

    def __init__(self, gamma: float = 3.0, avg_non_ignore: bool = False,
                 loss_weight: float = 1.0, loss_name: str = 'loss_focal',
                 class_weight: Optional[Union[list, str]] = None):
        super().__init__(avg_non_ignore, loss_weight, loss_name, class_weight)
        if gamma < 0:
            raise ValueError(f'gamma must be >= 0, got {gamma}')
        self.gamma = gamma

    def pixel_loss(self, logits: Tensor, label: Tensor) -> Tensor:
        log_prob = F.log_softmax(logits, dim=1).gather(
            1, label.unsqueeze(1)).squeeze(1)
        return -(1 - log_prob.exp()).pow(self.gamma) * log_prob
