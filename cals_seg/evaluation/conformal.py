"""Conformal pixel sets over a dataset: calibrate on held-out images, save,
load, measure on test images (streaming, one image at a time, at full
resolution). The maths is in :mod:`cals_seg.functional.conformal`.

A :class:`ConformalSets` holds two sets of thresholds fitted from the same
calibration pass:

- ``coverage``: one threshold for every class, so that the expected share of a
  new image's pixels whose class is in their set is at least ``1 - alpha``;
- ``class_fnr``: one per class, so that each class's mask ``{s_k <= lambda_k}``
  misses at most ``alpha`` of the class's pixels of a new image, in
  expectation over the images where the class is present. A class present in
  too few calibration images gets the threshold 1 (its mask is every pixel)
  and is named in ``uncontrolled``.

A file records the calibrator (type) whose outputs the sets were calibrated on,
so that they are applied to the same outputs (tools/test.py checks it).
"""
import json
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..functional.conformal import (DEFAULT_GRID, DEFAULT_SCORE, SCORES,
                                    ConformalInputError, RiskHistograms,
                                    SetStatistics, add_statistics, check_alpha,
                                    conformal_scores, crc_thresholds,
                                    minimum_images, prediction_sets,
                                    risk_histograms, set_statistics)
from ..utils.io import write_atomic

FILE_VERSION = 1


class ConformalCalibration:
    """Streams calibration images into the per-image risk histograms.

    Args:
        num_classes (int): ``C``.
        score (str): ``'lac'`` or ``'aps'``.
        ignore_index (int): label of pixels to leave out.
        num_cells (int): the threshold grid's cells.
    """

    def __init__(self, num_classes: int, score: str = DEFAULT_SCORE,
                 ignore_index: int = 255, num_cells: int = DEFAULT_GRID):
        if score not in SCORES:
            raise ConformalInputError(f'score must be one of {SCORES}, got {score!r}')
        self.num_classes, self.score = num_classes, score
        self.ignore_index, self.num_cells = ignore_index, num_cells
        self.risk = RiskHistograms(
            torch.zeros(num_classes + 1, num_cells, dtype=torch.float64),
            torch.zeros(num_classes + 1, dtype=torch.int64))

    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add images: ``logits (N, C, *S)``, ``labels (N, *S)``."""
        scores = conformal_scores(torch.softmax(logits.double(), dim=1), self.score)
        batch = risk_histograms(scores, labels, self.ignore_index, self.num_cells)
        self.risk = RiskHistograms(self.risk.histograms + batch.histograms.cpu(),
                                   self.risk.images + batch.images.cpu())

    def fit(self, alpha: float, class_names: Optional[Sequence[str]] = None,
            calibrator: Optional[str] = None) -> 'ConformalSets':
        """The thresholds for risk ``alpha``, of logits as the calibration pass
        saw them: raw, or after the calibrator whose type ``calibrator`` names.

        Raises:
            ConformalInputError: ``alpha`` outside (0, 1), or fewer calibration
                images (with labelled pixels) than ``alpha`` needs.
        """
        alpha = check_alpha(alpha)
        images = int(self.risk.images[-1])
        needed = minimum_images(alpha)
        if images < needed:
            raise ConformalInputError(
                f'conformal sets at alpha={alpha:g} need at least {needed} '
                f'calibration images (alpha (n + 1) > 1), got {images} with labelled '
                'pixels: calibrate on more held-out images or raise alpha')
        thresholds = crc_thresholds(self.risk, alpha)
        names = list(class_names or range(self.num_classes))
        # Classes in too few images: their mask is the whole image.
        too_few = self.risk.images[:-1] < needed
        uncontrolled = [str(names[k]) for k in range(self.num_classes)
                        if bool(too_few[k])]
        class_fnr = torch.where(too_few, torch.ones_like(thresholds[:-1]),
                                thresholds[:-1])
        return ConformalSets(alpha, self.score, float(thresholds[-1]),
                             class_fnr.tolist(), images,
                             self.risk.images[:-1].tolist(), uncontrolled,
                             calibrator)


class ConformalSets:
    """Fitted thresholds (see the module's docstring) and how they were fitted.

    Args:
        alpha (float): the risk level.
        score (str): the nonconformity score.
        coverage (float): the threshold of the coverage sets.
        class_fnr (list[float]): ``C`` thresholds of the class masks.
        images (int): calibration images.
        class_images (list[int]): calibration images where each class is present.
        uncontrolled (list[str]): classes in too few images for ``alpha``.
        calibrator (str, optional): the type of the calibrator applied to the
            logits before the sets; None: the raw logits.
    """

    def __init__(self, alpha: float, score: str, coverage: float,
                 class_fnr: List[float], images: int, class_images: List[int],
                 uncontrolled: List[str], calibrator: Optional[str] = None):
        self.alpha, self.score, self.coverage = alpha, score, coverage
        self.class_fnr, self.images = class_fnr, images
        self.class_images, self.uncontrolled = class_images, uncontrolled
        self.calibrator = calibrator

    @property
    def num_classes(self) -> int:
        return len(self.class_fnr)

    def scores(self, logits: Tensor) -> Tensor:
        """``(N, C, *S)`` float64 scores of ``logits (N, C, *S)``."""
        return conformal_scores(torch.softmax(logits.double(), dim=1), self.score)

    def sets(self, logits: Tensor, mode: str = 'coverage',
             scores: Optional[Tensor] = None) -> Tensor:
        """``(N, C, *S)`` bool sets of ``logits (N, C, *S)`` (or of their
        :meth:`scores`, when given); ``mode``: ``'coverage'`` or
        ``'class_fnr'``."""
        scores = self.scores(logits) if scores is None else scores
        thresholds = torch.tensor(self.coverage if mode == 'coverage' else
                                  self.class_fnr, dtype=torch.float64,
                                  device=scores.device)
        return prediction_sets(scores, thresholds)

    def to_dict(self) -> dict:
        return dict(version=FILE_VERSION, alpha=self.alpha, score=self.score,
                    coverage=self.coverage, class_fnr=self.class_fnr,
                    images=self.images, class_images=self.class_images,
                    uncontrolled=self.uncontrolled, calibrator=self.calibrator)

    def save(self, path: str) -> None:
        """Write the thresholds as JSON (atomically)."""
        write_atomic(path, json.dumps(self.to_dict(), indent=2).encode('utf-8'))

    @classmethod
    def load(cls, path: str, num_classes: Optional[int] = None) -> 'ConformalSets':
        """Thresholds written by :meth:`save`.

        Raises:
            ConformalInputError: unreadable, another version, or fitted for
                another number of classes than ``num_classes``.
        """
        try:
            with open(path) as f:
                content = json.load(f)
        except FileNotFoundError:
            raise ConformalInputError(f'{path}: no such conformal file') from None
        except ValueError as error:
            raise ConformalInputError(f'{path}: not a conformal file '
                                      f'(ValueError: {error})') from None
        if not isinstance(content, dict) or 'version' not in content:
            raise ConformalInputError(f'{path}: not a conformal file (no version)')
        version = content.pop('version')
        if version != FILE_VERSION:
            raise ConformalInputError(f'{path}: conformal file version {version}, '
                                      f'this cals-seg reads {FILE_VERSION}')
        try:
            sets = cls(**content)
        except TypeError as error:
            raise ConformalInputError(f'{path}: not a conformal file '
                                      f'(TypeError: {error})') from None
        if num_classes is not None and sets.num_classes != num_classes:
            raise ConformalInputError(f'{path}: fitted for {sets.num_classes} '
                                      f'classes, the logits have {num_classes}')
        return sets


class SetTotals:
    """Streams test images into the statistics of both kinds of sets."""

    def __init__(self, sets: ConformalSets, ignore_index: int = 255):
        self.conformal, self.ignore_index = sets, ignore_index
        self.totals: Dict[str, Optional[SetStatistics]] = dict(coverage=None,
                                                                class_fnr=None)

    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add images: ``logits (N, C, *S)``, ``labels (N, *S)``."""
        scores = self.conformal.scores(logits)  # once for both kinds of sets
        for mode, total in self.totals.items():
            batch = set_statistics(self.conformal.sets(logits, mode, scores), labels,
                                   self.ignore_index)
            batch = SetStatistics(*(value.cpu() for value in batch))
            self.totals[mode] = batch if total is None else add_statistics(total,
                                                                          batch)

    def compute(self) -> dict:
        """:func:`set_metrics` of both kinds of sets."""
        return {mode: set_metrics(total, self.conformal.alpha)
                for mode, total in self.totals.items() if total is not None}


def _ratio(numerator: Tensor, denominator: Tensor) -> np.ndarray:
    numerator, denominator = numerator.numpy(), denominator.numpy()
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1),
                        np.nan)


def set_metrics(stats: SetStatistics, alpha: float) -> dict:
    """Coverage, size and risk of sets, in percent where shares.

    Returns:
        dict: ``coverage`` (pooled over pixels) and ``image_coverage`` (the
        mean of each image's share, what CRC guarantees), ``set_size`` (mean
        classes per pixel), ``target`` (``100 (1 - alpha)``),
        ``class_coverage`` ``(C, )``, ``class_fnr`` ``(C, )`` (mean per-image
        false-negative rate of each class's mask, against ``alpha``),
        ``size_pixels`` and ``size_coverage`` ``(C + 1, )`` (by set size).
    """
    return dict(
        target=100 * (1 - alpha),
        coverage=float(100 * _ratio(stats.covered, stats.pixels)),
        image_coverage=float(100 * _ratio(stats.image_coverage, stats.images)),
        set_size=float(_ratio(stats.set_size, stats.pixels)),
        class_coverage=(100 * _ratio(stats.class_covered, stats.class_pixels)).tolist(),
        class_fnr=(100 * _ratio(stats.class_image_fnr, stats.class_images)).tolist(),
        size_pixels=stats.size_pixels.numpy().astype(int).tolist(),
        size_coverage=(100 * _ratio(stats.size_covered, stats.size_pixels)).tolist())
