"""Pictures of calibration from per-bin sums: reliability diagrams with the
share of pixels per bin under the bars (Guo et al. 2017), before/after
comparisons, risk-coverage curves, and per-image panels."""
import io
import math
from typing import Sequence, Tuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..functional.calibration import (  # noqa: E402
    CalibrationStatistics, calibration_errors)

IGNORE_COLOUR = (0, 0, 0)


def _draw(ax, count, confidence, frequency, title: str, xlabel: str,
          ylabel: str, share_ax=None) -> None:
    num_bins = len(count)
    edges = np.linspace(0, 1, num_bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    occupied = count > 0
    mean_conf = np.where(occupied, confidence / np.maximum(count, 1), 0)
    mean_freq = np.where(occupied, frequency / np.maximum(count, 1), 0)
    width = 1 / num_bins
    ax.bar(centres[occupied], mean_freq[occupied], width=width, color='#4c72b0',
           edgecolor='black', linewidth=0.5, label='observed')
    ax.bar(centres[occupied], (mean_conf - mean_freq)[occupied], width=width,
           bottom=mean_freq[occupied], color='#dd8452', alpha=0.5,
           edgecolor='#c44e52', hatch='//', linewidth=0.5, label='gap')
    ax.plot([0, 1], [0, 1], '--', color='grey', linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if share_ax is None:
        ax.set_xlabel(xlabel, fontsize=8)
        return
    # The share of pixels per bin: an empty-looking bin is visibly rare.
    share = 100 * count / max(count.sum(), 1)
    share_ax.bar(centres, share, width=width, color='grey', edgecolor='black',
                 linewidth=0.3)
    share_ax.set_xlim(0, 1)
    share_ax.set_ylim(0, 100)
    share_ax.set_ylabel('% pixels', fontsize=7)
    share_ax.set_xlabel(xlabel, fontsize=8)
    share_ax.tick_params(labelsize=6)
    ax.tick_params(labelbottom=False)


def _summary(stats: CalibrationStatistics) -> str:
    """ECE and AECE of the sums; AECE's bound where it is not negligible."""
    errors = calibration_errors(stats)
    text = f'ECE {errors["ECE"]:.2f}\nAECE {errors["AECE"]:.2f}'
    if errors['aece_error_bound'] >= 0.01:
        text += f' (within {errors["aece_error_bound"]:.2f})'
    return text


def _top_label_axes(fig, spec, stats: CalibrationStatistics, title: str) -> None:
    ax = fig.add_subplot(spec[0])
    share_ax = fig.add_subplot(spec[1], sharex=ax)
    _draw(ax, stats.bin_count.numpy(), stats.bin_confidence.numpy(),
          stats.bin_accuracy.numpy(), title, 'confidence', 'accuracy', share_ax)
    ax.text(0.97, 0.05, _summary(stats), transform=ax.transAxes, ha='right',
            va='bottom', fontsize=7, bbox=dict(facecolor='white', alpha=0.8,
                                               edgecolor='grey'))


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=110, bbox_inches='tight')
    plt.close(fig)
    return buffer.getvalue()


def compare_diagrams(panels: Sequence[Tuple[str, CalibrationStatistics]]) -> bytes:
    """PNG bytes: top-label reliability diagrams side by side (before/after)."""
    fig = plt.figure(figsize=(3.6 * len(panels), 4.6))
    grid = fig.add_gridspec(2, len(panels), height_ratios=(3, 1), hspace=0.08)
    for column, (title, stats) in enumerate(panels):
        _top_label_axes(fig, (grid[0, column], grid[1, column]), stats, title)
    fig.axes[0].legend(loc='upper left', fontsize=7)
    return _png(fig)


def bins_grid(panels: Sequence[Tuple[str, np.ndarray, np.ndarray, np.ndarray]],
              columns: int = 4, title: str = '') -> bytes:
    """PNG bytes: reliability diagrams in a grid, ``columns`` to a row (a
    laptop screen's width), each with the share of pixels per bin under it.

    Args:
        panels: ``(title, count, confidence sums, accuracy sums)`` per panel,
            arrays ``(B, )`` of the bins.
        columns (int): panels per row.
        title (str): the figure's title.
    """
    rows = math.ceil(len(panels) / columns)
    height = 3.9 * rows
    fig = plt.figure(figsize=(3.0 * min(columns, len(panels)), height))
    # Margins in inches, not in fractions of a figure that grows with the rows.
    outer = fig.add_gridspec(rows, min(columns, len(panels)), hspace=0.4,
                             wspace=0.35, top=1 - 0.5 / height, bottom=0.45 / height)
    for index, (name, count, confidence, accuracy) in enumerate(panels):
        cell = outer[divmod(index, columns)].subgridspec(
            2, 1, height_ratios=(3, 1), hspace=0.08)
        count = np.asarray(count, dtype=float)
        ax = fig.add_subplot(cell[0])
        share_ax = fig.add_subplot(cell[1], sharex=ax)
        _draw(ax, count, np.asarray(confidence, dtype=float),
              np.asarray(accuracy, dtype=float), name, 'confidence', 'accuracy',
              share_ax)
        ece = 100 * np.abs(np.asarray(confidence) - np.asarray(accuracy)).sum() / max(
            count.sum(), 1)
        ax.text(0.97, 0.05, f'ECE {ece:.2f}', transform=ax.transAxes, ha='right',
                va='bottom', fontsize=7, bbox=dict(facecolor='white', alpha=0.8,
                                                   edgecolor='grey'))
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.12 / height)
    return _png(fig)


def risk_coverage_curve(stats: CalibrationStatistics):
    """Coverage and selective risk (both in [0, 1]) at each occupied cell's end,
    from the most confident pixels down."""
    count = stats.cell_count.numpy()[::-1]
    wrong = count - stats.cell_accuracy.numpy()[::-1]
    occupied = count > 0
    accepted, errors = np.cumsum(count[occupied]), np.cumsum(wrong[occupied])
    return accepted / max(accepted[-1], 1), errors / accepted


def risk_coverage_figure(curves: Sequence[Tuple[str, CalibrationStatistics]]) -> bytes:
    """PNG bytes: selective risk against coverage, one line per model."""
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    for label, stats in curves:
        if float(stats.num_pixels) == 0:
            continue
        coverage, risk = risk_coverage_curve(stats)
        aurc = calibration_errors(stats)['AURC']
        ax.plot(coverage, 100 * risk, linewidth=1.2, label=f'{label} (AURC {aurc:.2f})')
    ax.set_xlabel('coverage (most confident pixels first)', fontsize=8)
    ax.set_ylabel('risk (% wrong among accepted)', fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    return _png(fig)


def _label_colours(labels: np.ndarray, num_classes: int,
                   ignore_index: int) -> np.ndarray:
    palette = (plt.get_cmap('tab20')(np.arange(max(num_classes, 1)) % 20)[:, :3] *
               255).astype(np.uint8)
    ignored = labels == ignore_index
    coloured = palette[np.where(ignored, 0, labels) % len(palette)]
    coloured[ignored] = IGNORE_COLOUR
    return coloured


def image_panels(rows: Sequence[dict], num_classes: int,
                 ignore_index: int = 255) -> bytes:
    """PNG bytes: one row per image: image | ground truth | prediction |
    confidence | error (wrong pixels white, ignored grey).

    Args:
        rows: dicts with ``name``, ``ece`` (percent), ``image`` ``(H, W, 3)``
            uint8 or None, ``labels`` ``(H, W)``, ``logits`` ``(C, H, W)``.
    """
    fig, axes = plt.subplots(len(rows), 5, figsize=(11, 2.3 * len(rows)),
                             squeeze=False)
    for ax_row, row in zip(axes, rows):
        prob = torch.softmax(torch.as_tensor(row['logits']).float(), dim=0)
        confidence, prediction = (t.numpy() for t in prob.max(dim=0))
        labels = np.asarray(row['labels'])
        ignored = labels == ignore_index
        error = np.where(ignored, 0.5, (prediction != labels).astype(float))
        pictures = [
            (row['image'] if row['image'] is not None else np.zeros(
                labels.shape + (3, ), np.uint8), None, 'image'),
            (_label_colours(labels, num_classes, ignore_index), None, 'ground truth'),
            (_label_colours(prediction, num_classes, ignore_index), None,
             'prediction'),
            (confidence, 'viridis', 'confidence'),
            (error, 'gray', 'error'),
        ]
        for ax, (picture, cmap, title) in zip(ax_row, pictures):
            shown = ax.imshow(picture, cmap=cmap, vmin=0, vmax=1, interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
            if title == 'confidence':
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(
                    labelsize=6)
        ax_row[0].set_ylabel(f'{row["name"]}\nECE {row["ece"]:.1f} %', fontsize=7)
    fig.tight_layout()
    return _png(fig)


def class_diagrams(stats: CalibrationStatistics, class_names: Sequence[str],
                   title: str) -> bytes:
    """PNG bytes: for each class k, frequency of ``y = k`` against ``p_k``."""
    num_classes = len(class_names)
    columns = min(num_classes, 5)
    rows = math.ceil(num_classes / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.6 * rows),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= num_classes:
            ax.axis('off')
            continue
        _draw(ax, stats.class_count[k].numpy(), stats.class_probability[k].numpy(),
              stats.class_hits[k].numpy(), str(class_names[k]), 'p(class)',
              'frequency')
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)
