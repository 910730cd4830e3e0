"""Post-hoc temperature scaling (Guo et al., 2017): one scalar T for all logits."""
import math

import torch
from torch import Tensor

MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3
LOG_MIN, LOG_MAX = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)


def nll_slope(logits: Tensor, labels: Tensor, inverse_temperature: float) -> float:
    """``d NLL / d beta`` at ``beta = 1 / T``: ``mean(E_p[z] - z_y)``.

    NLL is convex in ``beta`` (its second derivative is the variance of ``z``
    under ``p``), so this slope increases with ``beta``.
    """
    prob = torch.softmax(logits * inverse_temperature, dim=1)
    expected = (prob * logits).sum(dim=1)
    true = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    return float((expected - true).mean())


def fit_temperature(logits: Tensor, labels: Tensor, iterations: int = 60) -> float:
    """The temperature that minimises the NLL of ``softmax(logits / T)``.

    Bisection on the sign of the slope in ``log(1 / T)`` over ``[1e-3, 1e3]``:
    exact to ``(log 1e6) / 2^iterations`` and free of step sizes.

    Args:
        logits (Tensor): ``(N, C)`` pixels' logits.
        labels (Tensor): ``(N, )`` their classes.
        iterations (int): bisection steps.

    Returns:
        float: ``T``, clipped to the search range when the minimum lies beyond it.
    """
    if logits.shape[0] == 0:
        raise ValueError('no pixels to fit the temperature on')
    logits = logits.double()
    low, high = -math.log(MAX_TEMPERATURE), -math.log(MIN_TEMPERATURE)
    for _ in range(iterations):
        middle = (low + high) / 2
        if nll_slope(logits, labels, math.exp(middle)) > 0:
            high = middle
        else:
            low = middle
    return 1 / math.exp((low + high) / 2)
