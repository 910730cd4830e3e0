"""Ensemble temperature scaling (ETS; Zhang, Kailkhura and Han, ICML 2020).

The calibrated probability is a mixture on the simplex of the temperature-scaled
softmax, the softmax itself and the uniform distribution:

    p = w_0 softmax(z / T) + w_1 softmax(z) + w_2 / C

Temperature scaling is the case ``w = (1, 0, 0)``; the uniform share lifts the
probabilities that a temperature cannot lift without flattening every pixel.
ETS does not change the argmax (for ``T > 0`` both softmaxes rank the classes
alike, and the uniform term adds the same to each), up to float rounding of
near-tied classes.

Fitted in two stages as Fiducio (fiducio-ai/Fiducio 0.2.0,
``calibrators/ensemble_temperature.py``) does: ``T`` minimises the NLL of
``softmax(z / T)`` alone, then ``w`` the NLL of the mixture with ``T`` fixed,
from ``(0.998, 0.001, 0.001)``. The authors' own code fits by squared error
(SLSQP), not by the NLL; we follow Fiducio, as every calibrator here minimises
the NLL. Where ours differs from Fiducio's: ``T`` comes from the exact bisection
of :func:`fit_temperature` (Fiducio runs an optimiser on it), the weights from
float64 L-BFGS to convergence on the true class's probabilities (Fiducio's
second stage, without its best-iterate restore, which L-BFGS does not need), and
the mixture is clamped at the smallest positive float64 (theirs: 1e-12).
"""
import math

import torch
import torch.nn as nn
from torch import Tensor

from mmseg.registry import MODELS

from .base import Calibrator
from .temperature import bounded_exp, fit_temperature

START_WEIGHTS = (0.998, 0.001, 0.001)


@MODELS.register_module()
class EnsembleTemperatureScaling(Calibrator):
    """``log(w_0 softmax(z / T) + w_1 softmax(z) + w_2 / C)`` (module docstring).

    The weights are ``softmax`` of raw parameters; the identity is exactly
    ``w = (0, 1, 0)``.
    """

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.log_temperature = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.raw_weights = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        self.identity()

    @property
    def temperature(self) -> float:
        return float(bounded_exp(self.log_temperature.detach()))

    @property
    def weights(self) -> Tensor:
        """``(3, )`` the mixture's weights ``w``."""
        return torch.softmax(self.raw_weights.detach(), dim=0)

    def identity(self) -> None:
        with torch.no_grad():
            self.log_temperature.zero_()
            self.raw_weights.copy_(torch.tensor([-math.inf, 0.0, -math.inf],
                                                device=self.raw_weights.device))

    def _components(self, logits: Tensor) -> Tensor:
        """``(3, P, C)`` the mixture's three distributions."""
        return torch.stack([
            torch.softmax(logits / bounded_exp(self.log_temperature), dim=1),
            torch.softmax(logits, dim=1),
            torch.full_like(logits, 1 / self.num_classes)])

    def transform(self, logits: Tensor) -> Tensor:
        weights = torch.softmax(self.raw_weights, dim=0)
        mixture = torch.einsum('m,mpc->pc', weights, self._components(logits))
        return mixture.clamp_min(torch.finfo(mixture.dtype).tiny).log()

    def _minimise(self, logits, labels, images, max_iterations) -> None:
        with torch.no_grad():
            self.log_temperature.fill_(math.log(fit_temperature(logits, labels)))
            self.raw_weights.copy_(torch.tensor(
                START_WEIGHTS, device=self.raw_weights.device).log())
            # The NLL needs each component's probability of the true class only.
            true = self._components(logits).gather(
                2, labels.view(1, -1, 1).expand(3, -1, 1)).squeeze(2)  # (3, P)
        optimizer = torch.optim.LBFGS([self.raw_weights], lr=1.0,
                                      max_iter=max_iterations,
                                      line_search_fn='strong_wolfe')
        tiny = torch.finfo(true.dtype).tiny

        def closure():
            optimizer.zero_grad()
            mixture = torch.softmax(self.raw_weights, dim=0) @ true
            loss = -mixture.clamp_min(tiny).log().mean()
            loss.backward()
            return loss

        optimizer.step(closure)
