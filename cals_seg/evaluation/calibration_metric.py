"""CalibrationMetric: streaming pixel-level calibration errors in val/test loops."""
from typing import Dict, List, Optional, Sequence, Union

import torch
from mmengine.dist import all_reduce, get_rank, get_world_size
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger, print_log
from prettytable import PrettyTable

from mmseg.registry import METRICS

from .accumulator import REDUCTIONS, SCALAR_METRICS, CalibrationTotals
from .calibration import (DEFAULT_NUM_BINS, DEFAULT_NUM_CELLS,
                          calibration_statistics)


def resolve_classes(classes: Sequence[Union[int, str]],
                    class_names: Sequence[str]) -> List[int]:
    """Class indices of ``classes``, given as indices or names."""
    indices = []
    for item in classes:
        if isinstance(item, str):
            if item not in class_names:
                raise ValueError(f'unknown class {item!r} in exclude_classes; the '
                                 f'classes are {list(class_names)}')
            indices.append(list(class_names).index(item))
        elif isinstance(item, int) and 0 <= item < len(class_names):
            indices.append(item)
        else:
            raise ValueError(f'exclude_classes entry {item!r} is neither a class '
                             f'name nor an index in [0, {len(class_names)})')
    return indices


@METRICS.register_module()
class CalibrationMetric(BaseMetric):
    """Pixel-level calibration errors: ECE, MCE, AECE, CECE (percent), NLL, Brier.

    Definitions: DESIGN.md section 2. Works beside IoUMetric::

        val_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU']),
                         dict(type='CalibrationMetric')]

    Streaming: ``process`` reduces each sample's ``seg_logits`` and ``gt_sem_seg``
    to per-bin sums (:func:`calibration_statistics`) and folds them into one
    running total per rank, so memory does not grow with the number of images.
    The sums are additive, so ``evaluate`` all-reduces the ranks' totals instead
    of gathering per-sample results. mmengine's DefaultSampler pads the dataset
    with at most one repeated sample at the end of some ranks, which
    ``collect_results`` would drop; this metric holds each rank's latest sample
    back and drops it by the same rule, so every image counts exactly once.

    Args:
        num_bins (int): bins of every binned error. Default: 15.
        ignore_index (int): label of pixels to leave out. Default: 255.
        reduction (str): 'dataset' pools all pixels; 'image' averages per-image
            errors over images (the CALS authors' protocol). Default: 'dataset'.
        exclude_classes (sequence[int | str]): ground-truth classes whose pixels
            are left out, by index or name (e.g. ``['background']``).
        num_cells (int): cells of the fine confidence histogram behind AECE.
            Default: 65536.
        collect_device (str): 'cpu' or 'gpu', as for every mmengine metric.
        prefix (str, optional): prefix of the metric names.
    """

    def __init__(self,
                 num_bins: int = DEFAULT_NUM_BINS,
                 ignore_index: int = 255,
                 reduction: str = 'dataset',
                 exclude_classes: Sequence[Union[int, str]] = (),
                 num_cells: int = DEFAULT_NUM_CELLS,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if not (isinstance(num_bins, int) and num_bins >= 1):
            raise ValueError(f'num_bins must be an int >= 1, got {num_bins!r}')
        if not (isinstance(num_cells, int) and num_cells >= num_bins):
            raise ValueError(f'num_cells must be an int >= num_bins, got '
                             f'{num_cells!r}')
        self.num_bins = num_bins
        self.num_cells = num_cells
        self.ignore_index = ignore_index
        if reduction not in REDUCTIONS:
            raise ValueError(f'reduction must be one of {REDUCTIONS}, got '
                             f'{reduction!r}')
        self.reduction = reduction
        self.exclude_classes = tuple(exclude_classes)
        self._reset()

    def _reset(self) -> None:
        self._total: Optional[torch.Tensor] = None
        self._latest: Optional[torch.Tensor] = None
        self._num_processed = 0

    @property
    def num_classes(self) -> int:
        return len(self.dataset_meta['classes'])

    def _excluded(self) -> List[int]:
        return resolve_classes(self.exclude_classes, self.dataset_meta['classes'])

    def _totals(self) -> CalibrationTotals:
        return CalibrationTotals(self.num_classes, self.num_bins, self.num_cells,
                                 self.reduction)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Fold each sample's per-bin sums into this rank's running total.

        Args:
            data_batch: unused.
            data_samples (sequence[dict]): with ``seg_logits`` ``(C, H, W)`` and
                ``gt_sem_seg`` ``(1, H, W)`` at the same size.
        """
        if self.dataset_meta is None or 'classes' not in self.dataset_meta:
            raise ValueError('CalibrationMetric needs dataset_meta with classes; '
                             "the evaluator sets it from the dataset's metainfo")
        excluded = self._excluded()
        totals = self._totals()
        for sample in data_samples:
            if 'seg_logits' not in sample:
                raise KeyError('CalibrationMetric needs seg_logits in the '
                               "predictions; mmseg segmentors' predict adds them")
            logits = sample['seg_logits']['data']
            labels = sample['gt_sem_seg']['data'].squeeze(0).to(logits.device)
            if logits.shape[0] != self.num_classes:
                raise ValueError(f'seg_logits have {logits.shape[0]} classes, the '
                                 f'dataset has {self.num_classes}')
            stats = calibration_statistics(logits, labels, self.num_bins,
                                           self.num_cells, self.ignore_index,
                                           excluded)
            if self._latest is not None:
                self._total = self._latest if self._total is None else (
                    self._total.add_(self._latest))
            self._latest = totals.encode(stats)
            self._num_processed += 1

    def evaluate(self, size: int) -> dict:
        """Merge the ranks' totals and compute the metrics.

        Args:
            size (int): length of the evaluated dataset.

        Returns:
            dict: the scalar metrics, with ``prefix/`` when a prefix is set.
        """
        totals = self._totals()
        total = totals.zeros() if self._total is None else self._total
        last_position = (self._num_processed - 1) * get_world_size() + get_rank()
        if self._latest is not None and last_position < size:
            total = total + self._latest
        all_reduce(total, op='sum')
        metrics = self.compute_metrics([totals.decode(total)])
        self._reset()
        if self.prefix:
            metrics = {f'{self.prefix}/{k}': v for k, v in metrics.items()}
        return metrics

    def compute_metrics(self, results: list) -> Dict[str, float]:
        """Scalar metrics of the decoded total (``results`` holds just that)."""
        result = results[0]
        self._log_class_table(result)
        return {key: float(result[key]) for key in SCALAR_METRICS}

    def _log_class_table(self, result: Dict[str, object]) -> None:
        logger = MMLogger.get_current_instance()
        table = PrettyTable()
        table.add_column('Class', list(self.dataset_meta['classes']))
        table.add_column('CECE (%)', [f'{v:.2f}' for v in result['CECE_per_class']])
        table.add_column('Pixels', [f'{int(v)}' for v in result['class_pixels']])
        protocol = f'reduction={self.reduction}'
        if self.exclude_classes:
            protocol += f', excluding {list(self.exclude_classes)}'
        summary = ', '.join(f'{k} {result[k]:.4f}' for k in SCALAR_METRICS)
        print_log(f'per-class calibration ({protocol}):\n' + table.get_string(),
                  logger)
        print_log(f'calibration: {summary} (AECE within '
                  f'{result["aece_error_bound"]:.4f} of the exact value)', logger)
