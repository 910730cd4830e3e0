"""What the calibration baselines share: a per-pixel loss map reduced the way
mmseg's CrossEntropyLoss reduces its own."""
from typing import Optional

import torch.nn as nn
from torch import Tensor


class PixelwiseLoss(nn.Module):
    """A loss defined per pixel, with mmseg's reduction and head contract.

    Subclasses implement :meth:`pixel_loss`. ``forward(cls_score, label, weight,
    ignore_index)`` masks ignored pixels, applies a sampler's ``weight``, and
    averages over all pixels (mmseg's default) or, with ``avg_non_ignore``, over
    the valid ones (:meth:`denominator`). Losses that need more than one pixel
    at a time (NACL, SVLS) override ``forward`` and keep the same reduction.

    Args:
        avg_non_ignore (bool): average over non-ignored pixels only.
        loss_weight (float): weight of the loss.
        loss_name (str): key in mmseg's loss dict.
    """

    def __init__(self, avg_non_ignore: bool, loss_weight: float, loss_name: str):
        super().__init__()
        self.avg_non_ignore = avg_non_ignore
        self.loss_weight = loss_weight
        self._loss_name = loss_name

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def pixel_loss(self, logits: Tensor, label: Tensor) -> Tensor:
        """Loss of every pixel.

        Args:
            logits (Tensor): ``(N, C, *S)``.
            label (Tensor): ``(N, *S)`` classes, ignored pixels set to 0.

        Returns:
            Tensor: ``(N, *S)``.
        """
        raise NotImplementedError

    def forward(self,
                cls_score: Tensor,
                label: Tensor,
                weight: Optional[Tensor] = None,
                ignore_index: int = 255,
                **kwargs) -> Tensor:
        valid = label != ignore_index
        per_pixel = self.pixel_loss(cls_score.float(), label.where(valid, 0))
        per_pixel = per_pixel.where(valid, 0)
        if weight is not None:
            per_pixel = per_pixel * weight
        return self.loss_weight * per_pixel.sum() / self.denominator(label, valid)

    def denominator(self, label: Tensor, valid: Tensor) -> int:
        """What the summed loss is divided by: all pixels, or the valid ones."""
        return max(int(valid.sum()) if self.avg_non_ignore else label.numel(), 1)
