"""Calibration and accuracy against corruption severity (Ovadia et al.,
NeurIPS 2019, Fig. 2): one line per model or calibrator."""
from typing import Dict, Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from .reliability import _png  # noqa: E402

PANELS = (('ECE', 'ECE (%)'), ('mIoU', 'mIoU (%)'))


def severity_figure(series: Mapping[str, Mapping[int, Mapping[str, float]]],
                    title: str = 'mean over corruptions',
                    panels: Sequence = PANELS) -> bytes:
    """PNG of each panel's metric against severity.

    Args:
        series: per line label, per severity (0: clean), the metrics.
        title (str): the figure's title.
        panels: ``(metric key, axis label)`` per panel.

    Returns:
        bytes: the PNG file.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4),
                             squeeze=False)
    severities = sorted({s for by_severity in series.values() for s in by_severity})
    for ax, (key, label) in zip(axes[0], panels):
        for name, by_severity in series.items():
            ax.plot(sorted(by_severity),
                    [by_severity[s][key] for s in sorted(by_severity)],
                    marker='o', markersize=4, linewidth=1.5, label=name)
        ax.set_xticks(severities)
        ax.set_xlabel('severity (0: clean)', fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def series_by_output(means: Dict[int, Dict[str, Dict[str, float]]],
                     prefix: str = '') -> Dict[str, Dict[int, Dict[str, float]]]:
    """``means[severity][output]`` as ``series[prefix + output][severity]``."""
    series: Dict[str, Dict[int, Dict[str, float]]] = {}
    for severity, outputs in means.items():
        for output, metrics in outputs.items():
            series.setdefault(prefix + output, {})[severity] = metrics
    return series
