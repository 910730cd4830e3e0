"""What the calibration baselines share: a per-pixel loss map reduced the way
mmseg's CrossEntropyLoss reduces its own."""
from typing import Optional, Tuple, Union

import torch.nn as nn
from torch import Tensor

from ...functional.labels import check_label_range
from .reduction import (Reduction, class_weight_tensor, combined_pixel_weight,
                        reduce_pixel_losses, resolve_reduction)


class PixelwiseLoss(nn.Module):
    """A loss defined per pixel, with mmseg's head contract.

    Subclasses implement :meth:`pixel_loss`. :meth:`forward` takes the
    arguments of mmseg's ``CrossEntropyLoss.forward`` with its semantics
    (:mod:`.reduction`): ignored pixels get no loss, each pixel's loss is
    multiplied by ``class_weight[y_i]`` (mmseg's weighted cross-entropy) and by
    a sampler's ``weight``, and the map is returned (``'none'``), summed, or
    averaged over all pixels, the non-ignored ones (``avg_non_ignore``) or
    ``avg_factor``. Losses that need more than one pixel at a time (NACL, SVLS)
    override ``forward`` and keep the same contract.

    Args:
        avg_non_ignore (bool): average over non-ignored pixels only.
        loss_weight (float): weight of the loss.
        loss_name (str): key in mmseg's loss dict.
        class_weight (list[float] | str, optional): per-class weights, or the
            path of a .npy / pickle file holding them (mmseg's
            ``get_class_weight``). Default: None.
    """

    def __init__(self, avg_non_ignore: bool, loss_weight: float, loss_name: str,
                 class_weight: Optional[Union[list, str]] = None):
        super().__init__()
        self.avg_non_ignore = avg_non_ignore
        self.loss_weight = loss_weight
        self._loss_name = loss_name
        self.class_weight = class_weight_tensor(class_weight)

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

    def prepare(self, cls_score: Tensor, label: Tensor, weight: Optional[Tensor],
                avg_factor: Optional[float], reduction_override: Optional[str],
                ignore_index: int) -> Tuple[Tensor, Reduction, Optional[Tensor]]:
        """What every ``forward`` starts with: check the labels and ``weight``,
        and resolve mmseg's reduction.

        Returns:
            tuple: ``valid`` (``(N, *S)`` bool, False at ignored pixels), the
            :class:`~.reduction.Reduction`, and each pixel's weight ``(N, *S)``
            (``weight`` times ``class_weight[y_i]``; None without either).
        """
        check_label_range(label, cls_score.shape[1], ignore_index)
        valid = label != ignore_index
        pixel_weight = combined_pixel_weight(weight, self.class_weight, label, valid)
        reduction = resolve_reduction(label, valid, self.avg_non_ignore, avg_factor,
                                      reduction_override)
        return valid, reduction, pixel_weight

    def forward(self,
                cls_score: Tensor,
                label: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None,
                ignore_index: int = 255) -> Tensor:
        """Args as mmseg's ``CrossEntropyLoss.forward``: logits ``(N, C, *S)``,
        labels ``(N, *S)``, per-pixel ``weight`` ``(N, *S)``, ``avg_factor``,
        ``reduction_override`` ('none' | 'mean' | 'sum'), ``ignore_index``
        (default 255, the ignore label of mmseg's datasets; mmseg's decode
        heads always pass theirs).

        Returns:
            Tensor: scalar, or the ``(N, *S)`` map for ``'none'``.
        """
        valid, reduction, pixel_weight = self.prepare(
            cls_score, label, weight, avg_factor, reduction_override, ignore_index)
        per_pixel = self.pixel_loss(cls_score.float(), label.where(valid, 0))
        per_pixel = per_pixel.where(valid, 0)
        return self.loss_weight * reduce_pixel_losses(per_pixel, pixel_weight,
                                                      reduction)
