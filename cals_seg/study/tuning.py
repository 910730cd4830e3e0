"""Fair tuning: each training method's one main knob, chosen on images nothing
was fitted on, by runs that are not reported.

Every method gets the same chance: a grid of three values that includes its
published default (at an end of the grid where the default is already at the
strong or weak end of common use). Each value trains on the study's tuning
seeds, which are not among its reported seeds, so the run that chose a value
never reports it (a run that won the choice by its seed's luck would carry that
luck into the reported row). Each is scored by the NLL of the raw model on the
selection part of the training split (:class:`cals_seg.datasets.HashSplitDataset`),
which nothing was fitted on: not the weights, not CALS's or CRaC's multipliers
(they read the hold-out part), not a calibrator. NLL because it is a proper
scoring rule: it rewards calibration and accuracy together, where ECE alone
would choose a model that is calibrated by being uniformly unsure.

The value with the lowest mean NLL over the tuning seeds is chosen. A choice at
an end of the grid extends the grid one step past that end (the ratio of the end
value to its neighbour, once), and the choice is made again over the extended
grid. The chosen value then runs on every reported seed. The test split chooses
nothing.
"""
import math
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

from ..methods import method_options

SCORE = 'NLL'  # of the raw model on the selection part; lower is better
SPLIT = 'selection'  # the record's split the score is read from
DEFAULT_SELECTION_FRACTION = 0.2
DEFAULT_TUNING_SEEDS = (100, )
NOISE_ERRORS = 2.0  # a difference within this many standard errors is noise


class Knob(NamedTuple):
    """A method's main hyper-parameter: its option name, its symbol in the
    report, the grid tried (the method's default among them) and the open upper
    bound of its valid values (every knob is > 0)."""
    option: str
    symbol: str
    grid: Tuple[float, ...]
    upper: float = math.inf


KNOBS: Dict[str, Knob] = {
    'ls': Knob('smoothing', 'ε', (0.05, 0.1, 0.2), upper=1.0),
    'fl': Knob('gamma', 'γ', (1.0, 2.0, 3.0)),
    'mbls': Knob('margin', 'm', (5.0, 10.0, 20.0)),
    'ecp': Knob('beta', 'β', (0.05, 0.1, 0.3)),
    'nacl': Knob('alpha', 'α', (0.03, 0.1, 0.3)),
    'cals': Knob('margin', 'm', (5.0, 10.0, 20.0)),
    'crac': Knob('margin', 'm', (2.5, 5.0, 10.0)),
}


def default_value(method: str) -> float:
    """The method's published default of its knob (the recipe's)."""
    return method_options(method)[KNOBS[method].option]


def mean_scores(scores: Dict[float, Sequence[float]]) -> Dict[float, float]:
    """Each value's score averaged over the tuning seeds.

    Raises:
        ValueError: no scores, or a score that is not a finite number.
    """
    if not scores:
        raise ValueError('no tuning runs to choose from')
    bad = {v: s for v, s in scores.items()
           if not s or not all(math.isfinite(x) for x in s)}
    if bad:
        raise ValueError(f'{SPLIT} {SCORE} not finite for {bad}')
    return {value: sum(s) / len(s) for value, s in scores.items()}


def choose(scores: Dict[float, Sequence[float]]) -> float:
    """The value with the lowest mean score over the tuning seeds; on equal
    means, the smaller value (a deterministic rule, not a preference).

    Args:
        scores: per grid value, its score on each tuning seed.

    Raises:
        ValueError: see :func:`mean_scores`.
    """
    means = mean_scores(scores)
    return min(sorted(means), key=lambda value: means[value])


def extension(knob: Knob, grid: Sequence[float], chosen: float) -> Optional[float]:
    """The value one step past the end of ``grid`` that ``chosen`` sits at: the
    end times its ratio to its neighbour (5, 10, 20 chosen 5: 2.5), rounded to
    6 significant digits; None when ``chosen`` is inside the grid, or the step
    leaves the knob's valid range."""
    values = sorted(grid)
    if len(values) < 2 or chosen not in (values[0], values[-1]):
        return None
    end, neighbour = ((values[0], values[1]) if chosen == values[0]
                      else (values[-1], values[-2]))
    value = float(f'{end * end / neighbour:.6g}')
    return value if 0 < value < knob.upper else None


def per_seed_choices(scores: Dict[float, Sequence[float]]) -> list:
    """The value each tuning seed alone would choose (lowest score, ties to
    the smaller value)."""
    seeds = len(next(iter(scores.values())))
    return [min(sorted(scores), key=lambda value: scores[value][k])
            for k in range(seeds)]


def tunable(methods: Sequence[str]):
    """The methods of ``methods`` that have a knob, in order."""
    return [m for m in methods if m in KNOBS]
