"""Running totals of calibration statistics under either reduction protocol."""
import math
from typing import Dict

import numpy as np
import torch
from torch import Tensor

from ..functional.calibration import (CECE_CLASSES, COVERAGES, CalibrationStatistics,
                                      calibration_errors, image_ece)

# The numbers CalibrationMetric reports, in its log's order.
SCALAR_METRICS = ('ECE', 'MCE', 'AECE', 'CECE', 'NLL', 'Brier', 'ECE_boundary',
                  'ECE_interior', 'CECE_thresholded', 'AURC',
                  *(f'risk@{q}' for q in COVERAGES), 'AUROC', 'ECE_image_median',
                  'ECE_image_p90')
# Error bounds of the histogram-based numbers, reported beside them.
ERROR_BOUNDS = ('aece_error_bound', 'AURC_error_bound',
                *(f'risk@{q}_error_bound' for q in COVERAGES), 'AUROC_error_bound')
# Numbers of one image that the 'image' reduction averages.
_IMAGE_MEANS = tuple(k for k in SCALAR_METRICS
                     if not k.startswith('ECE_image')) + ERROR_BOUNDS
REDUCTIONS = ('dataset', 'image')
# Per-image ECE histogram: cells of 0.01 points over [0, 100] percent.
IMAGE_ECE_CELLS = 10_000


def _image_ece_cell(ece: float) -> int:
    return min(int(ece * IMAGE_ECE_CELLS / 100), IMAGE_ECE_CELLS - 1)


def image_ece_quantile(histogram: np.ndarray, q: float) -> float:
    """The nearest-rank ``q`` quantile of per-image ECEs from their histogram,
    as its cell's centre: within 0.005 points of the exact value."""
    total = histogram.sum()
    if total == 0:
        return float('nan')
    cell = int(np.searchsorted(np.cumsum(histogram), math.ceil(q * total)))
    return (cell + 0.5) * 100 / IMAGE_ECE_CELLS


class CalibrationTotals:
    """Encodes one image's statistics as a float64 vector whose sum over images
    decodes to the metrics of a protocol (docs/metrics.md).

    - 'dataset': the vector holds the image's per-bin sums; the metrics of the
      sum pool every pixel.
    - 'image': the vector holds the image's own metrics, each with a flag saying
      it is defined (and 1, to count the image); the decoded metrics are their
      means over the images where they are defined.

    Both also count the image in a histogram of per-image ECE, for its median
    and 90th percentile. Vectors add, so images, batches and ranks merge with
    ``+`` or an all-reduce; the size does not depend on the number of images.

    Args:
        num_classes (int), num_bins (int), num_cells (int): statistics' sizes.
        reduction (str): 'dataset' or 'image'.
        cece_classes (str): 'all' or 'present', the classes CECE averages over
            (:func:`~cals_seg.functional.calibration.cece_class_count`).
    """

    def __init__(self, num_classes: int, num_bins: int, num_cells: int,
                 reduction: str = 'dataset', cece_classes: str = 'all'):
        if reduction not in REDUCTIONS:
            raise ValueError(f'reduction must be one of {REDUCTIONS}, got '
                             f'{reduction!r}')
        if cece_classes not in CECE_CLASSES:
            raise ValueError(f'cece_classes must be one of {CECE_CLASSES}, got '
                             f'{cece_classes!r}')
        self.cece_classes = cece_classes
        self.num_classes = num_classes
        self.num_bins = num_bins
        self.num_cells = num_cells
        self.reduction = reduction

    def _protocol_size(self) -> int:
        if self.reduction == 'dataset':
            return CalibrationStatistics.size(self.num_classes, self.num_bins,
                                              self.num_cells)
        return 2 * len(_IMAGE_MEANS) + 2 * self.num_classes + 1

    def zeros(self) -> Tensor:
        return torch.zeros(self._protocol_size() + IMAGE_ECE_CELLS,
                           dtype=torch.float64)

    def encode(self, stats: CalibrationStatistics) -> Tensor:
        """The vector that one image adds to the total (on the CPU)."""
        total = self.zeros()
        if float(stats.num_pixels) == 0:
            return total
        if self.reduction == 'dataset':
            total[:self._protocol_size()] = stats.flatten().cpu()
        else:
            errors = calibration_errors(stats, self.cece_classes)
            values = torch.tensor([errors[k] for k in _IMAGE_MEANS],
                                  dtype=torch.float64)
            defined = torch.isfinite(values)
            total[:self._protocol_size()] = torch.cat([
                torch.where(defined, values, torch.zeros_like(values)),
                defined.double(),
                torch.from_numpy(errors['CECE_per_class']),
                stats.class_pixels.double().cpu(),
                torch.ones(1, dtype=torch.float64)
            ])
        total[self._protocol_size() + _image_ece_cell(image_ece(stats))] = 1
        return total

    def decode(self, total: Tensor) -> Dict[str, object]:
        """Metrics of a summed vector.

        Returns:
            dict: what :func:`calibration_errors` returns (for 'image', the
            scalars' and bounds' means and ``CECE_per_class``), plus
            ``class_pixels`` (``[C]``), ``num_images``, ``ECE_image_median``,
            ``ECE_image_p90`` and ``image_ece_histogram``.
        """
        total = total.cpu()
        protocol, histogram = total[:self._protocol_size()], total[
            self._protocol_size():].numpy()
        if self.reduction == 'dataset':
            stats = CalibrationStatistics.unflatten(protocol, self.num_classes,
                                                    self.num_bins, self.num_cells)
            result = calibration_errors(stats, self.cece_classes)
            result['class_pixels'] = stats.class_pixels.numpy()
        else:
            values = protocol.numpy()
            m, c = len(_IMAGE_MEANS), self.num_classes
            sums, counts = values[:m], values[m:2 * m]
            with np.errstate(invalid='ignore', divide='ignore'):
                means = np.where(counts > 0, sums / counts, np.nan)
            result = dict(zip(_IMAGE_MEANS, means.tolist()))
            num_images = values[-1]
            result['CECE_per_class'] = (values[2 * m:2 * m + c] / num_images
                                        if num_images else np.full(c, np.nan))
            result['class_pixels'] = values[2 * m + c:2 * m + 2 * c]
        result['num_images'] = int(histogram.sum())
        result['ECE_image_median'] = image_ece_quantile(histogram, 0.5)
        result['ECE_image_p90'] = image_ece_quantile(histogram, 0.9)
        result['image_ece_histogram'] = histogram
        return result
