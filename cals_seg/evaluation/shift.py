"""Calibration under distribution shift (Ovadia et al., NeurIPS 2019): the test
split once per (ImageNet-C corruption, severity), and once per shifted domain.

Each pass is :func:`cals_seg.evaluation.split_report.evaluate_split` (streaming
sums only, raw logits and any post-hoc calibrators on the same pass) on the
config's test loader with :class:`cals_seg.datasets.ImageCorruption` right after
``LoadImageFromFile``; :func:`summarize` gives each cell's numbers.
"""
import copy
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..utils.data_check import leaf_datasets, with_pipeline
from .split_report import RAW, evaluate_split, split_loaders, summarize

# The numbers of each (corruption, severity) cell, in the table's order.
CELL_METRICS = ('mIoU', 'ECE', 'fg/ECE', 'ECE_boundary', 'NLL', 'AURC')
# ... and, where conformal sets were calibrated in-domain, how they hold up
SET_METRICS = ('coverage', 'set_size')
CLEAN = 'clean'  # the uncorrupted test split: severity 0 of every corruption
MEAN = 'mean'  # the mean over corruptions, per severity
LOADER = 'LoadImageFromFile'


def corrupted_pipeline(pipeline: Sequence[dict], corruption: str, severity: int,
                       seed: int = 0) -> List[dict]:
    """A copy of a test pipeline with ``ImageCorruption`` right after the step
    that loads the image (before any resize, on the stored uint8 image).

    Raises:
        ValueError: when no step's type ends with 'LoadImageFromFile'.
    """
    pipeline = copy.deepcopy(list(pipeline))
    for index, step in enumerate(pipeline):
        if str(step.get('type', '')).endswith(LOADER):
            pipeline.insert(index + 1, dict(type='ImageCorruption',
                                            corruption=corruption,
                                            severity=severity, seed=seed))
            return pipeline
    raise ValueError(f'the test pipeline has no {LOADER} step to put the '
                     f'corruption after: {[s.get("type") for s in pipeline]}')


def shift_loader(cfg, corruption: Optional[str] = None, severity: int = 0,
                 seed: int = 0, data_root: Optional[str] = None,
                 num_workers: int = 0) -> dict:
    """The loader config of ``cfg``'s test split, corrupted when ``severity`` > 0,
    read from ``data_root`` when given (a shifted domain in the same layout).

    Returns:
        dict: a config for ``Runner.build_dataloader``, batch size 1.
    """
    loader = split_loaders(cfg)['test']
    if severity > 0:
        pipeline = next(leaf_datasets(loader['dataset']))['pipeline']
        loader['dataset'] = with_pipeline(
            loader['dataset'], corrupted_pipeline(pipeline, corruption, severity,
                                                  seed))
    if data_root is not None:
        for dataset in leaf_datasets(loader['dataset']):
            dataset['data_root'] = data_root
    loader['num_workers'] = num_workers
    if num_workers > 0:
        # Workers seed nothing the corruption uses: its draws come from the
        # image and the seed alone.
        loader['persistent_workers'] = False
    return loader


def cell_metrics(split: dict, names: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """:data:`CELL_METRICS` of an :func:`evaluate_split` result, per output name
    (and :data:`SET_METRICS` for outputs with conformal sets)."""
    summaries = {name: summarize(split, name) for name in names}
    return {name: {k: summary[k] for k in CELL_METRICS + SET_METRICS if k in summary}
            for name, summary in summaries.items()}


def evaluate_shift(model, cells: Iterable[Tuple[str, int, object]],
                   num_classes: int, calibrators: Optional[dict] = None,
                   ignore_index: int = 255,
                   exclude_classes: Sequence[int] = (),
                   on_pass: Optional[Callable[[str, int, dict], None]] = None,
                   sets: Optional[dict] = None
                   ) -> Dict[str, Dict[int, Dict[str, Dict[str, float]]]]:
    """One :func:`evaluate_split` pass per cell.

    Args:
        model: an mmseg segmentor.
        cells: ``(name, severity, loader)``: a corruption (or :data:`CLEAN`, or a
            domain's name), its severity and a built dataloader.
        num_classes (int), calibrators (dict), ignore_index (int),
        exclude_classes (sequence[int]): as :func:`evaluate_split`.
        on_pass (callable, optional): called with each cell's name, severity and
            :func:`evaluate_split` result (to save or print as it goes).
        sets (dict, optional): conformal sets calibrated in-domain, by output
            name, measured in every cell.

    Returns:
        dict: ``result[name][severity][output][metric]``, outputs ``'raw'`` and
        each calibrator's name.
    """
    names = [RAW, *(calibrators or {})]
    results: Dict[str, Dict[int, dict]] = {}
    for name, severity, loader in cells:
        split = evaluate_split(model, loader, num_classes, calibrators,
                               exclude_classes=exclude_classes,
                               ignore_index=ignore_index, sets=sets)
        results.setdefault(name, {})[severity] = cell_metrics(split, names)
        if on_pass is not None:
            on_pass(name, severity, split)
    return results


def severity_means(results: dict, corruptions: Sequence[str]
                   ) -> Dict[int, Dict[str, Dict[str, float]]]:
    """Per severity, output and metric, the mean over ``corruptions`` (severity
    0: the clean split's numbers, when it was evaluated)."""
    severities = sorted({s for c in corruptions for s in results.get(c, {})})
    means = {}
    if CLEAN in results:
        means[0] = results[CLEAN][0]
    for severity in severities:
        cells = [results[c][severity] for c in corruptions
                 if severity in results.get(c, {})]
        means[severity] = {
            output: {k: float(np.mean([cell[output][k] for cell in cells]))
                     for k in cells[0][output]}
            for output in cells[0]
        }
    return means


def format_table(results: dict, corruptions: Sequence[str],
                 domains: Sequence[str] = ()) -> str:
    """One row per (corruption, severity, output): the clean split, each
    corruption's severities, the mean per severity, then each domain."""
    header = (f'{"corruption":<18} {"sev":>3} {"output":<16}' +
              ''.join(f'{k:>13}' for k in CELL_METRICS))
    lines = [header]

    def add(name, severity, outputs):
        for output, metrics in outputs.items():
            lines.append(f'{name:<18} {severity:>3} {output:<16}' +
                         ''.join(f'{metrics[k]:>13.4f}' for k in CELL_METRICS))

    if CLEAN in results:
        add(CLEAN, 0, results[CLEAN][0])
    for corruption in corruptions:
        for severity, outputs in sorted(results.get(corruption, {}).items()):
            add(corruption, severity, outputs)
    for severity, outputs in severity_means(results, corruptions).items():
        if severity > 0:
            add(MEAN, severity, outputs)
    for domain in domains:
        add(domain, 0, results[domain][0])
    return '\n'.join(lines)
