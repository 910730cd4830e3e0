"""Verdicts: which rows lead on a metric, from
:func:`cals_seg.study.statistics.compare_with_best` over the rows compared,
paired by seed and, where the records hold them, on resamples of the test
images."""
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ...functional.image_sums import BOUNDARY, bootstrap_weights, metrics_from_sums
from ...functional.image_sums import METRICS as VERDICT_SUMS
from ..statistics import compare_with_best
from .rows import LABELS, Row, cell


# Image resamples per verdict: enough for the variance of a difference to a few %.
RESAMPLES = 1000
# The metrics per-image sums give (boundary ECE: in records made since they hold
# its bins).
IMAGE_METRICS = VERDICT_SUMS + (BOUNDARY, )


class Candidate(NamedTuple):
    """A row in a verdict: its label, seeds, value on each seed and, where its
    records hold them, each test image's sums of the metric (``(seeds, images,
    K)``, :mod:`cals_seg.functional.image_sums`) with their bins and classes."""
    label: str
    seeds: Tuple[int, ...]
    values: np.ndarray
    image_sums: Optional[np.ndarray] = None
    shape: Tuple[int, int] = (0, 0)
    one_model: bool = False  # an ensemble: the same value on every seed


def image_replicates(candidates: Sequence[Candidate], seeds: List[int],
                metric: str) -> Optional[np.ndarray]:
    """``(RESAMPLES, rows, seeds)``: the metric on resamples of the test images,
    one resample for every row and seed; None unless every candidate has its
    images' sums, of the metric, for the same images, bins and classes."""
    if metric not in IMAGE_METRICS or any(c.image_sums is None for c in candidates):
        return None
    if len({(c.image_sums.shape[1:], c.shape) for c in candidates}) != 1:
        return None
    stack = np.stack([c.image_sums[[c.seeds.index(s) for s in seeds]]
                      for c in candidates])  # [rows, seeds, images, K]
    return resampled(stack, candidates[0].shape, metric)


def resampled(stack: np.ndarray, shape: Tuple[int, int], metric: str
              ) -> Optional[np.ndarray]:
    """``(RESAMPLES, rows, seeds)``: ``metric`` on resamples of the images of
    ``stack`` (``[rows, seeds, images, K]`` per-image sums, the same images in
    every row and seed), one resample shared by every row and seed; None where
    the sums lack the metric (boundary ECE in older records)."""
    weights = bootstrap_weights(stack.shape[2], RESAMPLES)
    summed = np.einsum('bi,rsik->brsk', weights, stack)
    return metrics_from_sums(summed, *shape).get(metric)


def find_leaders(candidates: Sequence[Candidate], higher: bool,
             metric: Optional[str] = None) -> Tuple[List[str], str]:
    """The labels in front and the sentence saying so, from
    :func:`compare_with_best` over the candidates, paired on the seeds they all
    have and, for an in-domain ``metric`` whose records hold per-image sums, on
    resamples of the test images: one label when the best mean beats every
    other row, else the rows that tie with it (none when nothing can be
    tested). A verdict that counts the seeds' noise alone says so."""
    if not candidates:
        return [], 'no rows to compare: no claim'
    seeds = sorted(set.intersection(*(set(c.seeds) for c in candidates)))
    cells = {c.label: cell(c.values[:1] if c.one_model else c.values)
             for c in candidates}
    table = np.array([[dict(zip(c.seeds, c.values))[seed] for seed in seeds]
                      for c in candidates]).reshape(len(candidates), len(seeds))
    replicates = image_replicates(candidates, seeds, metric)
    found = compare_with_best([c.label for c in candidates], table, higher,
                              replicates)
    notes = list(found.notes)
    if not all(len(c.seeds) == len(seeds) for c in candidates):
        notes.append(f'paired on the seeds all rows have: {", ".join(map(str, seeds))}')
    if replicates is None and found.kind in ('best', 'tie'):
        notes.append('seeds only')
    if found.kind == 'best':
        hardest = max(found.comparisons, key=lambda c: c.p_value)
        return found.leaders, '; '.join([
            f'best {found.best} ({cells[found.best]}), ahead of every other row; the '
            f'hardest to beat, {hardest.label} ({cells[hardest.label]}), by '
            f'{hardest.difference:.2f} (paired p = {hardest.p_value:.2g} <= '
            f'{found.level:.2g})'] + notes)
    if found.kind == 'tie':
        named = ', '.join(f'{label} ({cells[label]})' for label in found.leaders)
        return found.leaders, '; '.join(
            [f'tie, not told apart from the best mean: {named}'] + notes)
    return found.leaders, '; '.join([found.sentence] + notes[len(found.notes):])


def verdict(candidates: Sequence[Candidate], higher: bool,
            metric: Optional[str] = None) -> str:
    """The sentence of :func:`find_leaders`: 'best ...', 'tie ...' or why no claim."""
    return find_leaders(candidates, higher, metric)[1]


def candidates_of(rows: Sequence['Row'], values: Callable,
                metric: Optional[str] = None) -> List[Candidate]:
    """The rows where ``values`` is not None; with an in-domain ``metric``, their
    images' sums too."""
    found = []
    for row in rows:
        v = values(row)
        if v is None:
            continue
        sums, shape = row.image_sums() if metric in IMAGE_METRICS else (None, (0, 0))
        found.append(Candidate(row.label, row.seeds, v, sums, shape,
                               row.free == 'ensemble'))
    return found


def cheapest(leaders: List[str], rows: List[Row]) -> str:
    """Where several rows tie for best: the one that costs least to train and
    evaluate, as a clause of the verdict."""
    if len(leaders) < 2:
        return ''
    cost = {r.label: r.cost() for r in rows}
    label = min(leaders, key=lambda name: cost[name])
    return f'; the cheapest of them: {label} ({cost[label]:.1f} min to train and evaluate)'


def leaders_text(rows: List[Row], key: str, higher: bool) -> str:
    """The methods in front on ``key`` among ``rows``, by method name: 'X'
    (best), 'tie: X, Y' or 'no claim'."""
    leaders = find_leaders(candidates_of(rows, lambda r: r.values(key), key), higher,
                       key)[0]
    names = [LABELS.get(r.method, r.method) for r in rows if r.label in leaders]
    if not names:
        return 'no claim'
    return names[0] if len(names) == 1 else 'tie: ' + ', '.join(names)
