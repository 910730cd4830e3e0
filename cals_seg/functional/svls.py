"""SVLS (Islam and Glocker, "Spatially Varying Label Smoothing", IPMI 2021) as
what its soft targets add to hard-label cross-entropy, through the fused CPU
kernel (ops/csrc/neighbourhood_penalties.cpp) or PyTorch operations.

Shapes: logits ``(N, C, H, W)``; labels, masks and pixel weights ``(N, H, W)``.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import ops
from ..ops import use_kernel
from .neighbourhood import ScaledProportions, kernel_inputs


@torch.no_grad()
def soft_label_shift(logits: Tensor, targets: ScaledProportions,
                     pixel_weight: Optional[Tensor] = None,
                     backend: str = 'auto') -> Tuple[Tensor, Tensor]:
    """What soft targets ``q`` add to hard-label cross-entropy:
    ``sum_{i valid} w_i sum_k (onehot_ik - q_ik) z_ik`` and its gradient
    ``w (onehot - q)``. Because ``q_i`` sums to 1, ``-sum_k q_ik log p_ik``
    is the hard loss ``lse_i - z_{i y_i}`` plus this term, which is zero
    wherever the window holds only the pixel's own label.

    Args:
        logits (Tensor): ``(N, C, H, W)``.
        targets (ScaledProportions): ``q`` (its scale must be None).
        pixel_weight (Tensor, optional): ``w``, ``(N, H, W)``; None means 1.
        backend (str): 'kernel' (one pass, ``q`` formed block by block: C++
            on CPU, Triton on CUDA), 'triton', 'torch' (any device: ``q``
            formed as an ``(N, C, H, W)`` tensor that becomes the direction), or
            'auto' (C++ on CPU, PyTorch on CUDA: :func:`cals_seg.ops.use_kernel`).
            None reads anything back to the host (selecting the few pixels near
            another label would: their number sizes the result).

    Returns:
        tuple[Tensor, Tensor]: the float64 sum and the ``(N, C, H, W)`` float32
        direction.
    """
    if targets.scale is not None:
        raise ValueError('soft_label_shift: soft targets are proportions, scale None')
    if use_kernel(backend, logits, True, ''):
        weight = logits.new_empty(0) if pixel_weight is None else (
            pixel_weight.float().reshape(len(logits), -1).contiguous())
        term = ops.svls_shift(**kernel_inputs(logits, targets), pixel_weight=weight,
                              backend=backend)
        return term.value, term.direction.view(logits.shape)
    label, valid = targets.label, targets.valid
    # onehot - q in q's buffer. Wherever the window holds only the pixel's own
    # label q is exactly one-hot (the class's weights and the window's mass are
    # the same sums), so the shift is exactly 0 there.
    shift = targets.dense(logits.shape[1]).neg_()
    shift.scatter_add_(1, label.where(valid, 0).long().unsqueeze(1),
                       valid.unsqueeze(1).to(shift.dtype))
    if pixel_weight is not None:
        shift.mul_(pixel_weight.unsqueeze(1).float())
    # A class at a time: on CPU a float64 sum of the whole product would first
    # copy it to float64, twice the logits' size.
    logits = logits.float()
    total = sum((shift[:, k] * logits[:, k]).sum(dtype=torch.float64)
                for k in range(logits.shape[1]))
    return total, shift
