"""Fair tuning: each training method's one main knob, chosen on held-out data.

Every method gets the same chance: a grid of three values that includes its
published default (at an end of the grid where the default is already at the
strong or weak end of common use), each trained on the study's first seed and
scored by the NLL of the raw model on the hold-out part of the training split
(images no method trains on; CALS and CRaC read it for their multipliers, as
the post-hoc calibrators do for their parameters). NLL because it is a proper
scoring rule: it rewards calibration and accuracy together, where ECE alone
would choose a model that is calibrated by being uniformly unsure. The chosen
value then runs on every seed. The test split chooses nothing.
"""
from typing import Dict, NamedTuple, Sequence, Tuple

from ..methods import method_options

SCORE = 'NLL'  # of the raw model on the hold-out part; lower is better


class Knob(NamedTuple):
    """A method's main hyper-parameter: its option name, its symbol in the
    report, and the grid tried (the method's default among them)."""
    option: str
    symbol: str
    grid: Tuple[float, ...]


KNOBS: Dict[str, Knob] = {
    'ls': Knob('smoothing', 'ε', (0.05, 0.1, 0.2)),
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


def choose(scores: Dict[float, float]) -> float:
    """The grid value with the lowest held-out score; on equal scores, the
    smaller value (a deterministic rule, not a preference).

    Raises:
        ValueError: no scores, or a score that is not a finite number.
    """
    if not scores:
        raise ValueError('no tuning runs to choose from')
    bad = {v: s for v, s in scores.items() if not (s == s and abs(s) != float('inf'))}
    if bad:
        raise ValueError(f'held-out {SCORE} not finite for {bad}')
    return min(sorted(scores), key=lambda value: scores[value])


def tunable(methods: Sequence[str]):
    """The methods of ``methods`` that have a knob, in order."""
    return [m for m in methods if m in KNOBS]
