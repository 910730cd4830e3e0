"""The CALS PHR penalty in one pass over the logits (Triton).

The same outputs as ops/csrc/phr_penalty.cpp; the mathematics are those of
``constraint_penalty`` in cals_seg/functional/cals.py (Liu et al., "Class
Adaptive Network Calibration", CVPR 2023). A program holds a (classes x pixels)
tile of logits in registers: it reads them once, writes the gradient direction
once, and stores its per-class sums in its own row of a partials table that is
summed afterwards in a fixed order, so the result does not depend on scheduling.
"""
import torch
import triton
import triton.language as tl

from ._launch import (class_tile, clip, largest_logit_direction, load_logit_tile,
                      nonfinite_per_pixel, phr_derivative)


@triton.jit
def _phr_penalty_kernel(z_ptr, valid_ptr, offset_ptr, slope_ptr, direction_ptr,
                        partial_ptr, num_classes, num_pixels, lambd_min, lambd_max,
                        NEED_GRAD: tl.constexpr, NEED_STATS: tl.constexpr,
                        CLASSES: tl.constexpr, BLOCK: tl.constexpr):
    block = tl.program_id(0)
    image = tl.program_id(1).to(tl.int64)
    row = (image * tl.num_programs(0) + block) * (3 * num_classes + 2)
    pixel, k, in_image, is_class, tile, index, z = load_logit_tile(
        z_ptr, image, block, num_classes, num_pixels, float('-inf'), CLASSES, BLOCK)
    valid = tl.load(valid_ptr + image * num_pixels + pixel, mask=in_image, other=0) != 0
    top = tl.max(z, axis=0)
    distance = top[None, :] - z
    offset = tl.load(offset_ptr + k, mask=is_class, other=0.0)
    slope = tl.load(slope_ptr + k, mask=is_class, other=0.0)
    x = phr_derivative(offset[:, None], slope[:, None], distance, tile & valid[None, :])
    tl.store(partial_ptr + row + k, tl.sum(x * x, axis=1).to(tl.float64), mask=is_class)
    if NEED_STATS:
        nonfinite_logits = nonfinite_per_pixel(z, tile)
        kept_pixel = valid & in_image & (nonfinite_logits == 0)
        kept = is_class[:, None] & kept_pixel[None, :]
        clipped = clip(x, lambd_min, lambd_max)
        tl.store(partial_ptr + row + num_classes + k,
                 tl.sum(tl.where(kept, clipped, 0.0), axis=1).to(tl.float64),
                 mask=is_class)
        tl.store(partial_ptr + row + 2 * num_classes + k,
                 tl.sum(tl.where(kept, distance, 0.0), axis=1).to(tl.float64),
                 mask=is_class)
        tl.store(partial_ptr + row + 3 * num_classes,
                 tl.sum(kept_pixel.to(tl.float32), axis=0).to(tl.float64))
        nonfinite = valid & in_image & (nonfinite_logits > 0)
        tl.store(partial_ptr + row + 3 * num_classes + 1,
                 tl.sum(nonfinite.to(tl.float32), axis=0).to(tl.float64))
    if NEED_GRAD:
        tl.store(direction_ptr + index, largest_logit_direction(x, z, top, tile),
                 mask=tile)


def phr_penalty(logits: torch.Tensor, valid: torch.Tensor, offset: torch.Tensor,
                slope: torch.Tensor, need_grad: bool, need_statistics: bool,
                lambd_min: float, lambd_max: float):
    """``P' = max(0, offset_k + slope_k (max_j z_j - z_k))`` at valid pixels.

    Args:
        logits (Tensor): contiguous float32 ``(N, C, P)``.
        valid (Tensor): contiguous bool ``(N, P)``.
        offset, slope (Tensor): contiguous float32 ``[C]``.
        need_grad (bool), need_statistics (bool), lambd_min, lambd_max (float):
            as phr_penalty.cpp.

    Returns:
        dict: by name, as phr_penalty.cpp: float64 ``squares``, ``[C]`` sum of
        ``P'^2``; with ``need_grad`` the ``(N, C, P)`` ``direction`` ``P' - [k
        wins] sum_j P'_j / #winners``; with ``need_statistics`` ``clipped``
        (``[C]`` sum of ``clip(P')``), ``distance`` (``[C]`` sum of ``max_j z_j
        - z_k``), both over valid pixels whose logits are all finite,
        ``num_finite`` (those pixels) and ``num_nonfinite`` (the other valid
        pixels). Names not asked for are absent.
    """
    num_images, num_classes, num_pixels = logits.shape
    classes, block = class_tile(num_classes)
    blocks = triton.cdiv(num_pixels, block)
    partials = torch.zeros((num_images * blocks, 3 * num_classes + 2),
                           dtype=torch.float64, device=logits.device)
    direction = torch.empty_like(logits) if need_grad else None
    if partials.numel():
        _phr_penalty_kernel[(blocks, num_images)](
            logits, valid.view(torch.uint8), offset, slope,
            direction if need_grad else logits, partials, num_classes, num_pixels,
            float(lambd_min), float(lambd_max), NEED_GRAD=need_grad,
            NEED_STATS=need_statistics, CLASSES=classes, BLOCK=block)
    # In the layout of a partials row: [sq (C), clipped (C), distance (C),
    # finite, nonfinite].
    sums = partials.sum(0)
    out = {'squares': sums[:num_classes]}
    if need_grad:
        out['direction'] = direction
    if need_statistics:
        out.update(clipped=sums[num_classes:2 * num_classes],
                   distance=sums[2 * num_classes:3 * num_classes],
                   num_finite=sums[3 * num_classes],
                   num_nonfinite=sums[3 * num_classes + 1])
    return out
