"""Streaming pixel-level calibration statistics and the errors computed from them.

A functional core in two stages (DESIGN.md section 2):

1. :func:`calibration_statistics` turns one image's logits and labels into small,
   additive per-bin sums (:class:`CalibrationStatistics`); sums of several images
   or ranks are their element-wise sum, so pooling a dataset is exact streaming.
2. :func:`calibration_errors` computes ECE, MCE, AECE, CECE, NLL and Brier from
   such sums.

Bins are equal-width ``(lower, upper]``. AECE's equal-mass bins come from a fine
histogram of confidences (``num_cells`` equal-width cells, each with its count,
confidence sum and accuracy sum); a cell that straddles a bin boundary is split in
proportion to the mass each side needs. The result differs from the exact sort by
at most ``aece_error_bound`` (reported with it):
``(sum over boundaries of n(straddling cell) * (1 + 1/num_cells) + 2 (B - 1)) / N``
(x100): each split can move at most that cell's pixels between two bins, and the
exact computation rounds each boundary to a whole pixel.
"""
import math
from typing import Dict, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from ..fileio import check_label_range
from ..native import kernels, use_kernel

DEFAULT_NUM_BINS = 15
DEFAULT_NUM_CELLS = 2**16


class CalibrationStatistics(NamedTuple):
    """Additive sums of kept pixels (float64 tensors).

    Attributes:
        bin_count, bin_confidence, bin_accuracy: ``[B]`` top-label bins.
        cell_count, cell_confidence, cell_accuracy: ``[F]`` fine cells (AECE).
        class_count, class_probability, class_hits: ``[C, B]`` per-class bins of
            ``p_ik`` over all kept pixels; hits count pixels with ``y_i = k``.
        class_pixels: ``[C]`` kept pixels per ground-truth class.
        nll_sum, brier_sum, num_pixels: scalars.
    """
    bin_count: Tensor
    bin_confidence: Tensor
    bin_accuracy: Tensor
    cell_count: Tensor
    cell_confidence: Tensor
    cell_accuracy: Tensor
    class_count: Tensor
    class_probability: Tensor
    class_hits: Tensor
    class_pixels: Tensor
    nll_sum: Tensor
    brier_sum: Tensor
    num_pixels: Tensor

    @classmethod
    def zeros(cls, num_classes: int, num_bins: int = DEFAULT_NUM_BINS,
              num_cells: int = DEFAULT_NUM_CELLS) -> 'CalibrationStatistics':
        shapes = _shapes(num_classes, num_bins, num_cells)
        return cls(*(torch.zeros(s, dtype=torch.float64) for s in shapes))

    def flatten(self) -> Tensor:
        """Every sum in one float64 vector (for merging and all-reduce)."""
        return torch.cat([t.reshape(-1).to(torch.float64) for t in self])

    @classmethod
    def unflatten(cls, flat: Tensor, num_classes: int, num_bins: int,
                  num_cells: int) -> 'CalibrationStatistics':
        shapes = _shapes(num_classes, num_bins, num_cells)
        sizes = [math.prod(s) for s in shapes]
        if flat.numel() != sum(sizes):
            raise ValueError(f'expected {sum(sizes)} values, got {flat.numel()}')
        parts = torch.split(flat, sizes)
        return cls(*(p.reshape(s) for p, s in zip(parts, shapes)))


def _shapes(num_classes: int, num_bins: int, num_cells: int):
    b, f, c = (num_bins, ), (num_cells, ), (num_classes, num_bins)
    return [b, b, b, f, f, f, c, c, c, (num_classes, ), (), (), ()]


def _bin_index(values: Tensor, num_bins: int) -> Tensor:
    """Index of the equal-width bin ``(b/B, (b+1)/B]`` holding each value."""
    return (values * num_bins).ceil_().sub_(1).clamp_(0, num_bins - 1).long()


def _histogram(index: Tensor, size: int, *weights: Tensor):
    """Counts and weighted sums of ``index`` in ``size`` cells, in float64."""
    count = torch.bincount(index, minlength=size).double()
    return (count, ) + tuple(
        torch.bincount(index, weights=w.double(), minlength=size) for w in weights)


def keep_mask(labels: Tensor, num_classes: int, ignore_index: int = 255,
              exclude_classes: Sequence[int] = ()) -> Tensor:
    """Pixels that count: not ignored, ground truth not excluded.

    Raises:
        ValueError: labels outside ``[0, C)`` other than ``ignore_index``.
    """
    check_label_range(labels, num_classes, ignore_index)
    keep = labels != ignore_index
    for k in exclude_classes:
        keep &= labels != k
    return keep


def _nonfinite_error(num_pixels: int) -> ValueError:
    return ValueError(f'logits hold NaN or infinite values ({num_pixels} pixels); '
                      'a diverged model has no calibration to measure')


def calibration_statistics(logits: Tensor,
                           labels: Tensor,
                           num_bins: int = DEFAULT_NUM_BINS,
                           num_cells: int = DEFAULT_NUM_CELLS,
                           ignore_index: int = 255,
                           exclude_classes: Sequence[int] = (),
                           backend: str = 'auto') -> CalibrationStatistics:
    """Per-bin sums of one image (or any set of pixels).

    Args:
        logits (Tensor): ``(C, *S)`` scores before softmax, any float dtype.
        labels (Tensor): ``(*S)`` class indices.
        num_bins (int): bins ``B`` of ECE, MCE, AECE and CECE.
        num_cells (int): cells ``F`` of the fine AECE histogram.
        ignore_index (int): label of pixels to leave out.
        exclude_classes (sequence[int]): ground-truth classes to leave out.
        backend (str): 'kernel' runs the one-pass CPU kernel, 'torch' the
            PyTorch operations that run on any device, 'auto' the kernel on CPU
            where it is built. Both compute the same sums up to float rounding.

    Returns:
        CalibrationStatistics
    """
    num_classes = logits.shape[0]
    if tuple(labels.shape) != tuple(logits.shape[1:]):
        raise ValueError(f'labels of shape {tuple(labels.shape)} do not match '
                         f'logits of shape {tuple(logits.shape)}')
    z = logits.reshape(num_classes, -1).float()
    y = labels.reshape(-1).long()
    keep = keep_mask(y, num_classes, ignore_index, exclude_classes)
    if use_kernel(backend, z.device.type == 'cpu', 'CPU tensors'):
        *sums, num_nonfinite = kernels.calibration_statistics(
            z.contiguous(), y.contiguous(), keep.contiguous(), num_bins, num_cells)
        if num_nonfinite > 0:
            raise _nonfinite_error(int(num_nonfinite))
        return CalibrationStatistics(*sums)
    if not bool(keep.all()):
        z, y = z[:, keep], y[keep]

    top, prediction = z.max(dim=0)
    prob = torch.exp(z - top)
    partition = prob.sum(dim=0)
    if not bool(torch.isfinite(partition).all()):
        raise _nonfinite_error(int((~torch.isfinite(partition)).sum()))
    prob.div_(partition)
    confidence = partition.reciprocal()
    correct = (prediction == y).double()
    prob_true = prob.gather(0, y.unsqueeze(0)).squeeze(0)
    log_prob_true = z.gather(0, y.unsqueeze(0)).squeeze(0) - top - partition.log()

    bins = _histogram(_bin_index(confidence, num_bins), num_bins, confidence,
                      correct)
    cells = _histogram(_bin_index(confidence, num_cells), num_cells, confidence,
                       correct)
    class_bin = _bin_index(prob, num_bins)
    class_bin += (torch.arange(num_classes, device=z.device) * num_bins).unsqueeze(1)
    class_count, class_probability = _histogram(class_bin.reshape(-1),
                                                num_classes * num_bins,
                                                prob.reshape(-1))
    true_bin = class_bin.gather(0, y.unsqueeze(0)).squeeze(0)
    class_hits = torch.bincount(true_bin, minlength=num_classes * num_bins).double()
    class_shape = (num_classes, num_bins)
    brier = prob.square().sum(dim=0).double() - 2 * prob_true.double() + 1
    return CalibrationStatistics(
        *bins, *cells, class_count.reshape(class_shape),
        class_probability.reshape(class_shape), class_hits.reshape(class_shape),
        torch.bincount(y, minlength=num_classes).double(),
        -log_prob_true.sum(dtype=torch.float64), brier.sum(),
        torch.tensor(float(y.numel()), dtype=torch.float64))


def _equal_mass_bin_sums(count: np.ndarray, confidence: np.ndarray,
                         accuracy: np.ndarray, num_bins: int):
    """Sums of equal-mass bins from fine cells, splitting straddling cells.

    Returns:
        tuple: confidence sums ``[B]``, accuracy sums ``[B]``, and the number of
        pixels in cells that straddle an interior bin boundary.
    """
    occupied = count > 0
    count, confidence, accuracy = count[occupied], confidence[occupied], accuracy[
        occupied]
    cum_count = np.concatenate([[0.0], np.cumsum(count)])
    cum_conf = np.concatenate([[0.0], np.cumsum(confidence)])
    cum_acc = np.concatenate([[0.0], np.cumsum(accuracy)])
    edges = cum_count[-1] * np.arange(num_bins + 1) / num_bins
    # Linear interpolation of the cumulative sums inside a cell is the
    # proportional split of that cell.
    conf_at = np.diff(np.interp(edges, cum_count, cum_conf))
    acc_at = np.diff(np.interp(edges, cum_count, cum_acc))
    cell = np.searchsorted(cum_count, edges[1:-1], side='right') - 1
    inside = (edges[1:-1] > cum_count[cell]) & (edges[1:-1] < cum_count[cell + 1])
    straddling = count[cell[inside]].sum()
    return conf_at, acc_at, straddling


def calibration_errors(stats: CalibrationStatistics) -> Dict[str, object]:
    """Calibration errors of pooled sums (DESIGN.md section 2).

    Args:
        stats (CalibrationStatistics): sums of the pixels to evaluate.

    Returns:
        dict: ``ECE``, ``MCE``, ``AECE``, ``CECE`` and ``aece_error_bound`` in
        percent, ``NLL``, ``Brier`` (floats, NaN when there is no pixel), and
        ``CECE_per_class`` (numpy ``[C]``, percent).
    """
    s = CalibrationStatistics(*(t.double().cpu().numpy() for t in stats))
    n = float(s.num_pixels)
    num_classes, num_bins = s.class_count.shape
    if n == 0:
        nan = float('nan')
        return dict(ECE=nan, MCE=nan, AECE=nan, CECE=nan, NLL=nan, Brier=nan,
                    aece_error_bound=nan,
                    CECE_per_class=np.full(num_classes, nan))
    gap = np.abs(s.bin_accuracy - s.bin_confidence)
    occupied = s.bin_count > 0
    mce = (gap[occupied] / s.bin_count[occupied]).max()
    conf_sums, acc_sums, straddling = _equal_mass_bin_sums(
        s.cell_count, s.cell_confidence, s.cell_accuracy, num_bins)
    num_cells = s.cell_count.shape[0]
    bound = (straddling * (1 + 1 / num_cells) + 2 * (num_bins - 1)) / n
    cece_per_class = np.abs(s.class_hits - s.class_probability).sum(axis=1) / n
    return dict(
        ECE=100 * gap.sum() / n,
        MCE=100 * mce,
        AECE=100 * np.abs(acc_sums - conf_sums).sum() / n,
        CECE=100 * cece_per_class.mean(),
        NLL=float(s.nll_sum) / n,
        Brier=float(s.brier_sum) / n,
        aece_error_bound=100 * bound,
        CECE_per_class=100 * cece_per_class)
