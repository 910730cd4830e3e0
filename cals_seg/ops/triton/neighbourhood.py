"""Penalties whose constraints depend on where a pixel is (Triton): grouped
multipliers and targets formed from the labels around each pixel.

The same outputs as ops/csrc/neighbourhood_penalties.cpp; the mathematics are
``grouped_constraint_penalty`` (cals_seg/functional/cals.py), NACL's
``neighbourhood_deviation`` (functional/nacl.py) and SVLS's ``soft_label_shift``
(functional/svls.py), with the label proportions of
``neighbourhood_proportions`` (functional/neighbourhood.py). A program forms the
proportions of its (classes x pixels) tile in registers from the ``(N, H, W)``
labels, never an ``(N, C, H, W)`` target; per-program sums go to a partials
table summed afterwards in a fixed order, the per-group round statistics to
float64 atomics.
"""
import torch
import triton
import triton.language as tl

from ._launch import (class_tile, clip, largest_logit_direction, load_logit_tile,
                      nonfinite_per_pixel, phr_derivative)


@triton.jit
def _proportions(label_ptr, weights_ptr, image_start, pixel, in_image, centre,
                 factor, k, height, width, WINDOW: tl.constexpr,
                 CLASSES: tl.constexpr, BLOCK: tl.constexpr):
    """``factor_i * tau_ik``: the weighted share of class ``k`` among the valid
    neighbours of each pixel in a ``WINDOW x WINDOW`` window (labels < 0 and
    pixels beyond the border are not neighbours); 0 where ``centre < 0``.
    Accumulated and divided in the order of ``neighbourhood_proportions``."""
    row = pixel // width
    column = pixel % width
    counts = tl.zeros((CLASSES, BLOCK), tl.float32)
    mass = tl.zeros((BLOCK, ), tl.float32)
    for dy in tl.static_range(WINDOW):
        for dx in tl.static_range(WINDOW):
            r = row + (dy - WINDOW // 2)
            c = column + (dx - WINDOW // 2)
            inside = in_image & (r >= 0) & (r < height) & (c >= 0) & (c < width)
            neighbour = tl.load(label_ptr + image_start + r * width + c, mask=inside,
                                other=-1)
            weight = tl.load(weights_ptr + dy * WINDOW + dx)
            mass += tl.where(neighbour >= 0, weight, 0.0)
            counts += tl.where(k[:, None] == neighbour[None, :], weight, 0.0)
    # A valid pixel is its own neighbour, so its mass is > 0.
    mass = tl.where(centre >= 0, mass, float('inf'))
    return counts / mass[None, :] * factor[None, :]


@triton.jit
def _add_group_sums(sums_ptr, group, kept, values, k, logit_stride, num_groups):
    """``sums[group] += values`` over the ``kept`` entries of a (classes x
    pixels) tile. Where every kept pixel of the tile has the same base group
    (a region's interior), the tile is reduced first and one atomic per class
    remains; elsewhere one atomic per entry."""
    base = group - logit_stride * k[:, None]
    lowest = tl.min(tl.where(kept, base, num_groups))
    highest = tl.max(tl.where(kept, base, -1))
    if lowest == highest:
        any_kept = tl.sum(kept.to(tl.int32), axis=1) > 0
        tl.atomic_add(sums_ptr + lowest + logit_stride * k,
                      tl.sum(tl.where(kept, values, 0.0), axis=1).to(tl.float64),
                      mask=any_kept)
    else:
        tl.atomic_add(sums_ptr + group, values.to(tl.float64), mask=kept)


@triton.jit
def _grouped_kernel(z_ptr, label_ptr, base_ptr, offset_ptr, slope_ptr, lambd_ptr,
                    rho_ptr, weights_ptr, scale_ptr, direction_ptr, partial_ptr,
                    group_sums_ptr, logit_stride, num_groups, num_classes, height,
                    width, lambd_min, lambd_max, NEED_GRAD: tl.constexpr,
                    NEED_STATS: tl.constexpr, TARGETS: tl.constexpr,
                    HAS_SCALE: tl.constexpr, WINDOW: tl.constexpr,
                    CLASSES: tl.constexpr, BLOCK: tl.constexpr):
    block = tl.program_id(0)
    image = tl.program_id(1).to(tl.int64)
    num_pixels = height * width
    row = image * tl.num_programs(0) + block
    pixel, k, in_image, is_class, tile, index, z = load_logit_tile(
        z_ptr, image, block, num_classes, num_pixels, float('-inf'), CLASSES, BLOCK)
    image_start = image * num_pixels
    label = tl.load(label_ptr + image_start + pixel, mask=in_image, other=-1)
    base = tl.load(base_ptr + image_start + pixel, mask=in_image, other=0)
    usable = tile & (label >= 0)[None, :]
    group = base[None, :] + logit_stride * k[:, None]
    offset = tl.load(offset_ptr + group, mask=usable, other=0.0)
    slope = tl.load(slope_ptr + group, mask=usable, other=0.0)
    lambd = tl.load(lambd_ptr + group, mask=usable, other=0.0)
    rho = tl.load(rho_ptr + group, mask=usable, other=1.0)
    if TARGETS:
        if HAS_SCALE:
            factor = tl.load(scale_ptr + image_start + pixel, mask=in_image, other=0.0)
        else:
            factor = tl.full((BLOCK, ), 1.0, tl.float32)
        factor = tl.where(label >= 0, factor, 0.0)
        target = _proportions(label_ptr, weights_ptr, image_start, pixel, in_image,
                              label, factor, k, height, width, WINDOW, CLASSES, BLOCK)
        distance = tl.abs(target - z)
    else:
        top = tl.max(z, axis=0)
        distance = top[None, :] - z
    x = phr_derivative(offset, slope, distance, usable)
    value = tl.where(usable, (x * x - lambd * lambd) * (0.5 / rho), 0.0)
    tl.store(partial_ptr + 2 * row,
             tl.sum(tl.sum(value, axis=1), axis=0).to(tl.float64))
    if NEED_GRAD:
        if TARGETS:
            # d P / d z = P' sign(z - r); the caller's scale is positive.
            sign = (z > target).to(tl.float32) - (z < target).to(tl.float32)
            direction = x * sign
        else:
            direction = largest_logit_direction(x, z, top, tile)
        tl.store(direction_ptr + index, direction, mask=tile)
    if NEED_STATS:
        nonfinite_logits = nonfinite_per_pixel(z, tile)
        kept = usable & (nonfinite_logits == 0)[None, :]
        clipped = clip(x, lambd_min, lambd_max)
        _add_group_sums(group_sums_ptr, group, kept, clipped, k, logit_stride,
                        num_groups)
        _add_group_sums(group_sums_ptr + num_groups, group, kept, distance, k,
                        logit_stride, num_groups)
        _add_group_sums(group_sums_ptr + 2 * num_groups, group, kept,
                        tl.full((CLASSES, BLOCK), 1.0, tl.float32), k,
                        logit_stride, num_groups)
        nonfinite = (label >= 0) & in_image & (nonfinite_logits > 0)
        tl.store(partial_ptr + 2 * row + 1,
                 tl.sum(nonfinite.to(tl.float32), axis=0).to(tl.float64))


@triton.jit
def _proportion_terms_kernel(z_ptr, label_ptr, weights_ptr, pixel_weight_ptr,
                             direction_ptr, partial_ptr, num_classes, height, width,
                             SHIFT: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                             WINDOW: tl.constexpr, CLASSES: tl.constexpr,
                             BLOCK: tl.constexpr):
    """NACL's ``|z - tau|`` and ``sign(z - tau)``, or SVLS's (``SHIFT``)
    ``w (onehot - tau) . z`` and ``w (onehot - tau)``; 0 at ignored pixels."""
    block = tl.program_id(0)
    image = tl.program_id(1).to(tl.int64)
    num_pixels = height * width
    pixel, k, in_image, _, tile, index, z = load_logit_tile(
        z_ptr, image, block, num_classes, num_pixels, 0.0, CLASSES, BLOCK)
    image_start = image * num_pixels
    label = tl.load(label_ptr + image_start + pixel, mask=in_image, other=-1)
    ones = tl.full((BLOCK, ), 1.0, tl.float32)
    tau = _proportions(label_ptr, weights_ptr, image_start, pixel, in_image, label,
                       ones, k, height, width, WINDOW, CLASSES, BLOCK)
    # Masks as factors, as the PyTorch paths multiply by them: a non-finite
    # logit at an ignored pixel gives NaN in both.
    factor = tl.where(label >= 0, 1.0, 0.0)
    if HAS_WEIGHT:
        factor *= tl.load(pixel_weight_ptr + image_start + pixel, mask=in_image,
                          other=0.0)
    if SHIFT:
        onehot = (k[:, None] == label[None, :]).to(tl.float32)
        direction = factor[None, :] * (onehot - tau)
        terms = direction * z
    else:
        difference = z - tau
        sign = (difference > 0).to(tl.float32) - (difference < 0).to(tl.float32)
        direction = factor[None, :] * sign
        terms = factor[None, :] * tl.abs(difference)
    tl.store(direction_ptr + index, direction, mask=tile)
    total = tl.sum(tl.sum(tl.where(tile, terms, 0.0), axis=1), axis=0)
    tl.store(partial_ptr + image * tl.num_programs(0) + block, total.to(tl.float64))


def _window(weights: torch.Tensor) -> int:
    size = weights.shape[0]
    if weights.dim() != 2 or weights.shape[1] != size or size % 2 != 1:
        raise ValueError(f'weights must be an odd (k, k) tensor, got shape '
                         f'{tuple(weights.shape)}')
    return size


def grouped_phr_penalty(logits, label, height, width, group_base, logit_stride,
                        offset, slope, lambd, rho, weights, target_scale, need_grad,
                        need_statistics, lambd_min, lambd_max):
    """Args and Returns: as grouped_phr_penalty in neighbourhood_penalties.cpp:
    logits contiguous float32 ``(N, C, P)``; label int32 ``(N, P)``, -1 where
    ignored, of ``H x W`` maps; group ``base_i + logit_stride * k`` from
    group_base int32 ``(N, P)``; offset, slope, lambd, rho float32 ``[G]``;
    weights float32 ``(k, k)`` for targets ``r_ik = target_scale_i tau_ik``, or
    empty for distances; target_scale float32 ``(N, P)`` or empty (1). Returns,
    by name, float64 ``value`` (sum P); with ``need_grad`` the ``direction``;
    with ``need_statistics``, over valid pixels whose logits are all finite,
    ``clipped`` (sum clip(P'), ``[G]``), ``distance`` (sum d, ``[G]``),
    ``count`` (pairs, ``[G]``), and ``num_nonfinite`` (the other valid pixels).
    Names not asked for are absent. The arguments are checked by
    ``cals_seg.ops.triton``.
    """
    num_images, num_classes, num_pixels = logits.shape
    num_groups = offset.numel()
    targets = weights.numel() > 0
    weights = weights.to(logits.device)  # the CPU kernel's callers build it on the CPU
    classes, block = class_tile(num_classes)
    blocks = triton.cdiv(num_pixels, block)
    partials = torch.zeros((num_images * blocks, 2), dtype=torch.float64,
                           device=logits.device)
    group_sums = torch.zeros(3 * num_groups, dtype=torch.float64, device=logits.device)
    direction = torch.empty_like(logits) if need_grad else None
    if partials.numel():
        _grouped_kernel[(blocks, num_images)](
            logits, label, group_base, offset, slope, lambd, rho,
            weights if targets else offset,
            target_scale if target_scale.numel() else offset,
            direction if need_grad else logits, partials, group_sums, logit_stride,
            num_groups, num_classes, height, width, float(lambd_min),
            float(lambd_max), NEED_GRAD=need_grad, NEED_STATS=need_statistics,
            TARGETS=targets, HAS_SCALE=target_scale.numel() > 0,
            WINDOW=_window(weights) if targets else 1, CLASSES=classes, BLOCK=block)
    sums = partials.sum(0)
    out = {'value': sums[0]}
    if need_grad:
        out['direction'] = direction
    if need_statistics:
        clipped, distance, count = group_sums.view(3, num_groups)
        out.update(clipped=clipped, distance=distance, count=count,
                   num_nonfinite=sums[1])
    return out


def _proportion_terms(logits, label, height, width, weights, pixel_weight, shift):
    num_images, num_classes, num_pixels = logits.shape
    weights = weights.to(logits.device)  # the CPU kernel's callers build it on the CPU
    classes, block = class_tile(num_classes)
    blocks = triton.cdiv(num_pixels, block)
    partials = torch.zeros(num_images * blocks, dtype=torch.float64,
                           device=logits.device)
    direction = torch.empty_like(logits)
    if partials.numel():
        has_weight = pixel_weight.numel() > 0
        _proportion_terms_kernel[(blocks, num_images)](
            logits, label, weights, pixel_weight if has_weight else logits, direction,
            partials, num_classes, height, width, SHIFT=shift, HAS_WEIGHT=has_weight,
            WINDOW=_window(weights), CLASSES=classes, BLOCK=block)
    return {'direction': direction, 'value': partials.sum()}


def nacl_penalty(logits, label, height, width, weights):
    """NACL's ``sum_{i valid, k} |z_ik - tau_ik|`` and ``sign(z - tau)`` (0 at
    ignored pixels). Args and Returns: as nacl_penalty in
    neighbourhood_penalties.cpp."""
    return _proportion_terms(logits, label, height, width, weights,
                             logits.new_empty(0), shift=False)


def svls_shift(logits, label, height, width, weights, pixel_weight):
    """SVLS's ``sum_{i valid} w_i sum_k (onehot_ik - tau_ik) z_ik`` and
    ``w (onehot - tau)``. Args and Returns: as svls_shift in
    neighbourhood_penalties.cpp."""
    return _proportion_terms(logits, label, height, width, weights, pixel_weight,
                             shift=True)
