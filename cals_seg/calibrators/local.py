"""Local temperature scaling (LTS; Ding et al., ICCV 2021).

A small convolutional network reads each pixel's neighbourhood of logits (and,
optionally, of the image) and predicts that pixel's temperature:
``softmax(z(x) / T(x))``. Ported from the authors' ``LTS_CamVid_With_Image``
(github.com/uncbiag/LTS, code/calibration_models.py): four temperature maps and
three gates from the logits, mixed by sigmoid gates two levels deep, then mixed
with one temperature map from the image by a fourth gate; every map is a 5 x 5
convolution with dilation 2 and reflect padding, initialised to zero.

Where ours differs, and why:

- **Log-temperatures.** Theirs mixes temperatures and takes
  ``relu(mixture + 1) + 1e-8``, so an untrained LTS is ``T = 2`` and a large
  step can send ``T`` to 1e-8. Ours mixes log-temperatures with the same gates
  and ``T = exp(mixture)``, clamped to [1e-3, 1e3] like every calibrator here:
  always positive, and the untrained calibrator is the identity.
- **Training.** Theirs: Adam, lr 1e-4, batch 4 full CamVid images, 200 epochs,
  the best epoch on validation. Ours starts from temperature scaling (its exact
  ``T``, fitted first, as every map's offset), so the network only learns where
  the temperature should differ from the global one, and then runs full-batch
  L-BFGS with a strong-Wolfe line search over the held-out crops: no learning
  rate to choose, and every accepted step lowers the NLL. With Adam at their
  learning rate the over-confident logits of our benchmark (differences above
  10) moved the temperature maps far in one step and the fit diverged.
- **No CUDA or class count hard-coded**; the image branch is optional
  (``use_image``) and reads images scaled to [0, 1].
"""
import math
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from mmseg.registry import MODELS

from .base import IGNORE, Calibrator, CalibratorInputError
from .temperature import LOG_MAX, LOG_MIN, fit_temperature

# Each map's reach: a 5 x 5 kernel with dilation 2 sees 4 pixels to each side,
# padded by reflection, which needs more pixels than that on every side.
PADDING = 4
MIN_SIDE = PADDING + 1


def _map(in_channels: int) -> nn.Conv2d:
    """One temperature or gate map, as the authors': 5 x 5, dilation 2."""
    conv = nn.Conv2d(in_channels, 1, kernel_size=5, padding=PADDING, dilation=2,
                     padding_mode='reflect')
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


@MODELS.register_module()
class LocalTemperatureScaling(Calibrator):
    """A temperature per pixel from its neighbourhood of logits (and image).

    Args:
        num_classes (int): ``C``.
        use_image (bool): add the authors' image branch; ``forward`` and
            ``fit`` then need the images ``(N, 3, H, W)`` in [0, 255].
            Default: False.
    """
    spatial = True

    def __init__(self, num_classes: int, use_image: bool = False):
        super().__init__(num_classes)
        self.use_image = bool(use_image)
        self.needs_images = self.use_image
        self.temperatures = nn.ModuleList(_map(num_classes) for _ in range(4))
        self.gates = nn.ModuleList(_map(num_classes) for _ in range(3))
        if self.use_image:
            self.image_temperature = _map(3)
            self.image_gate = _map(num_classes)

    def options(self) -> dict:
        return dict(use_image=self.use_image)

    def identity(self) -> None:
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.zero_()

    def temperature(self, logits: Tensor, images: Optional[Tensor] = None) -> Tensor:
        """Per-pixel temperatures ``(N, 1, H, W)`` of logit maps ``(N, C, H, W)``."""
        z = logits.to(self._dtype())
        t = [conv(z) for conv in self.temperatures]  # log-temperatures
        g = [torch.sigmoid(conv(z)) for conv in self.gates]
        level_1 = t[0] * g[0] + t[1] * (1 - g[0])
        level_2 = t[2] * g[1] + t[3] * (1 - g[1])
        log_temperature = level_1 * g[2] + level_2 * (1 - g[2])
        if self.use_image:
            from_image = self.image_temperature(images.to(self._dtype()) / 255)
            gate = torch.sigmoid(self.image_gate(z))
            log_temperature = log_temperature * gate + from_image * (1 - gate)
        return log_temperature.clamp(LOG_MIN, LOG_MAX).exp()

    def forward(self, logits: Tensor, images: Optional[Tensor] = None) -> Tensor:
        self._check_logits(logits)
        if logits.dim() != 4:
            raise CalibratorInputError(
                'LocalTemperatureScaling needs logit maps '
                f'(N, {self.num_classes}, H, W), got {tuple(logits.shape)}')
        if min(logits.shape[2:]) < MIN_SIDE:
            raise CalibratorInputError(
                f'LocalTemperatureScaling needs maps of at least {MIN_SIDE} x '
                f'{MIN_SIDE} pixels (its reflect padding of {PADDING} needs more '
                f'than {PADDING} on each side), got {tuple(logits.shape[2:])}')
        if self.use_image and images is None:
            raise CalibratorInputError('this LocalTemperatureScaling uses the '
                                       'image; pass images (N, 3, H, W)')
        scaled = logits.to(self._dtype()) / self.temperature(logits, images)
        return scaled.to(logits.dtype)

    def _minimise(self, logits: Tensor, labels: Tensor, images: Optional[Tensor],
                  max_iterations: int) -> None:
        """Temperature scaling's ``T`` as the start, then L-BFGS on every map."""
        kept = labels != IGNORE
        start = fit_temperature(logits.movedim(1, -1)[kept], labels[kept])
        with torch.no_grad():
            for conv in self.temperatures:
                conv.bias.fill_(math.log(start))
            if self.use_image:
                self.image_temperature.bias.fill_(math.log(start))
        super()._minimise(logits, labels, images, max_iterations)
