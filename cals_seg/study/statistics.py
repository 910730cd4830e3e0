"""Which row of a study is best, with what its runs share accounted for.

Pure numpy and scipy. Every verdict of the report is one call of
:func:`compare_with_best`.

The data of one metric: ``values[row, seed]``, each row's metric on each seed, the
seeds the same for every row (the pairing), and optionally ``replicates[b, row,
seed]``, the metric recomputed on the b-th bootstrap resample of the test images
(one resample shared by every row and seed: the pairing by image). Two sources of
noise enter the standard error of a difference between two rows:

- the training seed: the sample variance over seeds of the paired differences,
  divided by the number of seeds;
- the finite test set: the variance over the image resamples of the mean paired
  difference. A method can be better on these test images by the luck of which
  images they are, on every seed alike; the seeds cannot show that, the images can.

The two add, and the t reference has the seeds' degrees of freedom (seeds - 1),
the smaller of the two terms'. Without replicates only the seed term is there (and
the report says so).

The rule: the row with the best mean is "best" when, for every other row, the
one-sided paired test of "the best is no better than that row" rejects at level
``alpha / k``, k the number of rows compared. Any false "best" names some row i
that a row j at least as good did not beat; that needed i's test against j to
reject wrongly, which has probability <= alpha / k, and i is one of k rows: so a
false "best" has probability <= alpha whatever the number of rows (Bonferroni over
the k claims that can be made; Hsu's multiple comparisons with the best would use
alpha / (k - 1) for the weak claim "no row is better"). Otherwise the verdict is a
tie, and it names the rows that no row beats at that level (Hsu's elimination):
those that cannot be told apart from the best. tests/test_statistics.py holds the
rule to simulations with known truth.
"""
from typing import List, NamedTuple, Optional, Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
# Float64 rounding of a sum over images, relative to its size.
RELATIVE_ROUNDING = 1e-9


class Comparison(NamedTuple):
    """The difference of one row from the best-mean row, oriented so that > 0
    means the best-mean row is better.

    Attributes:
        label (str): the other row.
        difference (float): mean paired difference.
        standard_error (float): its standard error (seeds, and images when
            replicates were given).
        dof (float): degrees of freedom of the t reference.
        p_value (float): one-sided p-value of "the best-mean row is no better".
    """
    label: str
    difference: float
    standard_error: float
    dof: float
    p_value: float


class Verdict(NamedTuple):
    """What a table's column says about its rows.

    Attributes:
        kind (str): 'best' (one row beats every other), 'tie' (the rows in
            ``leaders`` cannot be told apart), 'equal' (every compared row has
            the same value on every seed) or 'untestable' (fewer than two rows,
            or fewer than two seeds shared by the rows).
        leaders (list[str]): the best row, or the rows tied with it; empty when
            untestable.
        best (str | None): the row with the best mean.
        comparisons (list[Comparison]): the best-mean row against each other.
        level (float): the per-comparison level, alpha / k.
        notes (list[str]): what the sentence adds after the verdict: rows left
            out (a NaN on some seed), differences with no spread to test.
        sentence (str): the verdict in words, notes included.
    """
    kind: str
    leaders: List[str]
    best: Optional[str]
    comparisons: List[Comparison]
    level: float
    notes: List[str]
    sentence: str


def pairwise_differences(values: np.ndarray, replicates: Optional[np.ndarray] = None):
    """Every paired difference between rows, its standard error and dof.

    Args:
        values (ndarray): ``(rows, seeds)``.
        replicates (ndarray, optional): ``(B, rows, seeds)`` image-bootstrap
            values.

    Returns:
        tuple of three ``(rows, rows)`` arrays: ``[i, j]`` is the mean over seeds
        of ``values[j] - values[i]``, its standard error, and the degrees of
        freedom of its t reference (seeds - 1). With one seed the seed term
        cannot be formed, and error and dof are NaN: no claim rests on the images
        alone, since a run's seed luck would go uncounted.
    """
    seeds = values.shape[1]
    differences = values[None, :, :] - values[:, None, :]  # [i, j, seed]
    mean = differences.mean(axis=2)
    if seeds < 2:
        nothing = np.full_like(mean, np.nan)
        return mean, nothing, nothing
    seed_variance = differences.var(axis=2, ddof=1) / seeds
    # The seed term's dof, the smaller of the two: Welch-Satterthwaite's larger
    # value rests on a seed variance estimated from 2 dof (3 seeds) and, simulated
    # (tests/test_statistics.py), calls identical rows best too often.
    dof = np.full_like(mean, seeds - 1.0)
    if replicates is None:
        return mean, np.sqrt(seed_variance), dof
    resampled = replicates.mean(axis=2)  # [B, rows]: each resample's seed mean
    # A resample can lack what a metric needs (no foreground pixel drawn): NaN,
    # left out of the variance rather than spoiling it.
    image_variance = np.nanvar(resampled[:, None, :] - resampled[:, :, None], axis=0,
                               ddof=1)
    return mean, np.sqrt(seed_variance + image_variance), dof


def differences_from(values: np.ndarray, reference: int,
                     replicates: Optional[np.ndarray] = None):
    """Each row's mean paired difference from one row, and its standard error,
    for describing how far apart rows are (no claim is made on it: a tuning
    table's "within noise").

    Unlike :func:`pairwise_differences` the error is formed from whatever noise
    can be measured: the seeds' when there are two or more, the images' when
    ``replicates`` are given; NaN when neither.

    Args:
        values (ndarray): ``(rows, seeds)``.
        reference (int): the row differences are taken from.
        replicates (ndarray, optional): ``(B, rows, seeds)`` image-bootstrap
            values.

    Returns:
        tuple of two ``(rows,)`` arrays: mean over seeds of ``values[row] -
        values[reference]``, and its standard error (0 for the reference).
    """
    values = np.asarray(values, dtype=float)
    differences = values - values[reference]
    seeds = values.shape[1]
    variance = np.zeros(values.shape[0])
    measured = False
    if seeds >= 2:
        variance += differences.var(axis=1, ddof=1) / seeds
        measured = True
    if replicates is not None:
        resampled = replicates.mean(axis=2)  # [B, rows]
        variance += np.nanvar(resampled - resampled[:, reference:reference + 1],
                              axis=0, ddof=1)
        measured = True
    error = np.sqrt(variance) if measured else np.full(values.shape[0], np.nan)
    return differences.mean(axis=1), error


def _one_sided_p(difference: np.ndarray, error: np.ndarray,
                 dof: np.ndarray) -> np.ndarray:
    """p-values of "no better" for differences oriented so > 0 is better; NaN
    where there is no spread to test against, or no dof."""
    with np.errstate(divide='ignore', invalid='ignore'):
        p_value = stats.t.sf(difference / error, dof)
    return np.where((error > 0) & ~np.isnan(dof), p_value, np.nan)


def gain_p_value(gains: np.ndarray) -> float:
    """One-sided p-value of "no gain" for paired gains over seeds (> 0: better),
    on a t reference with seeds - 1 dof; NaN with one seed or no spread.

    Args:
        gains (ndarray): ``(seeds,)`` per-seed differences.
    """
    gains = np.asarray(gains, dtype=float)
    if not np.all(np.isfinite(gains)):
        return float('nan')
    difference, error, dof = pairwise_differences(np.stack([np.zeros_like(gains),
                                                            gains]))
    return float(_one_sided_p(difference[0, 1], error[0, 1], dof[0, 1]))


class Change(NamedTuple):
    """How far a second row moved from a first, paired by seed (and image).

    Attributes:
        difference (float): mean over seeds of ``second - first``.
        standard_error (float): its standard error (seeds, and images when
            replicates were given); NaN with one seed.
        p_value (float): one-sided p-value of "the second is no higher";
            NaN where there is no spread to test against.
    """
    difference: float
    standard_error: float
    p_value: float


def paired_change(values: np.ndarray, replicates: Optional[np.ndarray] = None
                  ) -> Change:
    """The paired change from row 0 to row 1 and the one-sided test that it
    rose, with the noise of :func:`pairwise_differences`.

    Args:
        values (ndarray): ``(2, seeds)``.
        replicates (ndarray, optional): ``(B, 2, seeds)`` image-bootstrap values.
    """
    difference, error, dof = pairwise_differences(np.asarray(values, dtype=float),
                                                  replicates)
    return Change(float(difference[0, 1]), float(error[0, 1]),
                  float(_one_sided_p(difference[0, 1], error[0, 1], dof[0, 1])))


def image_change(values: np.ndarray, replicates: np.ndarray, images: int) -> Change:
    """The change from output 0 to output 1 of one model on the same test
    images, and the one-sided test that it rose, with the images as the only
    noise (one model has no seeds to count: a post-hoc calibrator on saved
    logits).

    The standard error is the spread of the change over the image resamples,
    widened by ``sqrt(n / (n - 1))`` (the bootstrap's own shortfall), on a t
    reference with ``n - 1`` dof: a normal one rejects 2 to 7 times too often
    at the small levels a Bonferroni correction asks for, with 8 to 30 images
    (tests/test_posthoc_flags.py).

    Args:
        values (ndarray): ``(2,)``, the metric of each output on all the images.
        replicates (ndarray): ``(B, 2)``, the metric on B resamples of the
            images, each shared by both outputs.
        images (int): n, the images resampled.
    """
    values = np.asarray(values, dtype=float)
    resampled = np.asarray(replicates, dtype=float)
    difference = float(values[1] - values[0])
    if images < 2:
        return Change(difference, 0.0, float('nan'))
    error = float(np.nanstd(resampled[:, 1] - resampled[:, 0], ddof=1)
                  * np.sqrt(images / (images - 1)))
    # Resamples that are all alike differ by the sums' rounding alone: no
    # spread to test against.
    if not error > RELATIVE_ROUNDING * np.nanmax(np.abs(values)):
        error = 0.0
    p_value = (float(stats.t.sf(difference / error, images - 1))
               if error > 0 and np.isfinite(difference) else float('nan'))
    return Change(difference, error, p_value)


def compare_with_best(labels: Sequence[str], values: np.ndarray, higher: bool,
                      replicates: Optional[np.ndarray] = None,
                      alpha: float = ALPHA) -> Verdict:
    """Multiple comparisons with the best over the rows of one metric.

    Args:
        labels (Sequence[str]): the rows' names.
        values (ndarray): ``(rows, seeds)``, paired by seed (the same seeds in
            the same order for every row).
        higher (bool): higher is better (mIoU) or lower is (ECE).
        replicates (ndarray, optional): ``(B, rows, seeds)``, the metric on B
            resamples of the test images, each shared by all rows and seeds.
        alpha (float): the chance of any false "best", in (0, 1).

    Returns:
        Verdict
    """
    if not 0 < alpha < 1:
        raise ValueError(f'alpha must lie in (0, 1), got {alpha}')
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[0] != len(labels):
        raise ValueError(f'values must be (rows, seeds) with one row per label, got '
                         f'shape {values.shape} for {len(labels)} labels')
    if replicates is not None and (replicates.ndim != 3 or
                                   replicates.shape[1:] != values.shape):
        raise ValueError(f'replicates must be (B, {values.shape[0]}, '
                         f'{values.shape[1]}), got {replicates.shape}')
    finite = [i for i in range(len(labels)) if np.all(np.isfinite(values[i]))]
    excluded = [f'{labels[i]} (not a number on some seed)' for i in range(len(labels))
                if i not in finite]
    names = [labels[i] for i in finite]
    sign = 1.0 if higher else -1.0
    oriented = sign * values[finite]
    oriented_replicates = (None if replicates is None else
                           sign * replicates[:, finite])
    level = alpha / max(len(names), 2)

    def verdict(kind, leaders, best, comparisons, sentence, notes=()):
        notes = list(notes) + (['left out: ' + ', '.join(excluded)] if excluded else [])
        return Verdict(kind, leaders, best, comparisons, level, notes,
                       '; '.join([sentence] + notes))

    if len(names) < 2:
        return verdict('untestable', [], names[0] if names else None, [],
                       'fewer than two rows to compare: no claim')
    if oriented.shape[1] < 2:
        return verdict('untestable', [], None, [],
                       'fewer than two seeds shared by the rows: no claim, since a '
                       'claim needs the spread over seeds')
    if np.all(oriented == oriented[:1]):
        return verdict('equal', names, None, [],
                       'every row has the same value on every seed: '
                       + ', '.join(names))
    order = np.argsort(-oriented.mean(axis=1), kind='stable')
    best = int(order[0])
    difference, error, dof = pairwise_differences(oriented, oriented_replicates)
    # [i, j]: p-value of "j is no better than i"
    p_value = _one_sided_p(difference, error, dof)
    comparisons = [Comparison(names[other], float(difference[other, best]),
                              float(error[other, best]), float(dof[other, best]),
                              float(p_value[other, best])) for other in order[1:]]
    if all(c.p_value <= level for c in comparisons):  # NaN compares False
        return verdict('best', [names[best]], names[best], comparisons,
                       f'best {names[best]}, ahead of every other row (each at '
                       f'p <= {level:.3g})')
    # Hsu's elimination: a row is out once any row beats it at the level.
    beaten = np.nan_to_num(p_value, nan=1.0) <= level
    leaders = [names[row] for row in order if not beaten[row].any()]
    constant = [c.label for c in comparisons
                if c.standard_error == 0 and c.difference != 0]
    notes = [', '.join(constant) + f' differ from {names[best]} by the same amount '
             'on every seed, with no spread to test against'] if constant else []
    return verdict('tie', leaders, names[best], comparisons,
                   'tie, not told apart from the best mean: ' + ', '.join(leaders),
                   notes)


def describe_test(alpha: float = ALPHA) -> str:
    """The one sentence a report gives on how its verdicts were reached."""
    return ('"Best" means the row with the best mean beats every other row in a '
            f'one-sided t-test paired by seed at {alpha:g}/k, k the rows compared '
            f'(Bonferroni), so the chance of any false "best" is at most {alpha:g}; '
            'the noise counted is that of the seeds and of the test images (a '
            'paired bootstrap of the images, shared by every row and seed). '
            'Otherwise the rows that no row beats at that level tie (Hsu\'s '
            'elimination).')
