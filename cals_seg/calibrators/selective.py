"""Selective scaling (Wang, Gong and Wang, CVPR 2023).

A misprediction detector reads each pixel's log-probabilities and says whether
the prediction is wrong; pixels it flags get a large temperature, the others
keep theirs: ``softmax(z / T_wrong)`` where flagged, ``softmax(z)`` elsewhere.
Ported from the authors' ``Binary_Classifier`` and README
(github.com/dwang181/selectivecal, calibration_models.py, calibrator_train.py):
a ``C x C`` linear map of ``log p`` initialised to the identity, then
``C -> 2C -> C -> 2`` linear layers with batch norm and ReLU, trained with
cross-entropy on right/wrong labels where wrong pixels count twice (their
duplication of negative samples), AdamW with weight decay 1e-6, lr 1e-3.

Where ours differs, and why:

- **T_wrong is fitted, not set by hand.** The authors pick it by hand (about 2
  for a weak detector, up to 1e10 for a strong one). Ours minimises the NLL of
  the flagged held-out pixels over ``T_wrong`` in [1, 1e3] (the NLL is convex
  in ``1 / T``; bisection, as temperature scaling), so it adapts to the
  detector's accuracy without looking at test data.
- **Mini-batches of 4096 pixels for a fixed number of steps** (theirs: 20
  pixels, 40 epochs, the best epoch on a validation split): a held-out set of
  millions of pixels trains in seconds on a CPU. A fifth of the fitting pixels
  (seeded) is kept aside to pick the best of the checkpoints taken every 100
  steps, as their best-epoch choice.
"""
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmseg.registry import MODELS

from .temperature import MAX_TEMPERATURE, fit_temperature
from .base import Calibrator

WRONG_WEIGHT = 2.0  # the authors duplicate every wrong pixel once
CHECK_EVERY = 100


def _detector(num_classes: int) -> nn.Sequential:
    """The authors' detector, initialised from a fixed seed (not the global
    random state), so that a fit is reproducible."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _build_detector(num_classes)


def _build_detector(num_classes: int) -> nn.Sequential:
    first = nn.Linear(num_classes, num_classes)
    nn.init.eye_(first.weight)
    nn.init.zeros_(first.bias)
    return nn.Sequential(
        first, nn.BatchNorm1d(num_classes), nn.ReLU(),
        nn.Linear(num_classes, 2 * num_classes), nn.BatchNorm1d(2 * num_classes),
        nn.ReLU(), nn.Linear(2 * num_classes, num_classes),
        nn.BatchNorm1d(num_classes), nn.ReLU(), nn.Linear(num_classes, 2))


@MODELS.register_module()
class SelectiveScaling(Calibrator):
    """Temperature ``T_wrong`` for pixels a detector flags as mispredicted.

    Args:
        num_classes (int): ``C``.
        iterations (int): detector training steps. Default: 2000.
        batch_size (int): pixels per step. Default: 4096.
        learning_rate (float): AdamW's. Default: 1e-3.
    """

    def __init__(self, num_classes: int, iterations: int = 2000,
                 batch_size: int = 4096, learning_rate: float = 1e-3):
        super().__init__(num_classes)
        self.iterations = iterations
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.detector = _detector(num_classes)
        self.log_wrong_temperature = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def options(self) -> dict:
        return dict(iterations=self.iterations, batch_size=self.batch_size,
                    learning_rate=self.learning_rate)

    def _dtype(self):
        return torch.float64

    @property
    def wrong_temperature(self) -> float:
        return math.exp(self.log_wrong_temperature.item())

    def identity(self) -> None:
        """``T_wrong = 1``, and the detector back to its seeded start, so that
        every fit starts from the same point."""
        with torch.no_grad():
            self.log_wrong_temperature.zero_()
        self.detector.load_state_dict(_detector(self.num_classes).state_dict())

    def flagged(self, logits: Tensor) -> Tensor:
        """Whether the detector calls each pixel ``(P, C)`` wrong: ``(P, )`` bool."""
        log_prob = torch.log_softmax(logits.float(), dim=1)
        return self.detector(log_prob).argmax(dim=1) == 1

    def transform(self, logits: Tensor) -> Tensor:
        temperature = torch.where(self.flagged(logits),
                                  self.log_wrong_temperature.exp(), 1.0)
        return logits / temperature.unsqueeze(1)

    def _minimise(self, logits: Tensor, labels: Tensor, images, max_iterations) -> None:
        # Indices are drawn on the CPU, whatever the device, so that a fit is
        # the same on every device; they then follow the logits.
        generator = torch.Generator().manual_seed(0)
        device = logits.device
        wrong = (logits.argmax(dim=1) != labels).long()
        order = torch.randperm(logits.shape[0], generator=generator,
                               device='cpu').to(device)
        aside = order[:max(1, logits.shape[0] // 5)]
        train = order[aside.numel():] if logits.shape[0] > 1 else order
        features = torch.log_softmax(logits.float(), dim=1)
        weight = torch.tensor([1.0, WRONG_WEIGHT], device=device)
        optimizer = torch.optim.AdamW(self.detector.parameters(),
                                      lr=self.learning_rate, weight_decay=1e-6)

        def aside_loss():
            self.detector.eval()
            with torch.no_grad():
                return float(F.cross_entropy(self.detector(features[aside]),
                                             wrong[aside], weight=weight))

        best = (aside_loss(), copy.deepcopy(self.detector.state_dict()))
        for step in range(1, self.iterations + 1):
            self.detector.train()
            batch = train[torch.randint(train.numel(),
                                        (min(self.batch_size, train.numel()), ),
                                        generator=generator, device='cpu').to(device)]
            if batch.numel() < 2:  # batch norm needs two pixels
                break
            optimizer.zero_grad()
            F.cross_entropy(self.detector(features[batch]), wrong[batch],
                            weight=weight).backward()
            optimizer.step()
            if step % CHECK_EVERY == 0 or step == self.iterations:
                loss = aside_loss()
                if loss < best[0]:
                    best = (loss, copy.deepcopy(self.detector.state_dict()))
        self.detector.load_state_dict(best[1])
        self.detector.eval()
        with torch.no_grad():
            flagged = self.flagged(logits)
        temperature = 1.0
        if bool(flagged.any()):
            temperature = min(max(fit_temperature(logits[flagged], labels[flagged]),
                                  1.0), MAX_TEMPERATURE)
        with torch.no_grad():
            self.log_wrong_temperature.fill_(math.log(temperature))
