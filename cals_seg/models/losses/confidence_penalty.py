"""Confidence penalty (ECP): cross-entropy minus a weighted entropy."""
from typing import Optional, Union

import torch.nn.functional as F
from torch import Tensor

from mmseg.registry import MODELS

from .pixelwise import PixelwiseLoss


@MODELS.register_module()
class ConfidencePenaltyLoss(PixelwiseLoss):
    """Per pixel: ``-log p_y - beta * H(p)``, ``H(p) = -sum_k p_k log p_k``.

    Penalises low-entropy (over-confident) predictions; Pereyra et al.,
    "Regularizing Neural Networks by Penalizing Confident Output Distributions",
    ICLR 2017 workshop. Default ``beta=0.1``, the weight the MbLS/CALS papers'
    ECP baseline uses.

    Args:
        beta (float): weight of the entropy ``>= 0``. Default: 0.1.
        avg_non_ignore (bool), loss_weight (float), loss_name (str),
            class_weight (list[float] | str, optional): see
            :class:`PixelwiseLoss`; a class weight multiplies the whole loss
            of a pixel of that class.
    """

    def __init__(self, beta: float = 0.1, avg_non_ignore: bool = False,
                 loss_weight: float = 1.0, loss_name: str = 'loss_ecp',
                 class_weight: Optional[Union[list, str]] = None):
        super().__init__(avg_non_ignore, loss_weight, loss_name, class_weight)
        if beta < 0:
            raise ValueError(f'beta must be >= 0, got {beta}')
        self.beta = beta

    def pixel_loss(self, logits: Tensor, label: Tensor) -> Tensor:
        log_prob = F.log_softmax(logits, dim=1)
        entropy = -(log_prob.exp() * log_prob).sum(dim=1)
        true = log_prob.gather(1, label.unsqueeze(1)).squeeze(1)
        return -true - self.beta * entropy
