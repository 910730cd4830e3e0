"""Running totals of calibration statistics under either reduction protocol."""
from typing import Dict

import numpy as np
import torch
from torch import Tensor

from .calibration import CalibrationStatistics, calibration_errors

SCALAR_METRICS = ('ECE', 'MCE', 'AECE', 'CECE', 'NLL', 'Brier')
REDUCTIONS = ('dataset', 'image')


class CalibrationTotals:
    """Encodes one image's statistics as a float64 vector whose sum over images
    decodes to the metrics of a protocol (DESIGN.md section 2).

    - 'dataset': the vector is the image's per-bin sums; the metrics of the sum
      pool every pixel.
    - 'image': the vector is the image's own metrics (and 1, to count it); the
      decoded metrics are their means over images with at least one kept pixel.

    Vectors add, so images, batches and ranks merge with ``+`` or an all-reduce.

    Args:
        num_classes (int), num_bins (int), num_cells (int): statistics' sizes.
        reduction (str): 'dataset' or 'image'.
    """

    def __init__(self, num_classes: int, num_bins: int, num_cells: int,
                 reduction: str = 'dataset'):
        if reduction not in REDUCTIONS:
            raise ValueError(f'reduction must be one of {REDUCTIONS}, got '
                             f'{reduction!r}')
        self.num_classes = num_classes
        self.num_bins = num_bins
        self.num_cells = num_cells
        self.reduction = reduction
        self._num_scalars = len(SCALAR_METRICS) + 1

    def zeros(self) -> Tensor:
        if self.reduction == 'dataset':
            return CalibrationStatistics.zeros(self.num_classes, self.num_bins,
                                               self.num_cells).flatten()
        return torch.zeros(self._num_scalars + 2 * self.num_classes + 1,
                           dtype=torch.float64)

    def encode(self, stats: CalibrationStatistics) -> Tensor:
        """The vector that one image adds to the total (on the CPU)."""
        if self.reduction == 'dataset':
            return stats.flatten().cpu()
        if float(stats.num_pixels) == 0:
            return self.zeros()
        errors = calibration_errors(stats)
        scalars = [errors[k] for k in SCALAR_METRICS] + [errors['aece_error_bound']]
        return torch.cat([
            torch.tensor(scalars, dtype=torch.float64),
            torch.from_numpy(errors['CECE_per_class']),
            stats.class_pixels.double().cpu(),
            torch.ones(1, dtype=torch.float64)
        ])

    def decode(self, total: Tensor) -> Dict[str, object]:
        """Metrics of a summed vector.

        Returns:
            dict: what :func:`calibration_errors` returns, plus ``class_pixels``
            (``[C]``) and, for 'image', ``num_images``.
        """
        if self.reduction == 'dataset':
            stats = CalibrationStatistics.unflatten(total.cpu(), self.num_classes,
                                                    self.num_bins, self.num_cells)
            result = calibration_errors(stats)
            result['class_pixels'] = stats.class_pixels.numpy()
            return result
        total = total.cpu().numpy()
        k, c = self._num_scalars, self.num_classes
        num_images = total[-1]
        scale = 1 / num_images if num_images else np.nan
        result = dict(
            zip(list(SCALAR_METRICS) + ['aece_error_bound'], total[:k] * scale))
        result['CECE_per_class'] = total[k:k + c] * scale
        result['class_pixels'] = total[k + c:k + 2 * c]
        result['num_images'] = int(num_images)
        return result
