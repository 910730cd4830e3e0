"""Everything reported about one trained checkpoint, from one pass per split:
what ``tools/regime_report.py`` prints and what the calibration study stores.

:func:`evaluate_checkpoint` loads the model, fits post-hoc calibrators on the
hold-out part of the training split (when the config has one), and evaluates
the raw model and every calibrator on the test split; on request also the
hold-out part (raw), the selection part (raw: what hyper-parameters are chosen
on, as nothing was fitted on it), the training part
(the over-confidence regime's figures), and the test split under ImageNet-C
corruptions and in a shifted domain, with the calibrators fitted in-domain.
With ``conformal`` and a selection part, conformal pixel sets of the raw model
and of each calibrator are calibrated on the selection part (no weights,
multipliers or calibrators were fitted on it; a tuned row's hyper-parameters
were chosen on it, which the sets' guarantee does not account for) and
measured on the test split and under every shift.
"""
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from ..calibrators import Calibrator
from ..functional.conformal import ConformalInputError, minimum_images
from .shift import evaluate_shift, severity_means, shift_loader
from .split_report import (RAW, background_classes, calibrate_sets,
                           evaluate_split, fit_calibrators, prediction_head,
                           regime_figures, reliability_bins, split_loaders,
                           summarize)

SPLITS = ('test', 'holdout', 'selection', 'train')
DOMAIN = 'shifted_domain'


class ShiftPlan(NamedTuple):
    """Which shifted versions of the test split to evaluate.

    Attributes:
        corruptions (sequence[str]): ImageNet-C corruption names.
        severities (sequence[int]): severities 1..5 of each.
        seed (int): seed of the corruptions' random draws.
        domain_root (str, optional): a shifted domain's data root, in the test
            split's layout; None: no domain pass.
    """
    corruptions: Sequence[str] = ()
    severities: Sequence[int] = ()
    seed: int = 0
    domain_root: Optional[str] = None


def _image_rows(test: dict, fitted: Dict[str, Calibrator], num_classes: int) -> dict:
    """Each image's sufficient statistics of the verdict metrics, for the
    report's image resamples: raw, and each calibrator whose fit was kept (an
    undone fit's are raw's), rounded to 4 decimals (sums of pixels)."""
    kept = [RAW] + [name for name, c in fitted.items() if c.fit_record.kept]
    rows = test['outputs'][RAW]['image_rows']
    return dict(num_bins=int(test['outputs'][RAW]['pooled'].bin_count.numel()),
                num_classes=num_classes,
                outputs={name: np.round(test['outputs'][name]['image_rows'],
                                        4).tolist() for name in kept},
                images=len(rows))


def _build(loader_cfg):
    from mmengine.runner import Runner
    return Runner.build_dataloader(loader_cfg)


def evaluate_checkpoint(cfg, checkpoint: str, calibrators: Sequence[str] = ('ts', ),
                        device: torch.device = torch.device('cpu'),
                        splits: Sequence[str] = ('test', ),
                        shift: Optional[ShiftPlan] = None,
                        background: Optional[Sequence[str]] = None,
                        conformal: Optional[float] = None
                        ) -> Tuple[dict, Dict[str, Calibrator]]:
    """Load a checkpoint and report it.

    Args:
        cfg (Config): the training config (test split from ``test_dataloader``,
            the hold-out part when ``train_dataloader`` reads a
            HashSplitDataset).
        checkpoint (str): the checkpoint file.
        calibrators (sequence[str]): short names of post-hoc calibrators to fit
            on the hold-out part (none without one).
        device: where the model and the calibrators run.
        splits (sequence[str]): of :data:`SPLITS`; 'test' always.
        shift (ShiftPlan, optional): shifted test passes.
        background (sequence[str], optional): class names the foreground
            figures leave out (:func:`background_classes`: by default those
            named 'background').
        conformal (float, optional): the risk level ``alpha`` of conformal sets
            calibrated on the selection part (none without one).

    Returns:
        tuple: the report (dict) and the fitted calibrators by short name. The
        report has ``classes`` (names, when the model has them), ``background``
        (the names left out of the foreground figures), ``test`` (per output,
        ``'raw'`` and each calibrator, the numbers of :func:`summarize`),
        ``reliability`` (per output, the reliability bins), ``fg_reliability``
        (raw, background excluded),
        ``fits`` (per calibrator, its fit record); with 'holdout' ``holdout``
        (raw numbers); with 'selection', where the config has that part,
        ``selection`` (raw numbers) and ``selection_images`` (its per-image
        statistics, as ``test_images``); with 'train' ``figures`` (:func:`regime_figures`); with
        ``shift`` ``shift`` (``[corruption][severity][output][metric]``, the
        :data:`~.shift.CELL_METRICS`), ``shift_means`` (``[severity][output][metric]``
        over corruptions) and, with a domain, ``domain``
        (``[output][metric]``). With conformal sets, every output's numbers
        hold ``coverage`` and ``set_size`` (:func:`summarize`), and ``conformal``
        holds the sets' thresholds per output; with a selection part too
        small for ``alpha``, ``conformal_note`` says so instead.
    """
    return evaluate_model(load_model(cfg, checkpoint, device), cfg, calibrators,
                          device, splits, shift, background, conformal)


def load_model(cfg, checkpoint: str, device: torch.device = torch.device('cpu')):
    """A checkpoint's segmentor, in mmseg's scope, on ``device``."""
    from mmengine.registry import init_default_scope
    from mmseg.apis import init_model
    init_default_scope('mmseg')
    return init_model(cfg, checkpoint, device=str(device))


def evaluate_model(model, cfg, calibrators: Sequence[str] = ('ts', ),
                   device: torch.device = torch.device('cpu'),
                   splits: Sequence[str] = ('test', ),
                   shift: Optional[ShiftPlan] = None,
                   background: Optional[Sequence[str]] = None,
                   conformal: Optional[float] = None
                   ) -> Tuple[dict, Dict[str, Calibrator]]:
    """:func:`evaluate_checkpoint` of a loaded model: a segmentor, or one that
    averages several predictions (:mod:`cals_seg.models.segmentors.averaged`:
    test-time augmentation, read through ``cfg``'s test pipeline, or an
    ensemble)."""
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f'unknown splits {unknown}; the splits are {SPLITS}')
    head = prediction_head(model)
    num_classes = head.num_classes
    ignore_index = getattr(head, 'ignore_index', 255)
    classes = list((model.dataset_meta or {}).get('classes') or [])
    excluded = background_classes(classes, background)
    loaders = split_loaders(cfg)
    holdout = _build(loaders['holdout']) if loaders['holdout'] else None
    fitted = {}
    if calibrators and holdout is not None:
        fitted = fit_calibrators(model, holdout, calibrators, num_classes,
                                 ignore_index)
    outputs = [RAW, *fitted]
    selection = _build(loaders['selection']) if loaders['selection'] else None
    sets, sets_note = None, None
    if conformal is not None and selection is not None:
        needed = minimum_images(conformal)
        if len(selection.dataset) < needed:  # too few: no guarantee to give
            sets_note = (f'no conformal sets: the selection part holds '
                         f'{len(selection.dataset)} images, risk {conformal:g} '
                         f'needs {needed}')
        else:
            try:
                sets = calibrate_sets(model, selection, fitted, num_classes,
                                      conformal, ignore_index, classes or None)
            except ConformalInputError as error:  # images without labels
                sets_note = f'no conformal sets: {error}'
    test = evaluate_split(model, _build(loaders['test']), num_classes, fitted,
                          exclude_classes=excluded, ignore_index=ignore_index,
                          sets=sets)
    report = dict(
        classes=classes, background=[classes[k] for k in excluded],
        test={name: summarize(test, name) for name in outputs},
        reliability={name: reliability_bins(test['outputs'][name]['pooled'])
                     for name in outputs},
        fg_reliability=reliability_bins(test['outputs'][RAW]['foreground']),
        fits={name: c.fit_record._asdict() for name, c in fitted.items()},
        test_images=_image_rows(test, fitted, num_classes))
    if sets is not None:
        report['conformal'] = {name: conformal_sets.to_dict()
                               for name, conformal_sets in sets.items()}
    elif sets_note is not None:
        report['conformal_note'] = sets_note
    if 'holdout' in splits and holdout is not None:
        report['holdout'] = summarize(evaluate_split(
            model, holdout, num_classes, exclude_classes=excluded,
            ignore_index=ignore_index))
    if 'selection' in splits and selection is not None:
        selected = evaluate_split(model, selection, num_classes,
                                  exclude_classes=excluded, ignore_index=ignore_index)
        report['selection'] = summarize(selected)
        report['selection_images'] = _image_rows(selected, {}, num_classes)
    if 'train' in splits:
        train = evaluate_split(model, _build(loaders['train']), num_classes,
                               exclude_classes=excluded, ignore_index=ignore_index)
        report['figures'] = regime_figures(test, train)
    if shift is not None and shift.corruptions and shift.severities:
        cells = ((c, s, _build(shift_loader(cfg, c, s, shift.seed)))
                 for c in shift.corruptions for s in shift.severities)
        results = evaluate_shift(model, cells, num_classes, fitted, ignore_index,
                                 excluded, sets=sets)
        report['shift'] = {c: {str(s): v for s, v in by_severity.items()}
                           for c, by_severity in results.items()}
        report['shift_means'] = {
            str(s): v for s, v in severity_means(results,
                                                 shift.corruptions).items()}
    if shift is not None and shift.domain_root:
        cells = [(DOMAIN, 0, _build(shift_loader(cfg, data_root=shift.domain_root)))]
        report['domain'] = evaluate_shift(model, cells, num_classes, fitted,
                                          ignore_index, excluded,
                                          sets=sets)[DOMAIN][0]
    return report, fitted


