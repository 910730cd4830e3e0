"""Streaming pixel-level calibration statistics and the errors computed from them.

A functional core in two stages (definitions: docs/metrics.md):

1. :func:`calibration_statistics` turns one image's logits and labels into small,
   additive per-bin sums (:class:`CalibrationStatistics`); sums of several images
   or ranks are their element-wise sum, so pooling a dataset is exact streaming.
2. :func:`calibration_errors` computes ECE, MCE, AECE, CECE, NLL and Brier from
   such sums.

Bins are equal-width ``(lower, upper]``. The fine confidence histogram
(``num_cells`` equal-width cells, each with its count, confidence sum and accuracy
sum) gives everything that needs pixels ordered by confidence: AECE's equal-mass
bins, the risk-coverage curve (AURC, risk at a coverage) and the AUROC of
telling right from wrong pixels by confidence. Inside a cell the order of right
and wrong pixels is unknown, so each of these is computed as if they were evenly
mixed and comes with a bound on its distance from the exact value (any order of
pixels of equal confidence is exact):

- AECE: ``2 * sum over equal-mass boundaries of (min(a, n - a) + n / F) / N``,
  ``n`` and ``a`` the pixels and right pixels of the cell a boundary cuts: a cut
  can move at most ``min(a, n - a)`` right pixels and ``n / F`` of confidence
  from one bin to its neighbour, changing two bins' gaps. The bins' sizes are
  those of ``numpy.array_split`` of the sorted pixels, so whole pixels are exact.
- AUROC: half the right-wrong pairs that share a cell, over all such pairs.
- AURC and risk at a coverage: at most ``min(w, n - w)`` wrong pixels are
  misplaced inside a cell, divided by each position's coverage count.

Boundary pixels are those within ``boundary_width`` pixels (a square window) of
a pixel of another label; the ignore label counts as another label, because in
VOC and Cityscapes ignored pixels trace object outlines, but ignored pixels are
never evaluated, and the image border is not a boundary.
"""
import math
from typing import Dict, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .labels import check_label_range
from .neighbourhood import boundary_mask
from .. import ops
from ..ops import use_kernel

DEFAULT_NUM_BINS = 15
DEFAULT_NUM_CELLS = 2**16
# LTS's boundary areas (uncbiag/LTS, find_boundary_nearby_areas_CamVid.py): 2 px.
DEFAULT_BOUNDARY_WIDTH = 2
# CRaC's thresholded class-wise ECE (Bala93/CRac, evaluation/metrics.py): 1e-3.
DEFAULT_CLASS_THRESHOLD = 1e-3
COVERAGES = (80, 90, 95)


class CalibrationStatistics(NamedTuple):
    """Additive sums of kept pixels (float64 tensors).

    Attributes:
        bin_count, bin_confidence, bin_accuracy: ``[B]`` top-label bins.
        cell_count, cell_confidence, cell_accuracy: ``[F]`` fine cells (AECE).
        class_count, class_probability, class_hits: ``[C, B]`` per-class bins of
            ``p_ik`` over all kept pixels; hits count pixels with ``y_i = k``.
        class_pixels: ``[C]`` kept pixels per ground-truth class.
        boundary_count, boundary_confidence, boundary_accuracy: ``[B]`` top-label
            bins of boundary pixels only.
        low_count, low_probability, low_hits: ``[C]`` sums of ``p_ik`` at or
            below the class threshold, left out of thresholded CECE.
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
    boundary_count: Tensor
    boundary_confidence: Tensor
    boundary_accuracy: Tensor
    low_count: Tensor
    low_probability: Tensor
    low_hits: Tensor
    nll_sum: Tensor
    brier_sum: Tensor
    num_pixels: Tensor

    @classmethod
    def zeros(cls, num_classes: int, num_bins: int = DEFAULT_NUM_BINS,
              num_cells: int = DEFAULT_NUM_CELLS) -> 'CalibrationStatistics':
        shapes = _shapes(num_classes, num_bins, num_cells)
        return cls(*(torch.zeros(s, dtype=torch.float64) for s in shapes))

    @staticmethod
    def size(num_classes: int, num_bins: int = DEFAULT_NUM_BINS,
             num_cells: int = DEFAULT_NUM_CELLS) -> int:
        """Length of :meth:`flatten`'s vector."""
        return sum(math.prod(s) for s in _shapes(num_classes, num_bins, num_cells))

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
    k = (num_classes, )
    return [b, b, b, f, f, f, c, c, c, k, b, b, b, k, k, k, (), (), ()]


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
                           backend: str = 'auto',
                           boundary_width: Optional[int] = None,
                           class_threshold: float = DEFAULT_CLASS_THRESHOLD
                           ) -> CalibrationStatistics:
    """Per-bin sums of one image (or any set of pixels).

    Args:
        logits (Tensor): ``(C, *S)`` scores before softmax, any float dtype.
        labels (Tensor): ``(*S)`` class indices.
        num_bins (int): bins ``B`` of ECE, MCE, AECE and CECE.
        num_cells (int): cells ``F`` of the fine confidence histogram.
        ignore_index (int): label of pixels to leave out.
        exclude_classes (sequence[int]): ground-truth classes to leave out.
        backend (str): 'kernel' runs the one-pass CPU kernel, 'torch' the
            PyTorch operations that run on any device, 'auto' the kernel on CPU
            where it is built. Both compute the same sums up to float rounding.
        boundary_width (int, optional): fill the boundary sums with the pixels
            within this many pixels of a label boundary (``labels`` must be
            maps); None leaves them empty.
        class_threshold (float): class probabilities at or below it are summed
            apart, for thresholded CECE.

    Returns:
        CalibrationStatistics
    """
    num_classes = logits.shape[0]
    if not 0 <= class_threshold <= 1 / num_bins:
        raise ValueError(f'class_threshold must be in [0, 1 / num_bins], got '
                         f'{class_threshold}')
    if tuple(labels.shape) != tuple(logits.shape[1:]):
        raise ValueError(f'labels of shape {tuple(labels.shape)} do not match '
                         f'logits of shape {tuple(logits.shape)}')
    z = logits.reshape(num_classes, -1).float()
    y = labels.reshape(-1).long()
    keep = keep_mask(y, num_classes, ignore_index, exclude_classes)
    if boundary_width is None:
        boundary = torch.zeros(0, dtype=torch.bool, device=y.device)
    else:
        boundary = boundary_mask(labels, boundary_width).reshape(-1)
    if use_kernel(backend, z.device.type == 'cpu', 'CPU tensors'):
        statistics, num_nonfinite = ops.calibration_statistics(
            CalibrationStatistics, z.contiguous(), y.contiguous(), keep.contiguous(),
            boundary.contiguous(), class_threshold, num_bins, num_cells)
        if num_nonfinite > 0:
            raise _nonfinite_error(int(num_nonfinite))
        return statistics
    if not bool(keep.all()):
        z, y = z[:, keep], y[keep]
        boundary = boundary[keep] if boundary.numel() else boundary

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

    top_bin = _bin_index(confidence, num_bins)
    bins = _histogram(top_bin, num_bins, confidence, correct)
    cells = _histogram(_bin_index(confidence, num_cells), num_cells, confidence,
                       correct)
    if boundary.numel():
        boundary_bins = _histogram(top_bin[boundary], num_bins, confidence[boundary],
                                   correct[boundary])
    else:
        boundary_bins = tuple(torch.zeros_like(t) for t in bins)
    class_bin = _bin_index(prob, num_bins)
    class_bin += (torch.arange(num_classes, device=z.device) * num_bins).unsqueeze(1)
    class_count, class_probability = _histogram(class_bin.reshape(-1),
                                                num_classes * num_bins,
                                                prob.reshape(-1))
    true_bin = class_bin.gather(0, y.unsqueeze(0)).squeeze(0)
    class_hits = torch.bincount(true_bin, minlength=num_classes * num_bins).double()
    class_shape = (num_classes, num_bins)
    low = prob <= class_threshold
    low_sums = (low.sum(dim=1).double(), (prob * low).sum(dim=1).double(),
                torch.bincount(y[prob_true <= class_threshold],
                               minlength=num_classes).double())
    brier = prob.square().sum(dim=0).double() - 2 * prob_true.double() + 1
    return CalibrationStatistics(
        *bins, *cells, class_count.reshape(class_shape),
        class_probability.reshape(class_shape), class_hits.reshape(class_shape),
        torch.bincount(y, minlength=num_classes).double(), *boundary_bins,
        *low_sums, -log_prob_true.sum(dtype=torch.float64), brier.sum(),
        torch.tensor(float(y.numel()), dtype=torch.float64))


def _equal_mass_bin_sums(count: np.ndarray, confidence: np.ndarray,
                         accuracy: np.ndarray, num_bins: int):
    """Sums of equal-mass bins from fine cells, splitting the cells that straddle
    a bin boundary in proportion.

    Returns:
        tuple: confidence sums ``[B]``, accuracy sums ``[B]``, and the AECE error
        bound's numerator (see the module docstring) before ``/ N``.
    """
    num_cells = len(count)
    occupied = count > 0
    count, confidence, accuracy = count[occupied], confidence[occupied], accuracy[
        occupied]
    cum_count = np.concatenate([[0.0], np.cumsum(count)])
    cum_conf = np.concatenate([[0.0], np.cumsum(confidence)])
    cum_acc = np.concatenate([[0.0], np.cumsum(accuracy)])
    total = int(round(cum_count[-1]))
    # numpy.array_split's sizes: the first N mod B bins hold one pixel more.
    sizes = np.full(num_bins, total // num_bins)
    sizes[:total % num_bins] += 1
    edges = np.concatenate([[0], np.cumsum(sizes)]).astype(np.float64)
    # Linear interpolation of the cumulative sums inside a cell is the
    # proportional split of that cell.
    conf_at = np.diff(np.interp(edges, cum_count, cum_conf))
    acc_at = np.diff(np.interp(edges, cum_count, cum_acc))
    cut = edges[1:-1]
    cell = np.clip(np.searchsorted(cum_count, cut, side='right') - 1, 0,
                   len(count) - 1)
    inside = (cut > cum_count[cell]) & (cut < cum_count[cell + 1])
    n, a = count[cell[inside]], accuracy[cell[inside]]
    bound = 2 * (np.minimum(a, n - a) + n / num_cells).sum()
    return conf_at, acc_at, bound


def _descending_cells(stats: CalibrationStatistics):
    """Occupied cells from the most to the least confident: pixels ``n``, wrong
    pixels ``w`` and pixels in more confident cells ``n0``, wrong ones ``w0``."""
    n = stats.cell_count[::-1]
    w = n - stats.cell_accuracy[::-1]
    occupied = n > 0
    n, w = n[occupied], w[occupied]
    n0 = np.concatenate([[0.0], np.cumsum(n)[:-1]])
    w0 = np.concatenate([[0.0], np.cumsum(w)[:-1]])
    return n, w, n0, w0


def selective_risk(stats: CalibrationStatistics,
                   coverages: Sequence[int] = COVERAGES) -> Dict[str, float]:
    """Selective classification by the top-label confidence.

    Pixels are accepted from the most confident down; at coverage ``n / N`` the
    risk is the share of wrong pixels among the ``n`` accepted. AURC is the mean
    risk over ``n = 1 .. N`` (Geifman et al. 2019). AUROC is the probability that
    a right pixel is more confident than a wrong one (ties count half), as
    ``sklearn.metrics.roc_auc_score(correct, confidence)``.

    Returns:
        dict: ``AURC``, ``risk@q`` for each coverage ``q`` (percent) and
        ``AUROC`` (percent), each with an ``_error_bound`` of the same unit;
        NaN where undefined (no pixel; AUROC without right or wrong pixels).
    """
    nan = float('nan')
    n, w, n0, w0 = _descending_cells(
        CalibrationStatistics(*(np.asarray(t, dtype=np.float64) for t in stats)))
    total = n.sum()
    result = {'AURC': nan, 'AURC_error_bound': nan, 'AUROC': nan,
              'AUROC_error_bound': nan}
    for q in coverages:
        result[f'risk@{q}'] = result[f'risk@{q}_error_bound'] = nan
    if total == 0:
        return result
    # Sum over j = 1..n of (w0 + w j / n) / (n0 + j), in closed form with the
    # digamma function: (w0 - w n0 / n) (psi(n0 + n + 1) - psi(n0 + 1)) + w.
    harmonic = (torch.special.digamma(torch.from_numpy(n0 + n + 1)) -
                torch.special.digamma(torch.from_numpy(n0 + 1))).numpy()
    mixed = np.minimum(w, n - w)
    result['AURC'] = 100 * ((w0 - w * n0 / n) * harmonic + w).sum() / total
    result['AURC_error_bound'] = 100 * (mixed * harmonic).sum() / total
    end = n0 + n
    for q in coverages:
        accepted = max(1.0, math.ceil(q / 100 * total))
        c = int(np.searchsorted(end, accepted, side='left'))
        j = accepted - n0[c]
        wrong = w0[c] + w[c] * j / n[c]
        misplaced = min(mixed[c], j, n[c] - j)
        result[f'risk@{q}'] = 100 * wrong / accepted
        result[f'risk@{q}_error_bound'] = 100 * misplaced / accepted
    right = n - w
    num_right, num_wrong = right.sum(), w.sum()
    if num_right > 0 and num_wrong > 0:
        wrong_below = num_wrong - w0 - w
        pairs = num_right * num_wrong
        result['AUROC'] = 100 * (right * (wrong_below + w / 2)).sum() / pairs
        result['AUROC_error_bound'] = 100 * (right * w / 2).sum() / pairs
    return result


def _binned_gap(count: np.ndarray, confidence: np.ndarray, accuracy: np.ndarray,
                num_pixels: float) -> float:
    """``sum_b |accuracy_b - confidence_b| / N`` in percent (NaN without pixels)."""
    if num_pixels == 0:
        return float('nan')
    return float(100 * np.abs(accuracy - confidence).sum() / num_pixels)


def image_ece(stats: CalibrationStatistics) -> float:
    """ECE (percent) of one image's statistics, cheaply: from the top-label bins."""
    return _binned_gap(stats.bin_count.double().cpu().numpy(),
                       stats.bin_confidence.double().cpu().numpy(),
                       stats.bin_accuracy.double().cpu().numpy(),
                       float(stats.num_pixels))


CECE_CLASSES = ('all', 'present')


def cece_class_count(stats: CalibrationStatistics, cece_classes: str = 'all') -> int:
    """How many classes, from class 0 on, class-wise ECE averages over.

    'all': every class ``C`` (a class absent from the labels still counts: the
    probability put on it is miscalibration). 'present': classes ``0..max(y)``
    of the kept pixels, the protocol of the CRaC and NACL authors' evaluators,
    which average each image's class-wise ECE over ``range(max(label) + 1)``;
    with the 'image' reduction that is per image, as theirs.
    """
    if cece_classes not in CECE_CLASSES:
        raise ValueError(f'cece_classes must be one of {CECE_CLASSES}, got '
                         f'{cece_classes!r}')
    num_classes = stats.class_pixels.shape[0]
    if cece_classes == 'all':
        return num_classes
    present = np.flatnonzero(np.asarray(stats.class_pixels) > 0)
    return int(present[-1]) + 1 if len(present) else num_classes


def calibration_errors(stats: CalibrationStatistics,
                       cece_classes: str = 'all') -> Dict[str, object]:
    """Calibration errors of pooled sums (definitions: docs/metrics.md).

    Args:
        stats (CalibrationStatistics): sums of the pixels to evaluate.
        cece_classes (str): the classes CECE and thresholded CECE average over,
            'all' or 'present' (:func:`cece_class_count`); ``CECE_per_class``
            always lists every class.

    Returns:
        dict: in percent, ``ECE``, ``MCE``, ``AECE``, ``CECE``,
        ``ECE_boundary`` and ``ECE_interior`` (each over its own pixels),
        ``CECE_thresholded`` (class probabilities at or below the threshold
        left out, each class normalised by its remaining pixels, as CRaC) and
        what :func:`selective_risk` returns; ``NLL``, ``Brier``;
        ``aece_error_bound``; ``CECE_per_class`` (numpy ``[C]``). NaN where
        there is no pixel to measure.
    """
    s = CalibrationStatistics(*(t.double().cpu().numpy() for t in stats))
    averaged = cece_class_count(s, cece_classes)
    n = float(s.num_pixels)
    num_classes, num_bins = s.class_count.shape
    nan = float('nan')
    boundary_pixels = float(s.boundary_count.sum())
    result = dict(
        ECE_boundary=_binned_gap(s.boundary_count, s.boundary_confidence,
                                 s.boundary_accuracy, boundary_pixels),
        ECE_interior=_binned_gap(s.bin_count - s.boundary_count,
                                 s.bin_confidence - s.boundary_confidence,
                                 s.bin_accuracy - s.boundary_accuracy,
                                 n - boundary_pixels),
        boundary_pixels=boundary_pixels)
    result.update(selective_risk(s))
    if n == 0:
        result.update(ECE=nan, MCE=nan, AECE=nan, CECE=nan, CECE_thresholded=nan,
                      NLL=nan, Brier=nan, aece_error_bound=nan,
                      CECE_per_class=np.full(num_classes, nan))
        return result
    gap = np.abs(s.bin_accuracy - s.bin_confidence)
    occupied = s.bin_count > 0
    mce = (gap[occupied] / s.bin_count[occupied]).max()
    conf_sums, acc_sums, bound = _equal_mass_bin_sums(
        s.cell_count, s.cell_confidence, s.cell_accuracy, num_bins)
    cece_per_class = np.abs(s.class_hits - s.class_probability).sum(axis=1) / n
    # Thresholded: the low sums all lie in the first bin (threshold <= 1 / B).
    hits, probability = s.class_hits.copy(), s.class_probability.copy()
    hits[:, 0] -= s.low_hits
    probability[:, 0] -= s.low_probability
    remaining = n - s.low_count
    thresholded = np.where(
        remaining > 0,
        np.abs(hits - probability).sum(axis=1) / np.maximum(remaining, 1), 0.0)
    result.update(
        ECE=_binned_gap(s.bin_count, s.bin_confidence, s.bin_accuracy, n),
        MCE=100 * mce,
        AECE=100 * np.abs(acc_sums - conf_sums).sum() / n,
        CECE=100 * cece_per_class[:averaged].mean(),
        CECE_thresholded=100 * thresholded[:averaged].mean(),
        NLL=float(s.nll_sum) / n,
        Brier=float(s.brier_sum) / n,
        aece_error_bound=100 * bound / n,
        CECE_per_class=100 * cece_per_class)
    return result
