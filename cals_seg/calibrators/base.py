"""One interface for post-hoc calibrators: fit on held-out pixels, save, load,
apply to logits of any size.

A calibrator is a small ``nn.Module`` that maps logits ``(N, C, *S)`` (and, for
some, the images) to calibrated logits of the same shape (softmax of the output
is the calibrated probability). Pixel-wise calibrators see one pixel's logits at
a time and fit on pixels ``(P, C)`` or maps; spatial ones (``spatial = True``,
LTS) see a neighbourhood and fit on maps ``(N, C, H, W)``.

:meth:`Calibrator.fit` minimises the negative log-likelihood of held-out pixels
and refuses to fail silently. It splits the held-out images in two, whole
images at a time (:func:`split_by_image`): the parameters are fitted on the fit
part, and the NLL of the check part, images the fit never saw, decides whether
the fit is kept. A fit that raises the check NLL (it over-fits the fit images or
diverged) is undone, the calibrator stays the identity, with a warning that
gives both numbers. Parameters are bounded and non-finite input is an error.
Files hold the calibrator's type, class count, options, parameters and fit
record, and load with ``torch.load(weights_only=True)``.
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

FILE_VERSION = 2  # 1: the fit record was checked on the pixels it was fitted on
IGNORE = -100  # F.cross_entropy's default ignore_index
CHECK_FRACTION = 0.25  # share of the held-out images that check a fit


class FitRecord(NamedTuple):
    """What a fit did, in numbers.

    ``fit_*``: the part of the held-out images the parameters were fitted on;
    ``check_*``: the other images, which the fit never saw. NLLs are means over
    labelled pixels, ``*_before`` of the identity and ``*_after`` of the fitted
    parameters, whether kept or not. ``kept``: the fit did not raise the check
    NLL and was kept; otherwise the calibrator is the identity.
    """
    fit_nll_before: float
    fit_nll_after: float
    check_nll_before: float
    check_nll_after: float
    fit_pixels: int
    check_pixels: int
    fit_images: int
    check_images: int
    kept: bool


class CalibratorFileError(ValueError):
    """A calibrator file that cannot be used: unreadable, of another format, or
    for another number of classes."""


class CalibratorInputError(ValueError):
    """Logits, labels or image ids a calibrator cannot fit on or apply to."""


def split_by_image(image_ids: Tensor,
                   check_fraction: float = CHECK_FRACTION) -> Tensor:
    """Which entries (pixels or maps) form the check part of a fit: whole images.

    The distinct ids, sorted, get ranks ``0 .. n-1``; ``k = round(n *
    check_fraction)`` of them, at least one and at most ``n - 1``, check the
    fit: those at ranks ``floor((2j + 1) n / (2k))`` for ``j < k``, spread evenly
    over the ranks. Deterministic: the same ids always split alike.

    Args:
        image_ids (Tensor): ``(M, )`` integer id of each entry's image.
        check_fraction (float): share of the images that check, in (0, 1).

    Returns:
        Tensor: ``(M, )`` bool, True for the entries of check images.

    Raises:
        CalibratorInputError: fewer than two images, or ``check_fraction``
            outside (0, 1).
    """
    if not 0 < check_fraction < 1:
        raise CalibratorInputError(f'check_fraction must be in (0, 1), got '
                                   f'{check_fraction}')
    distinct = torch.unique(image_ids)  # sorted
    count = distinct.numel()
    if count < 2:
        raise CalibratorInputError(
            f'the labelled held-out pixels come from {count} image(s), and the '
            'check part '
            'of a fit would hold none: a fit is checked on images it is not '
            'fitted on, so pass pixels of two images or more')
    chosen = min(count - 1, max(1, round(count * check_fraction)))
    ranks = ((2 * torch.arange(chosen, device=distinct.device) + 1) * count //
             (2 * chosen))
    return torch.isin(image_ids, distinct[ranks])


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
        return next(self.parameters()).new_zeros(())

    def _check_logits(self, logits: Tensor) -> None:
        if logits.dim() < 2 or logits.shape[1] != self.num_classes:
            raise CalibratorInputError(f'{type(self).__name__} was fitted for '
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

    def fit(self, logits: Tensor, labels: Tensor, image_ids: Tensor,
            images: Optional[Tensor] = None, ignore_index: int = 255,
            max_iterations: int = 200,
            check_fraction: float = CHECK_FRACTION) -> FitRecord:
        """Fit on part of the held-out images and check on the others.

        Starts from the identity, minimises the NLL of the fit part's pixels,
        and keeps the result only if it does not raise the NLL of the check
        part (:func:`split_by_image`), images the fit never saw; otherwise warns
        with both numbers and returns to the identity. The calibrator moves to
        the logits' device.

        Args:
            logits (Tensor): held-out pixels ``(P, C)`` or maps ``(N, C, H, W)``
                (spatial calibrators need maps).
            labels (Tensor): ``(P, )`` or ``(N, H, W)``; ``ignore_index`` pixels
                are left out.
            image_ids (Tensor): ``(P, )`` or ``(N, )`` integers: the image each
                pixel or map (crop) comes from; crops of one image share an id.
            images (Tensor, optional): ``(N, 3, H, W)``, for calibrators that
                need them.
            ignore_index (int): label of pixels to leave out.
            max_iterations (int): optimiser iterations.
            check_fraction (float): share of the images kept aside to check.

        Returns:
            FitRecord: also kept as ``self.fit_record`` and saved with the file.

        Raises:
            CalibratorInputError: no pixels, fewer than two images, a part
                without labelled pixels, wrong shapes, non-finite logits,
                labels out of range, missing images.
        """
        self.to(logits.device)
        logits, labels, image_ids, images = self._check_fit_input(
            logits, labels, image_ids, images, ignore_index)
        check = split_by_image(image_ids, check_fraction)
        parts = {}
        for part, members in (('fit', ~check), ('check', check)):
            part_labels = labels[members]
            pixels = int((part_labels != IGNORE).sum())
            if pixels == 0:
                raise CalibratorInputError(f'the {part} part of the held-out images '
                                           'holds no labelled pixel')
            parts[part] = dict(
                data=(logits[members], part_labels,
                      None if images is None else images[members]),
                pixels=pixels, images=int(torch.unique(image_ids[members]).numel()))
        self.identity()
        before = self._part_nlls(parts)
        self.train()
        with torch.enable_grad():  # also under a caller's torch.no_grad()
            self._minimise(*parts['fit']['data'], max_iterations)
        after = self._part_nlls(parts)
        kept = after['check'] <= before['check']  # False for NaN
        if not kept:
            warnings.warn(
                f'{type(self).__name__}: the fit raised the NLL of the '
                f'{parts["check"]["images"]} check images it was not fitted on '
                f'({before["check"]:.6g} before, {after["check"]:.6g} after; on the '
                f'{parts["fit"]["images"]} fit images {before["fit"]:.6g} -> '
                f'{after["fit"]:.6g}): it over-fits or diverged; keeping the '
                'identity')
            self.identity()
        self.fit_record = FitRecord(
            before['fit'], after['fit'], before['check'], after['check'],
            parts['fit']['pixels'], parts['check']['pixels'],
            parts['fit']['images'], parts['check']['images'], kept)
        return self.fit_record

    def _part_nlls(self, parts: dict) -> dict:
        self.eval()
        with torch.no_grad():
            return {part: float(self._nll(*content['data']))
                    for part, content in parts.items()}

    def _check_fit_input(self, logits: Tensor, labels: Tensor, image_ids,
                         images: Optional[Tensor], ignore_index: int):
        """Checked inputs, as the fit needs them: pixel-wise calibrators get
        the labelled pixels ``(P, C)``, ``(P, )`` and their image ids ``(P, )``;
        spatial ones the maps, with ignored labels set to ``IGNORE``."""
        self._check_logits(logits)
        if labels.shape != logits.shape[:1] + logits.shape[2:]:
            raise CalibratorInputError(f'labels of shape {tuple(labels.shape)} do '
                                       'not match logits of shape '
                                       f'{tuple(logits.shape)}')
        image_ids = torch.as_tensor(image_ids, device=logits.device)
        if (image_ids.shape != logits.shape[:1] or image_ids.is_floating_point()
                or image_ids.is_complex() or image_ids.dtype == torch.bool):
            raise CalibratorInputError(
                f'image_ids must be integers of shape ({logits.shape[0]}, ), the '
                f'image of each {"pixel" if logits.dim() == 2 else "map"}; got '
                f'{image_ids.dtype} of shape {tuple(image_ids.shape)}')
        if self.spatial and logits.dim() != 4:
            raise CalibratorInputError(f'{type(self).__name__} fits on logit maps '
                                       f'(N, {self.num_classes}, H, W), got '
                                       f'{tuple(logits.shape)}')
        if self.needs_images and (images is None or images.shape[0] != logits.shape[0]
                                  or images.shape[2:] != logits.shape[2:]):
            raise CalibratorInputError(f'{type(self).__name__} needs the images '
                                       '(N, 3, H, W) of the logits it fits on')
        if not bool(torch.isfinite(logits).all()):
            raise CalibratorInputError('logits hold NaN or infinite values; '
                                       'nothing to fit')
        labels = labels.long()
        kept = labels != ignore_index
        if not bool(kept.any()):
            raise CalibratorInputError('no pixels to fit on')
        valid = labels[kept]
        if int(valid.min()) < 0 or int(valid.max()) >= self.num_classes:
            raise CalibratorInputError(
                f'labels must be in [0, {self.num_classes}) or {ignore_index}, got '
                f'[{int(valid.min())}, {int(valid.max())}]')
        if not self.spatial:
            pixels = logits.movedim(1, -1).reshape(-1, self.num_classes)
            pixel_ids = image_ids.reshape((-1, ) + (1, ) * (labels.dim() - 1))
            flat = kept.reshape(-1)
            return (pixels[flat].to(self._dtype()), labels.reshape(-1)[flat],
                    pixel_ids.expand(labels.shape).reshape(-1)[flat], None)
        labels = torch.where(kept, labels, torch.full_like(labels, IGNORE))
        if images is not None:
            images = images.to(self._dtype())
        return logits.to(self._dtype()), labels, image_ids, images

    def save(self, path: str) -> None:
        """Write the calibrator to ``path`` (atomically)."""
        buffer = io.BytesIO()
        torch.save(dict(version=FILE_VERSION, type=type(self).__name__,
                        num_classes=self.num_classes, options=self.options(),
                        state_dict={k: v.detach().cpu()
                                    for k, v in self.state_dict().items()},
                        fit_record=(self.fit_record._asdict()
                                    if self.fit_record else None)),
                   buffer)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        write_atomic(path, buffer.getvalue())


def load_calibrator(path: str, num_classes: Optional[int] = None) -> Calibrator:
    """A calibrator written by :meth:`Calibrator.save`.

    Files of version 1 (whose fits were checked on the pixels they were fitted
    on) load with their parameters, without their fit record, and a warning.

    Args:
        path (str): the file.
        num_classes (int, optional): the class count of the logits it will be
            applied to; a file for another count is an error.

    Raises:
        CalibratorFileError: unreadable or foreign file, unknown calibrator
            type, options its type does not take, or class-count mismatch.
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
    if version == 1:
        warnings.warn(f'{path}: written by an older cals-seg whose fit was checked '
                      'on the pixels it was fitted on; its fit record is dropped. '
                      'Fit it again (tools/calib_eval.py) to check it on images '
                      'it was not fitted on')
        record = None
    elif version != FILE_VERSION:
        raise CalibratorFileError(f'{path}: calibrator file version {version}, this '
                                  f'cals-seg reads versions 1 and {FILE_VERSION}')
    if num_classes is not None and classes != num_classes:
        raise CalibratorFileError(f'{path}: the calibrator was fitted for {classes} '
                                  f'classes, the logits have {num_classes}')
    kind_class = MODELS.get(kind)
    if kind_class is None:
        known = sorted(name for name, value in MODELS.module_dict.items()
                       if isinstance(value, type) and issubclass(value, Calibrator))
        raise CalibratorFileError(f'{path}: unknown calibrator type {kind!r}; '
                                  f'known: {", ".join(known)}')
    if not (isinstance(kind_class, type) and issubclass(kind_class, Calibrator)):
        raise CalibratorFileError(f'{path}: {kind!r} is not a calibrator')
    try:
        calibrator = kind_class(num_classes=classes, **options)
    except (TypeError, ValueError) as error:
        raise CalibratorFileError(f'{path}: {kind} does not take the options the '
                                  f'file gives ({options}): {error}') from None
    try:
        calibrator.load_state_dict(state)
        calibrator.fit_record = FitRecord(**record) if record else None
    except (RuntimeError, TypeError) as error:
        raise CalibratorFileError(f'{path}: parameters or fit record do not fit '
                                  f'{kind} with {classes} classes ({error})') from None
    return calibrator.eval()
