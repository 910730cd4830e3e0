"""One interface for post-hoc calibrators: fit on held-out pixels, save, load,
apply to logits of any size.

A calibrator is a small ``nn.Module`` that maps logits ``(N, C, *S)`` (and, for
some, the images) to calibrated logits of the same shape (softmax of the output
is the calibrated probability). Pixel-wise calibrators see one pixel's logits at
a time and fit on pixels ``(P, C)`` or maps; spatial ones (``spatial = True``,
LTS) see a neighbourhood and fit on maps ``(N, C, H, W)``.

:meth:`Calibrator.fit` minimises the negative log-likelihood of held-out pixels
and refuses to fail silently. It cross-validates over whole images
(:func:`image_folds`): each fold of the held-out images is scored by a fit on
the other folds, so every image checks a fit that never saw it, and the pooled
out-of-fold NLL decides whether the fit, made at last on all the images, is
kept. A fit that raises that NLL (it over-fits its images or diverged) is
undone, the calibrator stays the identity, with a warning that gives both
numbers. Folds rather than one check part: with a hold-out of a few images a
single check image decides by its own noise (on the demo's 4 hold-out images,
one check image undid a temperature that lowered the NLL of the other three). Parameters are bounded and non-finite input is an error.
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

# 1: the fit record was checked on the pixels it was fitted on; 2: on one check
# part of the images; 3: out of fold.
FILE_VERSION = 3
IGNORE = -100  # F.cross_entropy's default ignore_index
CHECK_FOLDS = 4  # folds of the held-out images that check a fit (fewer images: one each)


class FitRecord(NamedTuple):
    """What a fit did, in numbers.

    ``fit_*``: the final fit, on all the held-out images; ``check_*``: the same
    images, each scored by the fit of the other folds (out of fold), pooled over
    the ``check_folds`` folds. NLLs are means over labelled pixels,
    ``*_before`` of the identity and ``*_after`` of the fitted parameters,
    whether kept or not. ``kept``: the fit did not raise the out-of-fold NLL
    and was kept; otherwise the calibrator is the identity.
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
    check_folds: int


class CalibratorFileError(ValueError):
    """A calibrator file that cannot be used: unreadable, of another format, or
    for another number of classes."""


class CalibratorInputError(ValueError):
    """Logits, labels or image ids a calibrator cannot fit on or apply to."""


def image_folds(image_ids: Tensor, folds: int = CHECK_FOLDS) -> Tensor:
    """The check fold of each entry (pixel or map): whole images per fold.

    The distinct ids, sorted, get ranks ``0 .. n-1``; rank ``r`` goes to fold
    ``r mod k`` with ``k = min(folds, n)``, so folds differ in size by one image
    at most. Deterministic: the same ids always fold alike.

    Args:
        image_ids (Tensor): ``(M, )`` integer id of each entry's image.
        folds (int): the most folds, at least 2.

    Returns:
        Tensor: ``(M, )`` int64 fold index in ``[0, k)``.

    Raises:
        CalibratorInputError: fewer than two images, or ``folds`` below 2.
    """
    if not (isinstance(folds, int) and folds >= 2):
        raise CalibratorInputError(f'folds must be an int >= 2, got {folds!r}')
    distinct, rank = torch.unique(image_ids, return_inverse=True)  # sorted
    count = distinct.numel()
    if count < 2:
        raise CalibratorInputError(
            f'the labelled held-out pixels come from {count} image(s): a fit is '
            'checked on images it is not fitted on, so pass pixels of two '
            'images or more')
    return rank % min(folds, count)


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
            max_iterations: int = 200, folds: int = CHECK_FOLDS) -> FitRecord:
        """Fit on the held-out images, checked out of fold.

        For each of the folds of :func:`image_folds`, fits from the identity on
        the other folds and scores the fold; then fits on all the images. The
        result is kept only if the pooled out-of-fold NLL is no higher than the
        identity's; otherwise warns with both numbers and returns to the
        identity. ``k + 1`` fits in all. The calibrator moves to the logits'
        device.

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
            max_iterations (int): optimiser iterations of each fit.
            folds (int): the most check folds (fewer images: one image each).

        Returns:
            FitRecord: also kept as ``self.fit_record`` and saved with the file.

        Raises:
            CalibratorInputError: no pixels, fewer than two images, a fold
                without labelled pixels, wrong shapes, non-finite logits,
                labels out of range, missing images.
        """
        self.to(logits.device)
        logits, labels, image_ids, images = self._check_fit_input(
            logits, labels, image_ids, images, ignore_index)
        fold_of = image_folds(image_ids, folds)
        count = int(fold_of.max()) + 1
        everything = self._part(logits, labels, images, image_ids,
                                torch.ones_like(fold_of, dtype=torch.bool), 'fit')
        self.identity()
        fit_before = self._nll_of(everything)
        # Every part is checked before the first fit.
        held_parts = [self._part(logits, labels, images, image_ids, fold_of == fold,
                                 f'check fold {fold}') for fold in range(count)]
        rest_parts = [self._part(logits, labels, images, image_ids, fold_of != fold,
                                 f'fit part of fold {fold}') for fold in range(count)]
        check_before = check_after = 0.0
        for held, rest in zip(held_parts, rest_parts):
            self.identity()
            check_before += self._nll_of(held) * held['pixels']
            self._fit_part(rest, max_iterations)
            check_after += self._nll_of(held) * held['pixels']
        check_before /= everything['pixels']
        check_after /= everything['pixels']
        self.identity()
        self._fit_part(everything, max_iterations)
        fit_after = self._nll_of(everything)
        kept = check_after <= check_before  # False for NaN
        if not kept:
            warnings.warn(
                f'{type(self).__name__}: the fit raised the out-of-fold NLL of '
                f'the {everything["images"]} held-out images ({check_before:.6g} '
                f'before, {check_after:.6g} after, {count} folds; fitted on all '
                f'of them {fit_before:.6g} -> {fit_after:.6g}): it over-fits or '
                'diverged; keeping the identity')
            self.identity()
        self.fit_record = FitRecord(
            fit_before, fit_after, check_before, check_after,
            everything['pixels'], everything['pixels'], everything['images'],
            everything['images'], kept, count)
        return self.fit_record

    @staticmethod
    def _part(logits: Tensor, labels: Tensor, images: Optional[Tensor],
              image_ids: Tensor, members: Tensor, name: str) -> dict:
        part_labels = labels[members]
        pixels = int((part_labels != IGNORE).sum())
        if pixels == 0:
            raise CalibratorInputError(f'the {name} of the held-out images holds '
                                       'no labelled pixel')
        return dict(data=(logits[members], part_labels,
                          None if images is None else images[members]),
                    pixels=pixels,
                    images=int(torch.unique(image_ids[members]).numel()))

    def _fit_part(self, part: dict, max_iterations: int) -> None:
        self.identity()
        self.train()
        with torch.enable_grad():  # also under a caller's torch.no_grad()
            self._minimise(*part['data'], max_iterations)

    def _nll_of(self, part: dict) -> float:
        self.eval()
        with torch.no_grad():
            return float(self._nll(*part['data']))

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
    on) load with their parameters, without their fit record, and a warning;
    those of version 2 (checked on one part of the images) with their record,
    as one check fold.

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
    elif version == 2:
        record = dict(record, check_folds=1) if record else None
    elif version != FILE_VERSION:
        raise CalibratorFileError(f'{path}: calibrator file version {version}, this '
                                  f'cals-seg reads versions 1 to {FILE_VERSION}')
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
