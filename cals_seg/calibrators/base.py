"""One interface for post-hoc calibrators: fit on held-out pixels, save, load,
apply to logits of any size.

A calibrator is a small ``nn.Module`` that maps logits ``(N, C, *S)`` (and, for
some, the images) to calibrated logits of the same shape (softmax of the output
is the calibrated probability). Pixel-wise calibrators see one pixel's logits at
a time and fit on pixels ``(P, C)`` or maps; spatial ones (``spatial = True``,
LTS) see a neighbourhood and fit on maps ``(N, C, H, W)``.
:meth:`Calibrator.fit` minimises the negative log-likelihood of held-out pixels
and refuses to fail silently: parameters are bounded, a fit that
does not lower the held-out NLL is undone (the calibrator stays the identity) with
a warning that gives both numbers, and non-finite input is an error. Files hold
the calibrator's type, class count, options, parameters and fit record, and
load with
``torch.load(weights_only=True)``.
"""
import io
import os
import warnings
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmseg.registry import MODELS

from ..utils.io import write_atomic

FILE_VERSION = 1
IGNORE = -100  # F.cross_entropy's default ignore_index


class FitRecord(NamedTuple):
    """What a fit did, in numbers: held-out NLL before and after, pixels used,
    and whether the fit was kept."""
    nll_before: float
    nll_after: float
    num_pixels: int
    kept: bool


class CalibratorFileError(ValueError):
    """A calibrator file that cannot be used: unreadable, of another format, or
    for another number of classes."""


class Calibrator(nn.Module):
    """Base class: subclasses define their parameters, :meth:`identity` and
    :meth:`transform` (pixel-wise) or :meth:`forward` (spatial); fitting,
    checking, saving and loading are shared.

    Args:
        num_classes (int): ``C``.
    """
    spatial = False  # True: forward needs maps (N, C, H, W), fit takes maps
    needs_images = False  # True: forward and fit need the images too

    def __init__(self, num_classes: int):
        super().__init__()
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f'num_classes must be an int >= 2, got {num_classes!r}')
        self.num_classes = num_classes
        self.fit_record: Optional[FitRecord] = None

    def options(self) -> dict:
        """Constructor arguments besides ``num_classes``, saved with the file."""
        return {}

    def identity(self) -> None:
        """Set the parameters so that the calibrator returns its input."""
        raise NotImplementedError

    def transform(self, logits: Tensor) -> Tensor:
        """Calibrated logits of pixels ``(P, C)`` (pixel-wise calibrators)."""
        raise NotImplementedError

    def regularization(self) -> Tensor:
        """Penalty added to the mean NLL while fitting (none by default)."""
        return torch.zeros(())

    def _check_logits(self, logits: Tensor) -> None:
        if logits.dim() < 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f'{type(self).__name__} was fitted for '
                             f'{self.num_classes} classes; logits of shape '
                             f'{tuple(logits.shape)} have '
                             f'{logits.shape[1] if logits.dim() > 1 else "no"} at dim 1')

    def forward(self, logits: Tensor, images: Optional[Tensor] = None) -> Tensor:
        """Calibrated logits of the same shape as ``logits`` ``(N, C, *S)``.

        Args:
            logits (Tensor): ``(N, C, *S)``.
            images (Tensor, optional): ``(N, 3, *S)``, for calibrators that
                need them; others ignore it.
        """
        self._check_logits(logits)
        pixels = logits.movedim(1, -1).reshape(-1, self.num_classes)
        out = self.transform(pixels.to(self._dtype()))
        return out.to(logits.dtype).reshape(logits.movedim(1, -1).shape).movedim(-1, 1)

    def _dtype(self):
        return next(self.parameters()).dtype

    def _nll(self, logits: Tensor, labels: Tensor,
             images: Optional[Tensor]) -> Tensor:
        return F.cross_entropy(self(logits, images), labels, ignore_index=IGNORE)

    def _minimise(self, logits: Tensor, labels: Tensor, images: Optional[Tensor],
                  max_iterations: int) -> None:
        """Move the parameters to the minimum of the regularised NLL (L-BFGS with
        a strong-Wolfe line search: no step size to tune)."""
        optimizer = torch.optim.LBFGS(self.parameters(), lr=1.0,
                                      max_iter=max_iterations,
                                      line_search_fn='strong_wolfe')

        def closure():
            optimizer.zero_grad()
            loss = self._nll(logits, labels, images) + self.regularization()
            loss.backward()
            return loss

        optimizer.step(closure)

    def fit(self, logits: Tensor, labels: Tensor, images: Optional[Tensor] = None,
            ignore_index: int = 255, max_iterations: int = 200) -> FitRecord:
        """Minimise the held-out NLL, starting from the identity.

        Args:
            logits (Tensor): held-out pixels ``(P, C)`` or maps ``(N, C, H, W)``
                (spatial calibrators need maps).
            labels (Tensor): ``(P, )`` or ``(N, H, W)``; ``ignore_index`` pixels
                are left out.
            images (Tensor, optional): ``(N, 3, H, W)``, for calibrators that
                need them.
            ignore_index (int): label of pixels to leave out.
            max_iterations (int): optimiser iterations.

        Returns:
            FitRecord: also kept as ``self.fit_record`` and saved with the file.

        Raises:
            ValueError: no pixels, wrong shapes, non-finite logits, labels out
                of range, missing images.
        """
        logits, labels, images = self._check_fit_input(logits, labels, images,
                                                       ignore_index)
        self.identity()
        self.eval()
        with torch.no_grad():
            before = float(self._nll(logits, labels, images))
        self.train()
        with torch.enable_grad():  # also under a caller's torch.no_grad()
            self._minimise(logits, labels, images, max_iterations)
        self.eval()
        with torch.no_grad():
            after = float(self._nll(logits, labels, images))
        kept = after == after and after <= before
        if not kept:
            warnings.warn(f'{type(self).__name__}: the fit did not lower the held-out '
                          f'NLL ({before:.6g} before, {after:.6g} after); keeping the '
                          'identity')
            self.identity()
            after = before
        self.fit_record = FitRecord(before, after, int((labels != IGNORE).sum()),
                                    kept)
        return self.fit_record

    def _check_fit_input(self, logits: Tensor, labels: Tensor,
                         images: Optional[Tensor], ignore_index: int):
        self._check_logits(logits)
        if labels.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f'labels of shape {tuple(labels.shape)} do not match '
                             f'logits of shape {tuple(logits.shape)}')
        if self.spatial and logits.dim() != 4:
            raise ValueError(f'{type(self).__name__} fits on logit maps '
                             f'(N, {self.num_classes}, H, W), got '
                             f'{tuple(logits.shape)}')
        if self.needs_images and (images is None or images.shape[0] != logits.shape[0]
                                  or images.shape[2:] != logits.shape[2:]):
            raise ValueError(f'{type(self).__name__} needs the images (N, 3, H, W) '
                             'of the logits it fits on')
        if not bool(torch.isfinite(logits).all()):
            raise ValueError('logits hold NaN or infinite values; nothing to fit')
        labels = labels.long()
        kept = labels != ignore_index
        if not bool(kept.any()):
            raise ValueError('no pixels to fit on')
        valid = labels[kept]
        if int(valid.min()) < 0 or int(valid.max()) >= self.num_classes:
            raise ValueError(f'labels must be in [0, {self.num_classes}) or '
                             f'{ignore_index}, got [{int(valid.min())}, '
                             f'{int(valid.max())}]')
        if not self.spatial:
            pixels = logits.movedim(1, -1).reshape(-1, self.num_classes)
            flat = kept.reshape(-1)
            return pixels[flat].to(self._dtype()), labels.reshape(-1)[flat], None
        labels = torch.where(kept, labels, torch.full_like(labels, IGNORE))
        if images is not None:
            images = images.to(self._dtype())
        return logits.to(self._dtype()), labels, images

    def save(self, path: str) -> None:
        """Write the calibrator to ``path`` (atomically)."""
        buffer = io.BytesIO()
        torch.save(dict(version=FILE_VERSION, type=type(self).__name__,
                        num_classes=self.num_classes, options=self.options(),
                        state_dict={k: v.detach().cpu()
                                    for k, v in self.state_dict().items()},
                        fit_record=list(self.fit_record) if self.fit_record else None),
                   buffer)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        write_atomic(path, buffer.getvalue())


def load_calibrator(path: str, num_classes: Optional[int] = None) -> Calibrator:
    """A calibrator written by :meth:`Calibrator.save`.

    Args:
        path (str): the file.
        num_classes (int, optional): the class count of the logits it will be
            applied to; a file for another count is an error.

    Raises:
        CalibratorFileError: unreadable or foreign file, or class-count mismatch.
    """
    try:
        content = torch.load(path, map_location='cpu', weights_only=True)
        kind, classes = content['type'], int(content['num_classes'])
        state, record = content['state_dict'], content['fit_record']
        options = dict(content.get('options') or {})
        version = content['version']
    except FileNotFoundError:
        raise CalibratorFileError(f'{path}: no such calibrator file') from None
    except Exception as error:
        raise CalibratorFileError(
            f'{path}: not a calibrator file ({type(error).__name__}: {error})') from None
    if version != FILE_VERSION:
        raise CalibratorFileError(f'{path}: calibrator file version {version}, this '
                                  f'cals-seg reads version {FILE_VERSION}')
    if num_classes is not None and classes != num_classes:
        raise CalibratorFileError(f'{path}: the calibrator was fitted for {classes} '
                                  f'classes, the logits have {num_classes}')
    try:
        calibrator = MODELS.build(dict(type=kind, num_classes=classes, **options))
    except (KeyError, TypeError):
        raise CalibratorFileError(f'{path}: unknown calibrator type {kind!r}') from None
    if not isinstance(calibrator, Calibrator):
        raise CalibratorFileError(f'{path}: {kind!r} is not a calibrator')
    try:
        calibrator.load_state_dict(state)
    except RuntimeError as error:
        raise CalibratorFileError(f'{path}: parameters do not fit {kind} with '
                                  f'{classes} classes ({error})') from None
    calibrator.fit_record = FitRecord(*record) if record else None
    return calibrator.eval()
