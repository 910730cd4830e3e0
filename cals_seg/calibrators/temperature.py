"""Temperature scaling (Guo et al., ICML 2017): one scalar ``T`` for all logits,
and the exact one-dimensional fit that LTS and selective scaling start from.

Temperatures are stored as logarithms clamped to [1e-3, 1e3], so no fit can
drive them to 0 or to the 1e7 of gpleiss/temperature_scaling#23.
"""
import math

import torch
import torch.nn as nn
from torch import Tensor

from mmseg.registry import MODELS

from .base import Calibrator

MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3
LOG_MIN, LOG_MAX = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)


def bounded_exp(log_value: Tensor) -> Tensor:
    """``exp`` of a log-temperature or log-scale clamped to [1e-3, 1e3]."""
    return log_value.clamp(LOG_MIN, LOG_MAX).exp()


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


@MODELS.register_module()
class TemperatureScaling(Calibrator):
    """One temperature ``T`` for every logit: ``softmax(z / T)``.

    Fitted by bisection on the sign of the NLL's slope (the NLL is convex in
    ``1 / T``), exact to float precision and free of step sizes.
    """

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.log_temperature = nn.Parameter(torch.zeros((), dtype=torch.float64))

    @property
    def temperature(self) -> float:
        return float(bounded_exp(self.log_temperature.detach()))

    def identity(self) -> None:
        with torch.no_grad():
            self.log_temperature.zero_()

    def transform(self, logits: Tensor) -> Tensor:
        return logits / bounded_exp(self.log_temperature)

    def _minimise(self, logits, labels, images, max_iterations) -> None:
        temperature = fit_temperature(logits, labels)
        with torch.no_grad():
            self.log_temperature.fill_(math.log(temperature))
