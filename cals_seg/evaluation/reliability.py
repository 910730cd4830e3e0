"""Reliability diagrams from per-bin sums."""
import io
import math
from typing import Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .calibration import CalibrationStatistics  # noqa: E402


def _draw(ax, count, confidence, frequency, title: str, xlabel: str,
          ylabel: str) -> None:
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
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=110, bbox_inches='tight')
    plt.close(fig)
    return buffer.getvalue()


def top_label_diagram(stats: CalibrationStatistics, title: str) -> bytes:
    """PNG bytes: accuracy against confidence of the predicted class, per bin."""
    fig, ax = plt.subplots(figsize=(4, 4))
    _draw(ax, stats.bin_count.numpy(), stats.bin_confidence.numpy(),
          stats.bin_accuracy.numpy(), title, 'confidence', 'accuracy')
    ax.legend(loc='upper left', fontsize=7)
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
