"""Per-bin calibration sums of one image in one pass over its logits (Triton).

The same outputs as ops/csrc/calibration_statistics.cpp; the definitions are
``calibration_statistics`` in cals_seg/functional/calibration.py. Each program
walks a strided share of the pixel blocks, holding a (classes x pixels) tile of
logits in registers: the small histograms (top-label, boundary and per-class
bins, per-class sums) are reduced over the tile and accumulated in registers,
then added to the output with one atomic per entry at the end; the fine
confidence histogram (``num_cells`` cells, too many for registers) takes one
atomic per pixel and sum.
"""
import math

import torch
import triton
import triton.language as tl

from ._launch import class_tile

# Pixels per tile row are fewer than in the penalty kernels: this kernel holds
# several (classes x pixels) tiles at once (logits, probabilities, bins, masks).
_TILE_ELEMENTS = 2048
# Programs per streaming multiprocessor: enough to hide memory latency, few
# enough that the final atomics of the register histograms stay cheap.
_PROGRAMS_PER_SM = 4
_INTERPRETER_PROGRAMS = 2


@triton.jit
def _bin_index(value, num_bins):
    """The equal-width bin ``(b/B, (b+1)/B]`` of ``value``, in float32 as the
    PyTorch reference computes it, so that edge values land in the same bin."""
    position = tl.ceil(value * num_bins) - 1.0
    position = tl.minimum(tl.maximum(position, 0.0), num_bins - 1)
    return position.to(tl.int32)


@triton.jit
def _masked_sums(mask, value, hit):
    """Over the pixels (axis 1) of a ``mask``: its count, the sum of ``value``
    and the sum of ``hit`` (1.0 where right), in float64."""
    count = tl.sum(mask.to(tl.float32), axis=1).to(tl.float64)
    total = tl.sum(tl.where(mask, value, 0.0), axis=1).to(tl.float64)
    hits = tl.sum(tl.where(mask, hit, 0.0), axis=1).to(tl.float64)
    return count, total, hits


@triton.jit
def _add_sums(ptr, entry, stride, count, total, hits, mask):
    """Adds a field triple (count, sum, hits; ``stride`` apart) to the output."""
    tl.atomic_add(ptr + entry, count, mask=mask)
    tl.atomic_add(ptr + stride + entry, total, mask=mask)
    tl.atomic_add(ptr + 2 * stride + entry, hits, mask=mask)


@triton.jit
def _calibration_kernel(z_ptr, label_ptr, keep_ptr, boundary_ptr, out_ptr,
                        num_classes, num_pixels, num_cells, low_threshold,
                        NUM_BINS: tl.constexpr, BINS: tl.constexpr,
                        HAS_BOUNDARY: tl.constexpr, CLASSES: tl.constexpr,
                        BLOCK: tl.constexpr):
    # Offsets of CalibrationStatistics' fields in the flat float64 output.
    cells = 3 * NUM_BINS
    class_bins = cells + 3 * num_cells
    class_pixels = class_bins + 3 * num_classes * NUM_BINS
    boundary_bins = class_pixels + num_classes
    low = boundary_bins + 3 * NUM_BINS
    scalars = low + 3 * num_classes

    k = tl.arange(0, CLASSES)
    is_class = k < num_classes
    b = tl.arange(0, BINS)
    is_bin = b < NUM_BINS
    bin_count = tl.zeros((BINS, ), tl.float64)
    bin_confidence = tl.zeros((BINS, ), tl.float64)
    bin_accuracy = tl.zeros((BINS, ), tl.float64)
    edge_count = tl.zeros((BINS, ), tl.float64)
    edge_confidence = tl.zeros((BINS, ), tl.float64)
    edge_accuracy = tl.zeros((BINS, ), tl.float64)
    class_count = tl.zeros((CLASSES, BINS), tl.float64)
    class_probability = tl.zeros((CLASSES, BINS), tl.float64)
    class_hits = tl.zeros((CLASSES, BINS), tl.float64)
    pixels_of_class = tl.zeros((CLASSES, ), tl.float64)
    low_count = tl.zeros((CLASSES, ), tl.float64)
    low_probability = tl.zeros((CLASSES, ), tl.float64)
    low_hits = tl.zeros((CLASSES, ), tl.float64)
    nll = tl.zeros((BLOCK, ), tl.float64)
    brier = tl.zeros((BLOCK, ), tl.float64)
    num_kept = tl.zeros((BLOCK, ), tl.float32)
    num_nonfinite = tl.zeros((BLOCK, ), tl.float32)

    num_blocks = tl.cdiv(num_pixels, BLOCK)
    for block in range(tl.program_id(0), num_blocks, tl.num_programs(0)):
        pixel = block * BLOCK + tl.arange(0, BLOCK)
        counted = (pixel < num_pixels) & (
            tl.load(keep_ptr + pixel, mask=pixel < num_pixels, other=0) != 0)
        tile = is_class[:, None] & counted[None, :]
        z = tl.load(z_ptr + k[:, None].to(tl.int64) * num_pixels + pixel[None, :],
                    mask=tile, other=float('-inf'))
        top = tl.max(z, axis=0)
        prediction = tl.argmax(z, axis=0, tie_break_left=True)
        e = tl.where(tile, tl.exp(z - top[None, :]), 0.0)
        partition = tl.sum(e, axis=0)
        finite = partition - partition == 0
        num_nonfinite += (counted & ~finite).to(tl.float32)
        used = counted & finite
        num_kept += used.to(tl.float32)
        label = tl.load(label_ptr + pixel, mask=used, other=0).to(tl.int32)
        confidence = 1.0 / partition
        correct = tl.where(used & (prediction == label), 1.0, 0.0)

        top_bin = _bin_index(confidence, NUM_BINS)
        in_bin = is_bin[:, None] & used[None, :] & (b[:, None] == top_bin[None, :])
        count, total, hits = _masked_sums(in_bin, confidence[None, :],
                                          correct[None, :])
        bin_count += count
        bin_confidence += total
        bin_accuracy += hits
        if HAS_BOUNDARY:
            edge = tl.load(boundary_ptr + pixel, mask=used, other=0) != 0
            count, total, hits = _masked_sums(in_bin & edge[None, :],
                                              confidence[None, :], correct[None, :])
            edge_count += count
            edge_confidence += total
            edge_accuracy += hits

        cell = _bin_index(confidence, num_cells)
        tl.atomic_add(out_ptr + cells + cell, tl.full((BLOCK, ), 1.0, tl.float64),
                      mask=used)
        tl.atomic_add(out_ptr + cells + num_cells + cell, confidence.to(tl.float64),
                      mask=used)
        tl.atomic_add(out_ptr + cells + 2 * num_cells + cell, correct.to(tl.float64),
                      mask=used)

        # Divided, not multiplied by the confidence, as the reference does.
        probability = e / partition[None, :]
        entry = is_class[:, None] & used[None, :]
        is_true = entry & (k[:, None] == label[None, :])
        true_class = is_true.to(tl.float32)
        class_bin = _bin_index(probability, NUM_BINS)
        for bin_id in tl.static_range(NUM_BINS):
            count, total, hits = _masked_sums(entry & (class_bin == bin_id),
                                              probability, true_class)
            column = (b == bin_id)[None, :]
            class_count += tl.where(column, count[:, None], 0.0)
            class_probability += tl.where(column, total[:, None], 0.0)
            class_hits += tl.where(column, hits[:, None], 0.0)
        pixels_of_class += tl.sum(true_class, axis=1).to(tl.float64)
        count, total, hits = _masked_sums(entry & (probability <= low_threshold),
                                          probability, true_class)
        low_count += count
        low_probability += total
        low_hits += hits

        true_probability = tl.sum(tl.where(is_true, probability, 0.0), axis=0)
        true_logit = tl.sum(tl.where(is_true, z, 0.0), axis=0)
        squares = tl.sum(tl.where(entry, probability * probability, 0.0), axis=0)
        nll += tl.where(used, -(true_logit - top - tl.log(partition)),
                        0.0).to(tl.float64)
        brier += tl.where(used, squares.to(tl.float64) - 2.0 * true_probability.to(
            tl.float64) + 1.0, 0.0)

    _add_sums(out_ptr, b, NUM_BINS, bin_count, bin_confidence, bin_accuracy, is_bin)
    _add_sums(out_ptr + class_bins, k[:, None] * NUM_BINS + b[None, :],
              num_classes * NUM_BINS, class_count, class_probability, class_hits,
              is_class[:, None] & is_bin[None, :])
    tl.atomic_add(out_ptr + class_pixels + k, pixels_of_class, mask=is_class)
    _add_sums(out_ptr + boundary_bins, b, NUM_BINS, edge_count, edge_confidence,
              edge_accuracy, is_bin)
    _add_sums(out_ptr + low, k, num_classes, low_count, low_probability, low_hits,
              is_class)
    tl.atomic_add(out_ptr + scalars, tl.sum(nll, axis=0))
    tl.atomic_add(out_ptr + scalars + 1, tl.sum(brier, axis=0))
    tl.atomic_add(out_ptr + scalars + 2, tl.sum(num_kept, axis=0).to(tl.float64))
    tl.atomic_add(out_ptr + scalars + 3, tl.sum(num_nonfinite, axis=0).to(tl.float64))


def _num_programs(device: torch.device, num_blocks: int) -> int:
    if device.type == 'cuda':
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(num_blocks, _PROGRAMS_PER_SM * sms))
    return max(1, min(num_blocks, _INTERPRETER_PROGRAMS))


def _layout(num_classes: int, num_bins: int, num_cells: int):
    """``(name, shape)`` of each sum in the flat output, in the order of the
    offsets in ``_calibration_kernel``; the names are those of
    ``CalibrationStatistics`` and ``num_nonfinite``, as calibration_statistics.cpp
    returns them."""
    c, b, f = num_classes, num_bins, num_cells
    return [('bin_count', (b, )), ('bin_confidence', (b, )), ('bin_accuracy', (b, )),
            ('cell_count', (f, )), ('cell_confidence', (f, )),
            ('cell_accuracy', (f, )), ('class_count', (c, b)),
            ('class_probability', (c, b)), ('class_hits', (c, b)),
            ('class_pixels', (c, )), ('boundary_count', (b, )),
            ('boundary_confidence', (b, )), ('boundary_accuracy', (b, )),
            ('low_count', (c, )), ('low_probability', (c, )), ('low_hits', (c, )),
            ('nll_sum', ()), ('brier_sum', ()), ('num_pixels', ()),
            ('num_nonfinite', ())]


def calibration_statistics(logits: torch.Tensor, labels: torch.Tensor,
                           keep: torch.Tensor, boundary: torch.Tensor,
                           low_threshold: float, num_bins: int, num_cells: int):
    """Args and Returns: as calibration_statistics.cpp: logits contiguous float32
    ``(C, P)``, labels int64 ``(P)`` in ``[0, C)`` wherever ``keep``, keep bool
    ``(P)``, boundary bool ``(P)`` or empty (no boundary sums); returns, by name,
    the fields of ``CalibrationStatistics`` and ``num_nonfinite``, the kept
    pixels whose softmax is not finite (left out of the sums). Sums are float64;
    the order of the atomic additions, and so the last bits of each sum, may
    vary from run to run on a GPU."""
    num_classes, num_pixels = logits.shape
    classes, block = class_tile(num_classes, _TILE_ELEMENTS)
    layout = _layout(num_classes, num_bins, num_cells)
    sizes = [math.prod(shape) for _, shape in layout]
    out = torch.zeros(sum(sizes), dtype=torch.float64, device=logits.device)
    num_blocks = triton.cdiv(num_pixels, block)
    if num_blocks:
        has_boundary = boundary.numel() > 0
        _calibration_kernel[(_num_programs(logits.device, num_blocks), )](
            logits, labels, keep.view(torch.uint8),
            boundary.view(torch.uint8) if has_boundary else keep.view(torch.uint8),
            out, num_classes, num_pixels, num_cells, float(low_threshold),
            NUM_BINS=num_bins, BINS=triton.next_power_of_2(num_bins),
            HAS_BOUNDARY=has_boundary, CLASSES=classes, BLOCK=block)
    return {name: field.view(shape)
            for (name, shape), field in zip(layout, torch.split(out, sizes))}
