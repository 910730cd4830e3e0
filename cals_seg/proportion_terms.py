"""Loss terms whose targets are the label proportions themselves (NACL's and
SVLS's), each as its sum and its gradient direction, through the fused CPU
kernel (csrc/neighbourhood_penalties.cpp) or PyTorch operations.

Shapes: logits ``(N, C, H, W)``; labels, masks and pixel weights ``(N, H, W)``.
"""
from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from .label_maps import ScaledProportions, boundary_mask, neighbourhood_proportions
from .native import kernels, use_kernel


class PixelRows(NamedTuple):
    """A gradient direction that is zero but at a few pixels.

    Attributes:
        pixels (tuple[Tensor]): ``M`` pixels as index tensors over the
            logits' ``(N, *S)`` axes.
        rows (Tensor): ``(M, C)`` the direction at those pixels.
    """
    pixels: Tuple[Tensor, ...]
    rows: Tensor


def _kernel_args(logits: Tensor, targets: ScaledProportions) -> tuple:
    n, c, height, width = logits.shape
    return (logits.float().reshape(n, c, -1).contiguous(), targets.kernel_labels(),
            height, width, targets.weights.float().contiguous())


@torch.no_grad()
def neighbourhood_deviation(logits: Tensor, targets: ScaledProportions,
                            backend: str = 'auto') -> Tuple[Tensor, Tensor]:
    """NACL's penalty sum: ``sum_{i valid, k} |z_ik - r_ik|`` and its gradient
    ``sign(z - r)`` (0 at ignored pixels).

    Args:
        logits (Tensor): ``(N, C, H, W)``, any float dtype.
        targets (ScaledProportions): ``r``.
        backend (str): 'kernel' (CPU, fused: the proportions formed block by
            block), 'torch', or 'auto'. They differ only in float rounding and
            in the sign of a NaN.

    Returns:
        tuple[Tensor, Tensor]: the float64 sum and the ``(N, C, H, W)`` float32
        direction.
    """
    if use_kernel(backend, logits.device.type == 'cpu', 'CPU tensors'):
        direction, total = kernels.nacl_penalty(*_kernel_args(logits, targets))
        return total, direction.view(logits.shape)
    target = targets.dense(logits.shape[1])
    # z - r, zero at ignored pixels (their r is 0: subtract z there).
    difference = torch.sub(logits.float(), target, out=target)
    difference.mul_(targets.valid.unsqueeze(1))
    total = torch.linalg.vector_norm(difference, ord=1).double()
    return total, difference.sign_()


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
        backend (str): 'kernel' (CPU: one pass, a dense direction), 'torch'
            (any device: ``q`` formed only at pixels near another label, the
            direction as :class:`PixelRows`), or 'auto'.

    Returns:
        tuple: the float64 sum, and the direction as an ``(N, C, H, W)``
        tensor or :class:`PixelRows`.
    """
    if targets.scale is not None:
        raise ValueError('soft_label_shift: soft targets are proportions, scale None')
    if use_kernel(backend, logits.device.type == 'cpu', 'CPU tensors'):
        weight = logits.new_empty(0) if pixel_weight is None else (
            pixel_weight.float().reshape(len(logits), -1).contiguous())
        direction, total = kernels.svls_shift(*_kernel_args(logits, targets), weight)
        return total, direction.view(logits.shape)
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
