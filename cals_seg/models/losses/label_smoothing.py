"""Label smoothing (LS) for segmentation."""
from typing import Optional, Union

import torch.nn.functional as F
from torch import Tensor

from mmseg.registry import MODELS

from .pixelwise import PixelwiseLoss


@MODELS.register_module()
class LabelSmoothingLoss(PixelwiseLoss):
    """Cross-entropy against ``(1 - eps) onehot(y) + eps / C``.

    Per pixel: ``-(1 - eps) log p_y - (eps / C) sum_k log p_k``. The default
    ``smoothing=0.1`` is the value of Szegedy et al., "Rethinking the Inception
    Architecture", CVPR 2016, and the one Müller et al., "When Does Label
    Smoothing Help?", NeurIPS 2019, and the MbLS/CALS papers compare against.

    Args:
        smoothing (float): ``eps`` in [0, 1). Default: 0.1.
        avg_non_ignore (bool), loss_weight (float), loss_name (str),
            class_weight (list[float] | str, optional): see
            :class:`PixelwiseLoss`; a class weight multiplies the whole loss
            of a pixel of that class.
    """

    def __init__(self, smoothing: float = 0.1, avg_non_ignore: bool = False,
                 loss_weight: float = 1.0, loss_name: str = 'loss_ls',
                 class_weight: Optional[Union[list, str]] = None):
        super().__init__(avg_non_ignore, loss_weight, loss_name, class_weight)
        if not 0 <= smoothing < 1:
            raise ValueError(f'smoothing must be in [0, 1), got {smoothing}')
        self.smoothing = smoothing

    def pixel_loss(self, logits: Tensor, label: Tensor) -> Tensor:
        log_prob = F.log_softmax(logits, dim=1)
        true = log_prob.gather(1, label.unsqueeze(1)).squeeze(1)
        return -(1 - self.smoothing) * true - self.smoothing * log_prob.mean(dim=1)
