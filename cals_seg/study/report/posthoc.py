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

:func:`one_model_flags` applies the same rule to one model's saved logits
(``tools/calib_eval.py``), where the test images are the only noise.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...functional.image_sums import metrics_from_sums
from ..statistics import ALPHA, Change, image_change, paired_change
from .rows import RAW, Row
from .verdicts import candidates_of, image_replicates, resampled

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
            flags.append(flag_sentence(row.label, raw.label, improved, name,
                                       change, f'{alpha:g} / {tests}'))
    return flags


def flag_sentence(label: str, raw_label: str, improved: Sequence[str], name: str,
                  change: Change, level: str) -> str:
    """What a flag says: the pooled metrics that improved, the local one that
    rose, by how much and at what level."""
    return (f'{label} lowers the pooled {" and ".join(improved)} of {raw_label} '
            f'but raises its {name} by {change.difference:.2f} ± '
            f'{change.standard_error:.2f} (paired one-sided p = '
            f'{change.p_value:.2g}, beyond noise at {level})')


def one_model_flags(image_sums: Dict[str, np.ndarray], raw: str,
                    shape: Tuple[int, int], local: Sequence[Tuple[str, str]] = LOCAL,
                    alpha: float = ALPHA) -> Dict[str, dict]:
    """The rule on one model: each calibrated output against the raw one on the
    same test images, the images resampled (:func:`image_change`), Bonferroni
    over every (calibrator, local metric) pair.

    Args:
        image_sums (dict): ``(images, K)`` per-image sums
            (:func:`cals_seg.functional.image_sums.image_row`) by output name,
            the same images in every output; ``raw`` among them.
        raw (str): the uncalibrated output's name.
        shape (tuple): ``(bins, classes)`` of the sums.
        local (sequence): ``(metric key, name)`` of the local metrics to test
            (leave fg ECE out where the foreground is every class).
        alpha (float): the chance of any false flag.

    Returns:
        dict: per calibrated output, ``improved`` (the pooled metrics it
        lowered), ``local`` (per metric key: ``before``, ``after``, ``change``,
        ``standard_error``, ``p_value``, ``flagged``) and ``flags`` (the
        sentences of :func:`flag_sentence`).
    """
    names = [name for name in image_sums if name != raw]
    tests = max(len(names) * len(local), 1)
    stack = np.stack([image_sums[name] for name in [raw] + names])[:, None]
    totals = metrics_from_sums(stack.sum(axis=2)[:, 0], *shape)
    results = {}
    for index, name in enumerate(names, start=1):
        improved = [pretty for key, pretty in POOLED
                    if totals[key][index] < totals[key][0]]
        entry = dict(improved=improved, local={}, flags=[])
        for key, pretty in local:
            replicates = resampled(stack[[0, index]], shape, key)[:, :, 0]
            change = image_change(totals[key][[0, index]], replicates,
                                  stack.shape[2])
            flagged = bool(improved) and change.p_value < alpha / tests
            entry['local'][key] = dict(
                before=float(totals[key][0]), after=float(totals[key][index]),
                change=change.difference, standard_error=change.standard_error,
                p_value=change.p_value, flagged=flagged)
            if flagged:
                entry['flags'].append(flag_sentence(
                    name, raw, improved, pretty, change, f'{alpha:g} / {tests}'))
        results[name] = entry
    return results
