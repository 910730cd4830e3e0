"""Heatmaps of conformal set sizes: where a model's sets grow ("varisco"
heatmaps, Mossina et al., CVPR Workshops 2024)."""
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from .reliability import _label_colours, _png


def set_size_panels(rows: Sequence[dict], num_classes: int,
                    ignore_index: int = 255) -> bytes:
    """PNG bytes: one row per image: image | ground truth | set size (0 to
    ``C`` classes, one colour each) | pixels whose class the set misses (white;
    ignored grey).

    Args:
        rows: dicts with ``name``, ``image`` ``(H, W, 3)`` uint8 or None,
            ``labels`` ``(H, W)``, ``sizes`` ``(H, W)`` ints and ``covered``
            ``(H, W)`` bool.
    """
    fig, axes = plt.subplots(len(rows), 4, figsize=(9, 2.3 * len(rows)),
                             squeeze=False)
    sizes_map = plt.get_cmap('magma', num_classes + 1)
    for ax_row, row in zip(axes, rows):
        labels = np.asarray(row['labels'])
        ignored = labels == ignore_index
        missed = np.where(ignored, 0.5, (~np.asarray(row['covered'])).astype(float))
        image = row['image'] if row['image'] is not None else np.zeros(
            labels.shape + (3, ), np.uint8)
        pictures = [(image, None, 0, 1, 'image'),
                    (_label_colours(labels, num_classes, ignore_index), None, 0, 1,
                     'ground truth'),
                    (row['sizes'], sizes_map, -0.5, num_classes + 0.5, 'set size'),
                    (missed, 'gray', 0, 1, 'missed by the set')]
        for ax, (picture, cmap, low, high, title) in zip(ax_row, pictures):
            shown = ax.imshow(picture, cmap=cmap, vmin=low, vmax=high,
                              interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
            if title == 'set size':
                bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02,
                                   ticks=range(num_classes + 1))
                bar.ax.tick_params(labelsize=6)
        coverage = 100 * np.asarray(row['covered'])[~ignored].mean()
        ax_row[0].set_ylabel(f'{row["name"]}\ncoverage {coverage:.1f} %', fontsize=7)
    fig.tight_layout()
    return _png(fig)
