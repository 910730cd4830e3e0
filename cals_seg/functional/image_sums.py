"""Per-image sufficient statistics of the study's verdict metrics, and the metrics
they give once summed over any weighting of the images (a bootstrap resample).

Every metric the verdicts use in-domain is a function of sums over pixels, so of
sums over images: pooled ECE and fg ECE of the top-label bins (count, confidence,
accuracy), NLL (its sum and the pixel count) and mIoU (per class: hits, predicted,
labelled pixels); and boundary ECE, so that a post-hoc calibrator that helps the
pooled numbers while it hurts the boundaries can be told from noise. One
image's row of :func:`image_row` holds them in the order of :func:`layout`;
:func:`metrics_from_sums` reads any number of summed rows at once. Rows written
before the boundary bins (records of earlier studies) are their prefix, and read
without ``ECE_boundary``. Pure numpy.
"""
from typing import Dict

import numpy as np

# The metrics :func:`metrics_from_sums` gives, by record key (the verdicts'), and
# the one it adds for rows that hold the boundary bins.
METRICS = ('ECE', 'fg/ECE', 'NLL', 'mIoU')
BOUNDARY = 'ECE_boundary'


def layout(num_bins: int, num_classes: int) -> Dict[str, slice]:
    """Where each statistic lies in a row of ``2 + 9 * num_bins + 3 * num_classes``
    numbers (the boundary bins last)."""
    sizes = (('bin_count', num_bins), ('bin_confidence', num_bins),
             ('bin_accuracy', num_bins), ('fg_count', num_bins),
             ('fg_confidence', num_bins), ('fg_accuracy', num_bins),
             ('nll_sum', 1), ('num_pixels', 1), ('hits', num_classes),
             ('predicted', num_classes), ('labelled', num_classes),
             ('boundary_count', num_bins), ('boundary_confidence', num_bins),
             ('boundary_accuracy', num_bins))
    places, start = {}, 0
    for name, size in sizes:
        places[name] = slice(start, start + size)
        start += size
    return places


def image_row(pooled, foreground, confusion: np.ndarray) -> np.ndarray:
    """One image's row.

    Args:
        pooled, foreground: the image's calibration statistics (anything with
            ``bin_count``, ``bin_confidence``, ``bin_accuracy``, ``nll_sum`` and
            ``num_pixels``, tensors or arrays; ``pooled`` also with the
            ``boundary_*`` bins), all kept pixels and the foreground ones.
        confusion (ndarray): ``(C, C)`` the image's confusion matrix, rows
            ground truth.

    Returns:
        ndarray: ``(2 + 9B + 3C,)`` float64.
    """
    def flat(value):
        return np.asarray(value, dtype=np.float64).reshape(-1)

    confusion = np.asarray(confusion, dtype=np.float64)
    return np.concatenate([
        flat(pooled.bin_count), flat(pooled.bin_confidence), flat(pooled.bin_accuracy),
        flat(foreground.bin_count), flat(foreground.bin_confidence),
        flat(foreground.bin_accuracy), flat(pooled.nll_sum), flat(pooled.num_pixels),
        np.diag(confusion), confusion.sum(0), confusion.sum(1),
        flat(pooled.boundary_count), flat(pooled.boundary_confidence),
        flat(pooled.boundary_accuracy)])


def metrics_from_sums(sums: np.ndarray, num_bins: int,
                      num_classes: int) -> Dict[str, np.ndarray]:
    """The verdict metrics of summed rows.

    Args:
        sums (ndarray): ``(..., 2 + 9B + 3C)``, rows of :func:`image_row` summed
            over images (with any weights), or ``(..., 2 + 6B + 3C)`` rows
            without the boundary bins.
        num_bins (int): B.
        num_classes (int): C.

    Returns:
        dict: :data:`METRICS`, each ``(...)``: ECE and fg/ECE in percent
        (equal-width bins), NLL per pixel, mIoU in percent over the classes with
        a non-empty union (mmseg's); and :data:`BOUNDARY` for rows with the
        boundary bins.
    """
    at = layout(num_bins, num_classes)

    def ece(count, confidence, accuracy):
        total = sums[..., count].sum(-1)
        gap = np.abs(sums[..., accuracy] - sums[..., confidence]).sum(-1)
        with np.errstate(invalid='ignore', divide='ignore'):
            return 100 * gap / total

    hits = sums[..., at['hits']]
    union = sums[..., at['predicted']] + sums[..., at['labelled']] - hits
    with np.errstate(invalid='ignore', divide='ignore'):
        iou = np.where(union > 0, hits / np.where(union > 0, union, 1), np.nan)
        nll = sums[..., at['nll_sum']][..., 0] / sums[..., at['num_pixels']][..., 0]
    metrics = {'ECE': ece(at['bin_count'], at['bin_confidence'], at['bin_accuracy']),
               'fg/ECE': ece(at['fg_count'], at['fg_confidence'], at['fg_accuracy']),
               'NLL': nll, 'mIoU': 100 * np.nanmean(iou, axis=-1)}
    if sums.shape[-1] >= at['boundary_accuracy'].stop:
        metrics[BOUNDARY] = ece(at['boundary_count'], at['boundary_confidence'],
                                at['boundary_accuracy'])
    return metrics


def bootstrap_weights(num_images: int, resamples: int, seed: int = 0) -> np.ndarray:
    """``(resamples, num_images)`` counts of each image in each resample (with
    replacement, as many draws as images), from a fixed seed: reports built from
    the same records are the same."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_images, np.full(num_images, 1.0 / num_images),
                           size=resamples).astype(np.float64)
