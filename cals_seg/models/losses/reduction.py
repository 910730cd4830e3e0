"""mmseg's loss contract, shared by every loss of this package.

mmseg's ``CrossEntropyLoss.forward(cls_score, label, weight, avg_factor,
reduction_override, ignore_index)`` (mmseg/models/losses/cross_entropy_loss.py
and ``weight_reduce_loss`` in mmseg/models/losses/utils.py) forms a loss per
pixel, zero at ignored pixels, multiplies it by ``weight`` and then:

- ``'none'``: returns the ``(N, *S)`` map (``avg_factor`` is not used);
- ``'sum'``: returns its sum (``avg_factor`` is an error);
- ``'mean'`` (the default): divides the sum by ``avg_factor + eps`` when
  ``avg_factor`` is given; otherwise, with ``avg_non_ignore``, by the number
  of non-ignored pixels ``+ eps``, and else by the number of all pixels.

The losses here keep that contract for their whole per-pixel loss, penalty
included: :func:`resolve_reduction` turns the arguments into a mode and a
divisor, :func:`reduce_pixel_losses` applies them to a loss map, and the fused
paths divide their sums by the same divisor.
"""
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from mmseg.models.losses.utils import get_class_weight

REDUCTIONS = ('none', 'mean', 'sum')
# mmseg's guard against an avg_factor of 0 (every pixel ignored).
_EPS = torch.finfo(torch.float32).eps


class Reduction(NamedTuple):
    """How a loss map becomes the returned loss.

    Attributes:
        mode (str): 'none', 'mean' or 'sum'.
        divisor (float): what the summed loss is divided by (1 for 'sum' and
            'none').
    """
    mode: str
    divisor: float


def resolve_reduction(label: Tensor, valid: Tensor, avg_non_ignore: bool,
                      avg_factor: Optional[Union[float, Tensor]] = None,
                      reduction_override: Optional[str] = None) -> Reduction:
    """mmseg's reduction for a batch, as its ``cross_entropy`` and
    ``weight_reduce_loss`` decide it.

    Args:
        label (Tensor): ``(N, *S)`` labels.
        valid (Tensor): ``(N, *S)`` bool, False at ignored pixels.
        avg_non_ignore (bool): average over non-ignored pixels only.
        avg_factor (float | Tensor, optional): the divisor of 'mean'.
        reduction_override (str, optional): 'none', 'mean' or 'sum'; None
            means 'mean'.

    Returns:
        Reduction
    """
    if reduction_override not in (None, ) + REDUCTIONS:
        raise ValueError(f'reduction_override must be None or one of {REDUCTIONS}, '
                         f'got {reduction_override!r}')
    mode = reduction_override or 'mean'
    if mode == 'sum' and avg_factor is not None:
        raise ValueError("avg_factor can not be used with reduction_override='sum' "
                         '(as in mmseg)')
    if mode != 'mean':
        return Reduction(mode, 1.0)
    if avg_factor is not None:
        return Reduction(mode, avg_factor + _EPS)
    if avg_non_ignore:
        return Reduction(mode, int(valid.sum()) + _EPS)
    return Reduction(mode, float(label.numel()))


def check_pixel_weight(weight: Optional[Tensor], label: Tensor) -> None:
    """mmseg's condition on a per-pixel ``weight``: as many dimensions as the
    labels, and broadcastable to them."""
    if weight is None:
        return
    if weight.dim() != label.dim() or any(
            w not in (1, s) for w, s in zip(weight.shape, label.shape)):
        raise ValueError(f'weight of shape {tuple(weight.shape)} is not a per-pixel '
                         f'weight for labels of shape {tuple(label.shape)}')


def reduce_pixel_losses(losses: Tensor, weight: Optional[Tensor],
                        reduction: Reduction) -> Tensor:
    """Weight and reduce an ``(N, *S)`` loss map (zero at ignored pixels).

    Returns:
        Tensor: the map (``'none'``) or a scalar.
    """
    if weight is not None:
        losses = losses * weight.float()
    if reduction.mode == 'none':
        return losses
    return losses.sum() / reduction.divisor


def class_weight_tensor(class_weight: Optional[Union[list, str]]) -> Optional[Tensor]:
    """``class_weight`` as mmseg's ``get_class_weight`` reads it (a list, or a
    .npy / pickle file path), as a float32 ``[C]`` tensor."""
    weights = get_class_weight(class_weight)
    return None if weights is None else torch.tensor(weights, dtype=torch.float32)


def label_class_weight(class_weight: Optional[Tensor], label: Tensor,
                       valid: Tensor) -> Optional[Tensor]:
    """Each pixel's weight ``class_weight[y_i]`` (mmseg's weighted
    cross-entropy), 0 at ignored pixels; None without class weights."""
    if class_weight is None:
        return None
    if class_weight.dim() != 1:
        raise ValueError(f'class_weight must be a list of C numbers, got shape '
                         f'{tuple(class_weight.shape)}')
    return class_weight.to(label.device)[label.where(valid, 0).long()] * valid


def combined_pixel_weight(weight: Optional[Tensor],
                          class_weight: Optional[Tensor], label: Tensor,
                          valid: Tensor) -> Optional[Tensor]:
    """The product of a sampler's ``weight`` and ``class_weight[y_i]``, both
    optional: what multiplies each pixel's loss."""
    check_pixel_weight(weight, label)
    by_class = label_class_weight(class_weight, label, valid)
    if weight is None:
        return by_class
    weight = weight.float().expand(label.shape)
    return weight if by_class is None else weight * by_class
