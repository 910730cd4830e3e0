"""SVLS (Islam and Glocker, "Spatially Varying Label Smoothing", IPMI 2021) as
what its soft targets add to hard-label cross-entropy, through the fused CPU
kernel (ops/csrc/neighbourhood_penalties.cpp) or PyTorch operations.

Shapes: logits ``(N, C, H, W)``; labels, masks and pixel weights ``(N, H, W)``.
"""
from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import ops
from ..ops import use_kernel
from .neighbourhood import (ScaledProportions, boundary_mask, kernel_inputs,
                            neighbourhood_proportions)


class PixelRows(NamedTuple):
    """A gradient direction that is zero but at a few pixels.

    Attributes:
        pixels (tuple[Tensor]): ``M`` pixels as index tensors over the
            logits' ``(N, *S)`` axes.
        rows (Tensor): ``(M, C)`` the direction at those pixels.
    """
    pixels: Tuple[Tensor, ...]
    rows: Tensor


@torch.no_grad()
def soft_label_shift(logits: Tensor, targets: ScaledProportions,
                     pixel_weight: Optional[Tensor] = None,
                     backend: str = 'auto') -> Tuple[Tensor, Union[Tensor, PixelRows]]:
    """What soft targets ``q`` add to hard-label cross-entropy:
    ``sum_{i valid} w_i sum_k (onehot_ik - q_ik) z_ik`` and its gradient
    ``w (onehot - q)``. Because ``q_i`` sums to 1, ``-sum_k q_ik log p_ik``
    is the hard loss ``lse_i - z_{i y_i}`` plus this term, which is zero
    wherever the window holds only the pixel's own label.

    Args:
        logits (Tensor): ``(N, C, H, W)``.
        targets (ScaledProportions): ``q`` (its scale must be None).
        pixel_weight (Tensor, optional): ``w``, ``(N, H, W)``; None means 1.
        backend (str): 'kernel' (one pass, a dense direction: C++ on CPU,
            Triton on CUDA), 'triton', 'torch' (any device: ``q`` formed only at
            pixels near another label, the direction as :class:`PixelRows`), or
            'auto' (C++ on CPU, PyTorch on CUDA: :func:`cals_seg.ops.use_kernel`).

    Returns:
        tuple: the float64 sum, and the direction as an ``(N, C, H, W)``
        tensor or :class:`PixelRows`.
    """
    if targets.scale is not None:
        raise ValueError('soft_label_shift: soft targets are proportions, scale None')
    if use_kernel(backend, logits, True, ''):
        weight = logits.new_empty(0) if pixel_weight is None else (
            pixel_weight.float().reshape(len(logits), -1).contiguous())
        term = ops.svls_shift(**kernel_inputs(logits, targets), pixel_weight=weight,
                              backend=backend)
        return term.value, term.direction.view(logits.shape)
    label, valid, window = targets.label, targets.valid, targets.weights
    half = window.shape[0] // 2
    if half == 0:  # a 1 x 1 window: every target is one-hot
        near = torch.zeros_like(valid)
    else:  # the boundary mask (counting the ignore label too) finds them
        near = valid & boundary_mask(label, half)
    pixels = near.nonzero(as_tuple=True)
    soft = neighbourhood_proportions(label, valid, logits.shape[1], window, pixels)
    shift = soft.neg_().scatter_add_(1, label[pixels].long().unsqueeze(1),
                                     soft.new_ones(len(soft), 1))
    if pixel_weight is not None:
        shift.mul_(pixel_weight[pixels].unsqueeze(1).float())
    total = (shift * logits.float().movedim(1, -1)[pixels]).sum(dtype=torch.float64)
    return total, PixelRows(pixels, shift)
