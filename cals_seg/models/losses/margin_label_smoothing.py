"""Margin-based label smoothing (MbLS)."""
from typing import Optional, Union

import torch.nn.functional as F
from torch import Tensor

from mmseg.registry import MODELS

from .pixelwise import PixelwiseLoss


@MODELS.register_module()
class MarginLabelSmoothingLoss(PixelwiseLoss):
    """Cross-entropy plus a fixed-weight hinge on logit distances.

    Per pixel: ``CE + lambd * mean_k max(0, max_j z_j - z_k - margin)``: the
    inequality CALS enforces with learned per-class multipliers, here with one
    hand-set weight. Defaults ``margin=10`` and ``lambd=0.1`` are those of Liu et
    al., "The Devil is in the Margin: Margin-based Label Smoothing for Network
    Calibration", CVPR 2022.

    Args:
        margin (float): margin ``m > 0``. Default: 10.
        lambd (float): weight of the hinge ``>= 0``. Default: 0.1.
        avg_non_ignore (bool), loss_weight (float), loss_name (str),
            class_weight (list[float] | str, optional): see
            :class:`PixelwiseLoss`; a class weight multiplies the whole loss
            of a pixel of that class.
    """

    def __init__(self, margin: float = 10.0, lambd: float = 0.1,
                 avg_non_ignore: bool = False, loss_weight: float = 1.0,
                 loss_name: str = 'loss_mbls',
                 class_weight: Optional[Union[list, str]] = None):
        super().__init__(avg_non_ignore, loss_weight, loss_name, class_weight)
        if margin <= 0 or lambd < 0:
            raise ValueError(f'need margin > 0 and lambd >= 0, got margin='
                             f'{margin}, lambd={lambd}')
        self.margin = margin
        self.lambd = lambd

    def pixel_loss(self, logits: Tensor, label: Tensor) -> Tensor:
        ce = F.cross_entropy(logits, label, reduction='none')
        distance = logits.amax(dim=1, keepdim=True) - logits
        hinge = (distance - self.margin).clamp_min(0).mean(dim=1)
        return ce + self.lambd * hinge
