"""What a post-hoc calibrator does where the pooled numbers do not look.

A calibrator fitted to lower the pooled NLL can move the error to the object
outlines or onto the foreground: temperature scaling sharpening a slightly
under-confident model is one case. A post-hoc row is flagged when it lowers its
model's pooled ECE or NLL (mean over seeds) while it raises boundary ECE or fg
ECE beyond noise: the one-sided paired test of
:func:`cals_seg.study.statistics.paired_change` (seeds, and test images where
the records hold their sums) rejects "no rise" at ``alpha / k``, ``k`` the
number of (row, metric) pairs tested, so that a false flag anywhere in a table
has probability at most ``alpha``.
"""
from typing import List, Optional

import numpy as np

from ..statistics import ALPHA, Change, paired_change
from .rows import RAW, Row
from .verdicts import candidates_of, image_replicates

POOLED = (('ECE', 'ECE'), ('NLL', 'NLL'))
LOCAL = (('ECE_boundary', 'boundary ECE'), ('fg/ECE', 'fg ECE'))


def local_change(raw: Row, calibrated: Row, metric: str) -> Optional[Change]:
    """The paired change of ``metric`` from a model's raw row to a calibrator's
    row on the same runs; None without two seeds in common."""
    found = candidates_of([raw, calibrated], lambda r: r.values(metric), metric)
    seeds = [s for s in found[0].seeds if s in found[1].seeds]
    if len(seeds) < 2:
        return None
    values = np.stack([c.values[[c.seeds.index(s) for s in seeds]] for c in found])
    return paired_change(values, image_replicates(found, seeds, metric))


def posthoc_flags(rows: List[Row], alpha: float = ALPHA) -> List[str]:
    """One sentence per (calibrator row, local metric) that the rule flags."""
    pairs = []
    for row in rows:
        if row.output == RAW or row.missing or row.fits_undone == len(row.records):
            continue
        raw = next((r for r in rows if r.output == RAW and r.runs[0] == row.runs[0]),
                   None)
        if raw is not None:
            pairs.append((row, raw))
    tests = len(pairs) * len(LOCAL)
    flags = []
    for row, raw in pairs:
        improved = [name for key, name in POOLED
                    if row.values(key).mean() < raw.values(key).mean()]
        if not improved:
            continue
        for key, name in LOCAL:
            change = local_change(raw, row, key)
            if change is None or not change.p_value < alpha / tests:
                continue
            flags.append(
                f'{row.label} lowers the pooled {" and ".join(improved)} of '
                f'{raw.label} but raises its {name} by {change.difference:.2f} '
                f'± {change.standard_error:.2f} (paired one-sided p = '
                f'{change.p_value:.2g}, beyond noise at {alpha:g} / {tests})')
    return flags
