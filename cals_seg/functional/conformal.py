"""Conformal pixel sets with the image as the exchangeable unit, in two stages.

Pixels of one image are not exchangeable (neighbours share their errors), images
are. So every guarantee here is about a per-image risk, controlled by conformal
risk control (CRC; Angelopoulos et al., ICLR 2024) over ``n`` calibration images:
for a loss ``L_i(lambda)`` in [0, 1] that does not grow with ``lambda``,

    lambda_hat = min{lambda : n / (n + 1) * mean_i L_i(lambda) + 1 / (n + 1) <= alpha}

gives ``E[L_test(lambda_hat)] <= alpha`` for a new image exchangeable with them.

- **Coverage sets**: ``L_i`` is the share of image ``i``'s labelled pixels whose
  class is not in their set ``{k : s_k <= lambda}``: the expected share of a new
  image's pixels covered is at least ``1 - alpha``.
- **Per-class masks**: for each class ``k``, ``L_i`` is the false-negative rate
  of the mask ``{pixels : s_k <= lambda_k}`` on the images where ``k`` is present
  (an image without ``k`` has no false negative to risk), calibrated on those
  images alone.

Scores (``s_k`` small: ``k`` belongs to the set):

- ``'lac'``: ``1 - p_k`` (least ambiguous set-valued classifier, Sadinle et al.,
  JASA 2019): the smallest sets on average for a given coverage, when the
  probabilities are calibrated. The default: segmentation softmaxes are
  confident, and most pixels then get one class.
- ``'aps'``: the mass of the classes at least as probable as ``k``,
  ``sum_j p_j [p_j >= p_k]`` (adaptive prediction sets, Romano et al., NeurIPS
  2020, without randomisation): sets grow where the softmax is flat, at the
  price of larger sets.

Stage 1, :func:`risk_histograms`: one image's per-class score histograms
(``(C + 1, G)``, the last row over all labelled pixels), normalised to each
image's risk; sums over images are exact streaming, as in calibration.py.
Stage 2, :func:`crc_thresholds`: the thresholds, on the histogram's grid.
Choosing on a grid only rounds ``lambda_hat`` up to the next edge, which keeps
the guarantee (the rule holds for any finite set of ``lambda``). The grid is
even in ``-log(1 - s)`` (for LAC, ``-log p``) from 0 to 30, not in ``s``: high
coverage needs thresholds at probabilities of 1e-4 and below, where an even
grid of [0, 1] has no edge (on the demo, 2,000 even cells left every class in
every set). Scores are float64, so ``1 - s`` keeps its digits down to 1e-13,
the grid's end.
:func:`set_statistics` then measures sets on test images.
"""
import math
from typing import NamedTuple

import torch
from torch import Tensor

SCORES = ('lac', 'aps')
DEFAULT_SCORE = 'lac'
DEFAULT_GRID = 2000  # cells of the threshold grid: 1.5 % apart in 1 - s
GRID_SPAN = 30.0  # the grid spans -log(1 - s) in [0, 30]: down to 1 - s = 1e-13


class ConformalInputError(ValueError):
    """A risk level, score or calibration set conformal sets cannot use."""


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float in (0, 1), or a :class:`ConformalInputError`."""
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ConformalInputError(f'alpha must be a number in (0, 1), got {alpha!r}')
    return float(alpha)


def minimum_images(alpha: float) -> int:
    """The fewest calibration images for which CRC's sets can leave out any
    class a calibration image needs: ``alpha (n + 1) > 1``, so
    ``n > 1 / alpha - 1``. At ``alpha (n + 1) = 1`` the rule needs a risk of
    exactly 0 on every calibration image, and the threshold lies past the
    largest calibration score: sets of nearly every class, a trivial answer
    that would read as a controlled one."""
    return math.floor(1 / check_alpha(alpha) - 1 + 1e-9) + 1


def conformal_scores(probs: Tensor, score: str = DEFAULT_SCORE) -> Tensor:
    """Each class's nonconformity score at each pixel.

    Args:
        probs (Tensor): ``(N, C, *S)`` softmax probabilities.
        score (str): ``'lac'`` or ``'aps'``.

    Returns:
        Tensor: ``(N, C, *S)`` scores in [0, 1], same dtype.
    """
    if score == 'lac':
        return 1 - probs
    if score == 'aps':
        ordered, order = probs.sort(dim=1, descending=True)
        cumulative = ordered.cumsum(dim=1)
        # Tied classes all count each other: each takes the cumulative mass at
        # the last class of its tie (the next position where the value drops).
        position = torch.arange(probs.shape[1], device=probs.device).view(
            (1, -1) + (1, ) * (probs.dim() - 2)).expand_as(ordered)
        drops = torch.ones_like(ordered, dtype=torch.bool)
        drops[:, :-1] = ordered[:, :-1] != ordered[:, 1:]
        last_of_tie = torch.where(drops, position, probs.shape[1]).flip(1).cummin(
            dim=1).values.flip(1)
        scores_sorted = cumulative.gather(1, last_of_tie)
        return torch.empty_like(probs).scatter_(1, order, scores_sorted).clamp_(0, 1)
    raise ConformalInputError(f'score must be one of {SCORES}, got {score!r}')


def grid_edges(num_cells: int, device=None) -> Tensor:
    """``(G + 1, )`` float64 edges ``e_j = 1 - exp(-30 j / G)`` of the threshold
    grid, but the last, ``e_G = 1``: cell ``b`` is ``(e_b, e_{b+1}]``."""
    span = torch.arange(num_cells + 1, dtype=torch.float64, device=device)
    edges = -torch.expm1(-span * (GRID_SPAN / num_cells))
    edges[-1] = 1.0
    return edges


class RiskHistograms(NamedTuple):
    """Per-image risk curves of some images, summed (additive over images).

    ``histograms[r, b]``: summed over the images, the share of the image's
    pixels of row ``r`` whose true-class score lies in cell ``b``
    (``(e_b, e_{b+1}]``, :func:`grid_edges`); rows ``0 .. C-1`` are the pixels labelled ``k``, row
    ``C`` all labelled pixels. ``images[r]``: the images that have pixels of row
    ``r`` (each contributes 1 to its row's sum).
    """
    histograms: Tensor  # (C + 1, G) float64
    images: Tensor  # (C + 1, ) int64


def risk_histograms(scores: Tensor, labels: Tensor, ignore_index: int = 255,
                    num_cells: int = DEFAULT_GRID) -> RiskHistograms:
    """Stage 1: the per-image risk histograms of a batch of calibration images.

    Args:
        scores (Tensor): ``(N, C, *S)`` float64 scores (:func:`conformal_scores`).
        labels (Tensor): ``(N, *S)`` classes, ``ignore_index`` left out.
        ignore_index (int): label of pixels to leave out.
        num_cells (int): ``G``, cells of the threshold grid.

    Returns:
        RiskHistograms: summed over the ``N`` images.
    """
    count, classes = scores.shape[:2]
    rows = classes + 1
    labels = labels.long()
    kept = labels != ignore_index
    image = torch.arange(count, device=labels.device).view(
        (-1, ) + (1, ) * (labels.dim() - 1)).expand_as(labels)[kept]
    label = labels[kept]
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= classes):
        raise ConformalInputError(f'labels must be in [0, {classes}) or '
                                  f'{ignore_index}, got [{int(label.min())}, '
                                  f'{int(label.max())}]')
    true_score = scores.movedim(1, -1)[kept].gather(1, label[:, None]).squeeze(1)
    cell = torch.bucketize(true_score.double(),
                           grid_edges(num_cells, true_score.device)[1:-1])
    # Each pixel counts in its class's row and in the last row (all pixels).
    row = torch.stack([image * rows + label, image * rows + classes])
    pixels = torch.bincount(row.reshape(-1), minlength=count * rows).double()
    weight = 1 / pixels[row]
    flat = row * num_cells + cell
    histograms = torch.bincount(flat.reshape(-1), weights=weight.reshape(-1),
                                minlength=count * rows * num_cells)
    return RiskHistograms(
        histograms.view(count, rows, num_cells).sum(0),
        (pixels.view(count, rows) > 0).sum(0))


def crc_thresholds(risk: RiskHistograms, alpha: float) -> Tensor:
    """Stage 2: the smallest grid threshold of each row whose CRC bound is at
    most ``alpha``: ``T_j + 1 <= alpha (n + 1)``, with ``T_j`` the summed risk
    at threshold ``e_j`` (the cells from ``j`` on) and ``n`` the row's images.

    Args:
        risk (RiskHistograms): of the calibration images.
        alpha (float): the risk level, in (0, 1).

    Returns:
        Tensor: ``(C + 1, )`` float64 thresholds in [0, 1]; NaN for a row with
        too few images (``alpha (n + 1) < 1``), which no threshold short of
        every class can control. Callers refuse rows below
        :func:`minimum_images`, where the threshold is trivial.
    """
    alpha = check_alpha(alpha)
    histograms, images = risk.histograms, risk.images.double()
    cells = histograms.shape[1]
    tail = histograms.flip(1).cumsum(1).flip(1)  # T_j, j = 0 .. G - 1
    tail = torch.cat([tail, tail.new_zeros(tail.shape[0], 1)], dim=1)  # T_G = 0
    # float rounding in the sums must not break a tie the exact values meet
    holds = tail + 1 <= alpha * (images[:, None] + 1) + 1e-9
    first = torch.where(holds, torch.arange(cells + 1, device=tail.device),
                        cells + 1).min(dim=1).values
    thresholds = grid_edges(cells, tail.device)[first.clamp_max(cells)]
    return torch.where(first > cells, torch.full_like(thresholds, float('nan')),
                       thresholds)


class SetStatistics(NamedTuple):
    """What a batch of test images' sets did, summed over the images.

    Pixels are the labelled ones. ``class_*``: by true class ``(C, )``;
    ``size_*``: by set size ``0 .. C`` ``(C + 1, )``; ``image_coverage``: the
    sum over images of each image's share of covered pixels, over
    ``images``; ``class_image_fnr``: the sum, over the images where a class is
    present, of its mask's false-negative rate, over ``class_images``.
    """
    pixels: Tensor  # () float64
    covered: Tensor
    set_size: Tensor  # summed set sizes
    class_pixels: Tensor  # (C, )
    class_covered: Tensor
    size_pixels: Tensor  # (C + 1, )
    size_covered: Tensor
    image_coverage: Tensor  # ()
    images: Tensor
    class_image_fnr: Tensor  # (C, )
    class_images: Tensor


def prediction_sets(scores: Tensor, thresholds: Tensor) -> Tensor:
    """``(N, C, *S)`` bool: class ``k`` is in a pixel's set when its score is at
    most ``thresholds[k]`` (one threshold per class, or one for all)."""
    thresholds = thresholds.to(scores.dtype).reshape(
        (1, -1) + (1, ) * (scores.dim() - 2))
    return scores <= thresholds


def set_statistics(sets: Tensor, labels: Tensor,
                   ignore_index: int = 255) -> SetStatistics:
    """Coverage and size of a batch of test images' sets.

    Args:
        sets (Tensor): ``(N, C, *S)`` bool (:func:`prediction_sets`).
        labels (Tensor): ``(N, *S)``; ``ignore_index`` pixels left out.

    Returns:
        SetStatistics: summed over the ``N`` images.
    """
    count, classes = sets.shape[:2]
    labels = labels.long()
    kept = labels != ignore_index
    label = labels[kept]
    pixel_sets = sets.movedim(1, -1)[kept]  # (P, C)
    covered = pixel_sets.gather(1, label[:, None]).squeeze(1).double()
    size = pixel_sets.sum(1)
    image = torch.arange(count, device=labels.device).view(
        (-1, ) + (1, ) * (labels.dim() - 1)).expand_as(labels)[kept]
    cell = image * classes + label
    per_image_class = torch.bincount(cell, minlength=count * classes).double().view(
        count, classes)
    covered_image_class = torch.bincount(cell, weights=covered,
                                         minlength=count * classes).view(count, classes)
    per_image = per_image_class.sum(1)
    present = per_image > 0
    class_present = per_image_class > 0
    fnr = torch.where(class_present, 1 - covered_image_class /
                      per_image_class.clamp_min(1), torch.zeros_like(per_image_class))
    return SetStatistics(
        pixels=per_image.sum(),
        covered=covered.sum(),
        set_size=size.double().sum(),
        class_pixels=per_image_class.sum(0),
        class_covered=covered_image_class.sum(0),
        size_pixels=torch.bincount(size, minlength=classes + 1).double(),
        size_covered=torch.bincount(size, weights=covered, minlength=classes + 1),
        image_coverage=(covered_image_class.sum(1)[present] /
                        per_image[present]).sum(),
        images=present.sum().double(),
        class_image_fnr=fnr.sum(0),
        class_images=class_present.sum(0).double())


def add_statistics(first: SetStatistics, second: SetStatistics) -> SetStatistics:
    """The statistics of two batches together."""
    return SetStatistics(*(a + b for a, b in zip(first, second)))
