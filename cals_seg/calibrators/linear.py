"""Calibrators that rescale or linearly map each pixel's logits (temperature
scaling, one ``T`` for all, is in temperature.py).

- :class:`ClassTemperatureScaling`: ``z_k / T_k``, one temperature per class.
- :class:`VectorScaling`: ``w_k z_k + b_k`` (Guo et al. 2017).
- :class:`DirichletScaling`: ``W log softmax(z) + b`` with off-diagonal and
  intercept regularisation (ODIR; Kull et al., NeurIPS 2019).

Scales and temperatures are stored as logarithms clamped to [1e-3, 1e3], so no fit
can drive them to 0 or to the 1e7 of gpleiss/temperature_scaling#23.
"""
import torch
import torch.nn as nn
from torch import Tensor

from mmseg.registry import MODELS

from .base import Calibrator
from .temperature import bounded_exp


@MODELS.register_module()
class ClassTemperatureScaling(Calibrator):
    """One temperature per class: ``softmax(z_k / T_k)``."""

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.log_temperature = nn.Parameter(
            torch.zeros(num_classes, dtype=torch.float64))

    def identity(self) -> None:
        with torch.no_grad():
            self.log_temperature.zero_()

    def transform(self, logits: Tensor) -> Tensor:
        return logits / bounded_exp(self.log_temperature)


@MODELS.register_module()
class VectorScaling(Calibrator):
    """A scale and a bias per class: ``softmax(w_k z_k + b_k)``."""

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.log_scale = nn.Parameter(torch.zeros(num_classes, dtype=torch.float64))
        self.bias = nn.Parameter(torch.zeros(num_classes, dtype=torch.float64))

    def identity(self) -> None:
        with torch.no_grad():
            self.log_scale.zero_()
            self.bias.zero_()

    def transform(self, logits: Tensor) -> Tensor:
        return logits * bounded_exp(self.log_scale) + self.bias


@MODELS.register_module()
class DirichletScaling(Calibrator):
    """``softmax(W log softmax(z) + b)``, a full ``C x C`` map of the
    log-probabilities, with ODIR: ``off_diagonal * mean of W's off-diagonal
    entries squared + intercept * mean of b squared`` added to the NLL.

    Args:
        num_classes (int): ``C``.
        off_diagonal (float): weight of the off-diagonal penalty. Default: 1e-3.
        intercept (float): weight of the intercept penalty. Default: 1e-3.
            Kull et al. choose both by cross-validation on the held-out set;
            the defaults are a light regularisation, not a chosen value.
    """

    def __init__(self, num_classes: int, off_diagonal: float = 1e-3,
                 intercept: float = 1e-3):
        super().__init__(num_classes)
        if off_diagonal < 0 or intercept < 0:
            raise ValueError('the ODIR weights must be >= 0, got '
                             f'off_diagonal={off_diagonal}, intercept={intercept}')
        self.off_diagonal = off_diagonal
        self.intercept = intercept
        self.weight = nn.Parameter(torch.eye(num_classes, dtype=torch.float64))
        self.bias = nn.Parameter(torch.zeros(num_classes, dtype=torch.float64))

    def options(self) -> dict:
        return dict(off_diagonal=self.off_diagonal, intercept=self.intercept)

    def identity(self) -> None:
        with torch.no_grad():
            nn.init.eye_(self.weight)
            self.bias.zero_()

    def transform(self, logits: Tensor) -> Tensor:
        return torch.log_softmax(logits, dim=1) @ self.weight.T + self.bias

    def regularization(self) -> Tensor:
        off = self.weight - torch.diag(torch.diagonal(self.weight))
        count = self.num_classes * (self.num_classes - 1)
        return (self.off_diagonal * off.square().sum() / count +
                self.intercept * self.bias.square().mean())
