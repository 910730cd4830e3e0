"""CalibrationMetric: streaming pixel-level calibration errors in val/test loops."""
import heapq
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.dist import (all_gather_object, all_reduce, get_rank,
                           get_world_size)
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger, print_log
from prettytable import PrettyTable

from mmseg.registry import METRICS

from ...functional.calibration import (CECE_CLASSES, DEFAULT_BOUNDARY_WIDTH,
                                       DEFAULT_CLASS_THRESHOLD, DEFAULT_NUM_BINS,
                                       DEFAULT_NUM_CELLS, calibration_statistics,
                                       image_ece)
from ..accumulator import (ERROR_BOUNDS, REDUCTIONS, SCALAR_METRICS,
                           CalibrationTotals)


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
    """Pixel-level calibration and selective risk of a segmentor.

    Reports, in percent: ECE, MCE, AECE, CECE; ECE of boundary and interior
    pixels apart; CECE with class probabilities <= 1e-3 left out (as CRaC);
    AURC, risk at 80/90/95 % coverage and misclassification-detection AUROC from
    the top-label confidence; the median and 90th percentile of per-image ECE.
    And NLL, Brier. The log also names the worst-calibrated images and states the
    error bound of every histogram-based number. Definitions: docs/metrics.md
    and :mod:`cals_seg.functional.calibration`. Works beside IoUMetric::

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
        num_cells (int): cells of the fine confidence histogram behind AECE,
            AURC and AUROC. Default: 65536.
        boundary_width (int, optional): pixels within this many pixels of a
            label boundary are boundary pixels; None leaves out the boundary
            split. Default: 2 (LTS's boundary areas).
        class_threshold (float): class probabilities at or below it are left
            out of ``CECE_thresholded``. Default: 1e-3.
        cece_classes (str): the classes CECE and thresholded CECE average
            over: 'all' ``C`` classes, or 'present', classes ``0..max(label)``
            (per image with ``reduction='image'``), as the CRaC and NACL
            authors' evaluators do. Default: 'all'.
        worst_images (int): how many of the worst-calibrated images (highest
            ECE) the log names; after ``evaluate`` they are also in
            ``last_worst_images`` as ``(ECE, img_path)``, worst first. Default: 5.
        collect_device (str): 'cpu' or 'gpu', as for every mmengine metric.
        prefix (str, optional): prefix of the metric names.
    """

    def __init__(self,
                 num_bins: int = DEFAULT_NUM_BINS,
                 ignore_index: int = 255,
                 reduction: str = 'dataset',
                 exclude_classes: Sequence[Union[int, str]] = (),
                 num_cells: int = DEFAULT_NUM_CELLS,
                 boundary_width: Optional[int] = DEFAULT_BOUNDARY_WIDTH,
                 class_threshold: float = DEFAULT_CLASS_THRESHOLD,
                 cece_classes: str = 'all',
                 worst_images: int = 5,
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
        if boundary_width is not None and not (isinstance(boundary_width, int)
                                               and boundary_width >= 1):
            raise ValueError('boundary_width must be None or an int >= 1, got '
                             f'{boundary_width!r}')
        if not 0 <= class_threshold <= 1 / num_bins:
            raise ValueError('class_threshold must be in [0, 1 / num_bins], got '
                             f'{class_threshold!r}')
        if not (isinstance(worst_images, int) and worst_images >= 0):
            raise ValueError(f'worst_images must be an int >= 0, got {worst_images!r}')
        if cece_classes not in CECE_CLASSES:
            raise ValueError(f'cece_classes must be one of {CECE_CLASSES}, got '
                             f'{cece_classes!r}')
        self.cece_classes = cece_classes
        self.exclude_classes = tuple(exclude_classes)
        self.boundary_width = boundary_width
        self.class_threshold = class_threshold
        self.worst_images = worst_images
        self.last_worst_images: List[Tuple[float, str]] = []
        self._reset()

    def _reset(self) -> None:
        self._total: Optional[torch.Tensor] = None
        self._latest: Optional[torch.Tensor] = None
        # (ECE, image path) of the worst images folded in, and of the latest.
        self._worst: List[Tuple[float, str]] = []
        self._latest_image: Optional[Tuple[float, str]] = None
        self._num_processed = 0

    def _fold_latest(self) -> torch.Tensor:
        """Add the held-back sample to the running total and the worst list."""
        self._total = self._latest if self._total is None else (
            self._total.add_(self._latest))
        if self._latest_image[0] == self._latest_image[0]:  # not NaN
            self._worst = heapq.nlargest(self.worst_images,
                                         self._worst + [self._latest_image])
        return self._total

    @property
    def num_classes(self) -> int:
        return len(self.dataset_meta['classes'])

    def _excluded(self) -> List[int]:
        return resolve_classes(self.exclude_classes, self.dataset_meta['classes'])

    def _totals(self) -> CalibrationTotals:
        return CalibrationTotals(self.num_classes, self.num_bins, self.num_cells,
                                 self.reduction, self.cece_classes)

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
            stats = calibration_statistics(
                logits, labels, self.num_bins, self.num_cells, self.ignore_index,
                excluded, boundary_width=self.boundary_width,
                class_threshold=self.class_threshold)
            if self._latest is not None:
                self._fold_latest()
            self._latest = totals.encode(stats)
            self._latest_image = (image_ece(stats), str(sample.get('img_path', '')))
            self._num_processed += 1

    def evaluate(self, size: int) -> dict:
        """Merge the ranks' totals and compute the metrics.

        Args:
            size (int): length of the evaluated dataset.

        Returns:
            dict: the scalar metrics, with ``prefix/`` when a prefix is set.
        """
        totals = self._totals()
        last_position = (self._num_processed - 1) * get_world_size() + get_rank()
        if self._latest is not None and last_position < size:
            self._fold_latest()
        total = totals.zeros() if self._total is None else self._total
        all_reduce(total, op='sum')
        result = totals.decode(total)
        ranks_worst = all_gather_object(self._worst)
        result['worst_images'] = heapq.nlargest(
            self.worst_images, [item for worst in ranks_worst for item in worst])
        self.last_worst_images = result['worst_images']
        metrics = self.compute_metrics([result])
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
        bounds = ', '.join(f'{k.replace("_error_bound", "").replace("aece", "AECE")}'
                           f' {result[k]:.4g}' for k in ERROR_BOUNDS)
        print_log(f'per-class calibration ({protocol}):\n' + table.get_string(),
                  logger)
        print_log(f'calibration: {summary}', logger)
        print_log(f'histogram error bounds (largest distance from the exact '
                  f'value, same units): {bounds}', logger)
        if result.get('worst_images'):
            worst = ', '.join(f'{name} ({ece:.2f})'
                              for ece, name in result['worst_images'])
            print_log(f'worst-calibrated images (ECE %): {worst}', logger)
