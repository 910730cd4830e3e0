"""Calibration of saved logits: pairing files, loading them safely, streaming."""
import glob
import json
import os.path as osp
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..datasets.hash_split import hash_fraction
from ..utils.saved_logits import MANIFEST
from .accumulator import CalibrationTotals
from ..functional.calibration import (CalibrationStatistics, calibration_statistics,
                          image_ece, keep_mask)

LIST_LIMIT = 5


class CalibEvalError(Exception):
    """Bad input to offline evaluation; the message names the file(s)."""


class Pair(NamedTuple):
    name: str
    logits_path: str
    label_path: str


def _names(paths: Sequence[str]) -> str:
    shown = ', '.join(sorted(paths)[:LIST_LIMIT])
    more = len(paths) - LIST_LIMIT
    return shown + (f' (and {more} more)' if more > 0 else '')


def load_manifest(logits_dir: str) -> dict:
    """The manifest that ``tools/test.py --save-logits`` wrote beside the logits."""
    path = osp.join(logits_dir, MANIFEST)
    if not osp.isdir(logits_dir):
        raise CalibEvalError(f'logits directory not found: {logits_dir}')
    if not osp.isfile(path):
        raise CalibEvalError(f'{path} is missing: {logits_dir} was not written by '
                             'tools/test.py --save-logits')
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        raise CalibEvalError(f'cannot read {path}: {error}') from error
    for key in ('classes', 'ignore_index', 'dataset'):
        if key not in manifest:
            raise CalibEvalError(f'{path} has no {key!r} entry')
    return manifest


def _strip_suffix(name: str, suffix: Optional[str]) -> str:
    return name[:-len(suffix)] if suffix and name.endswith(suffix) else name


def pair_files(logits_dir: str, manifest: dict,
               gt_dir: Optional[str] = None) -> List[Pair]:
    """Match every logits file with its ground-truth map, and nothing else.

    Without ``gt_dir`` the maps are those the manifest recorded; with it, the maps
    under ``gt_dir`` (searched recursively) whose names, less the dataset's
    ``seg_map_suffix``, equal the logits' names less the image suffix's stem.

    Raises:
        CalibEvalError: naming maps without logits, logits without maps, or
            maps the manifest names that do not exist.
    """
    logits = {
        osp.splitext(osp.basename(p))[0]: p
        for p in glob.glob(osp.join(logits_dir, '*.npy'))
    }
    if not logits:
        raise CalibEvalError(f'no .npy logits in {logits_dir}')
    dataset = manifest['dataset']
    if gt_dir is None:
        recorded = manifest.get('ground_truth') or {}
        labels = {name: path for name, path in recorded.items() if path}
        missing = [p for p in labels.values() if not osp.isfile(p)]
        if missing:
            raise CalibEvalError('ground-truth maps named in the manifest do not '
                                 f'exist: {_names(missing)}; pass --gt-dir')
    else:
        if not osp.isdir(gt_dir):
            raise CalibEvalError(f'ground-truth directory not found: {gt_dir}')
        seg_suffix = dataset.get('seg_map_suffix') or '.png'
        image_stem_suffix = osp.splitext(dataset.get('img_suffix') or '')[0]
        found = glob.glob(osp.join(gt_dir, '**', f'*{seg_suffix}'), recursive=True)
        by_key = {_strip_suffix(osp.basename(p), seg_suffix): p for p in found}
        labels = {}
        for name in logits:
            key = _strip_suffix(name, image_stem_suffix)
            if key in by_key:
                labels[name] = by_key.pop(key)
        if by_key:
            raise CalibEvalError('ground-truth maps without logits: '
                                 f'{_names(list(by_key.values()))}')
    unmatched_labels = sorted(set(labels) - set(logits))
    if unmatched_labels:
        raise CalibEvalError('ground-truth maps without logits: '
                             f'{_names([labels[n] for n in unmatched_labels])}')
    unmatched_logits = sorted(set(logits) - set(labels))
    if unmatched_logits:
        raise CalibEvalError('logits without ground truth: '
                             f'{_names([logits[n] for n in unmatched_logits])}')
    return [Pair(name, logits[name], labels[name]) for name in sorted(logits)]


def _map_labels(label: np.ndarray, dataset: dict) -> np.ndarray:
    """What mmseg's LoadAnnotations does to a map: label_map, reduce_zero_label."""
    label_map = dataset.get('label_map')
    if label_map:
        mapped = label.copy()
        for old, new in label_map.items():
            mapped[label == int(old)] = new
        label = mapped
    if dataset.get('reduce_zero_label'):
        label = label.astype(np.int64)
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
    return label


def load_pair(pair: Pair, num_classes: int, dataset: dict, ignore_index: int):
    """Logits ``(C, H, W)`` float32 and labels ``(H, W)`` int64 of one image.

    Raises:
        CalibEvalError: unreadable file, wrong class count, non-finite logits,
            a size mismatch or labels out of range, naming the file.
    """
    try:
        logits = np.load(pair.logits_path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CalibEvalError(f'cannot read {pair.logits_path}: {error}') from error
    try:
        with Image.open(pair.label_path) as image:
            label = np.array(image)
    except OSError as error:
        raise CalibEvalError(f'cannot read {pair.label_path}: {error}') from error
    if logits.ndim != 3:
        raise CalibEvalError(f'{pair.logits_path}: expected C x H x W logits, got '
                             f'shape {logits.shape}')
    if logits.shape[0] != num_classes:
        raise CalibEvalError(f'{pair.logits_path}: {logits.shape[0]} classes, the '
                             f'manifest has {num_classes}')
    if label.ndim != 2 or label.shape != logits.shape[1:]:
        raise CalibEvalError(f'{pair.logits_path}: logits of size '
                             f'{logits.shape[1:]} but {pair.label_path} is '
                             f'{label.shape}')
    logits = torch.from_numpy(logits.astype(np.float32, copy=False))
    if not bool(torch.isfinite(logits).all()):
        count = int((~torch.isfinite(logits)).sum())
        raise CalibEvalError(f'{pair.logits_path}: {count} NaN or infinite values')
    label = torch.from_numpy(_map_labels(label, dataset).astype(np.int64))
    try:
        keep_mask(label, num_classes, ignore_index)
    except ValueError as error:
        raise CalibEvalError(f'{pair.label_path}: {error}') from error
    return logits, label


def split_for_fitting(pairs: Sequence[Pair], spec: str,
                      option: str = '--fit-split') -> Dict[str, list]:
    """Split images into a calibrator-fitting set and an evaluation set.

    Args:
        spec (str): a fraction in (0, 1) (images whose name hashes below it fit,
            deterministically) or the path of a file listing names to fit on.

    Returns:
        dict: ``fit`` and ``eval`` lists of pairs, both non-empty.
    """
    try:
        fraction = float(spec)
    except ValueError:
        fraction = None
    if fraction is not None:
        if not 0 < fraction < 1:
            raise CalibEvalError(f'{option} fraction must be in (0, 1), '
                                 f'got {spec}')
        chosen = {p.name for p in pairs if hash_fraction(p.name) < fraction}
    else:
        if not osp.isfile(spec):
            raise CalibEvalError(f'{option}: {spec} is neither a fraction '
                                 'nor a list file')
        with open(spec) as f:
            wanted = {
                osp.splitext(osp.basename(line.strip()))[0]
                for line in f if line.strip()
            }
        unknown = wanted - {p.name for p in pairs}
        if unknown:
            raise CalibEvalError(f'{spec} names images without logits: '
                                 f'{_names(list(unknown))}')
        chosen = wanted
    split = dict(fit=[p for p in pairs if p.name in chosen],
                 eval=[p for p in pairs if p.name not in chosen])
    for part, members in split.items():
        if not members:
            raise CalibEvalError(f'{option} {spec} leaves no image to '
                                 f'{part} on; {len(pairs)} images in all')
    return split


def load_image(path: Optional[str], shape) -> torch.Tensor:
    """An RGB image ``(3, H, W)`` float in [0, 255], checked against ``shape``."""
    if not path or not osp.isfile(path):
        raise CalibEvalError(f'image not found: {path}; the manifest names the '
                             'images tools/test.py read')
    try:
        with Image.open(path) as image:
            array = np.array(image.convert('RGB'))
    except OSError as error:
        raise CalibEvalError(f'cannot read {path}: {error}') from error
    if array.shape[:2] != tuple(shape):
        raise CalibEvalError(f'{path} is {array.shape[:2]}, its logits '
                             f'{tuple(shape)}')
    return torch.from_numpy(array).permute(2, 0, 1).float()


# A calibration applied while streaming: logits (C, H, W) and the image
# (3, H, W) or None to calibrated logits (C, H, W).
Transform = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
Observer = Callable[[torch.Tensor, torch.Tensor], None]


def pixel_accuracy(pooled: CalibrationStatistics) -> float:
    """Percent of the evaluated pixels whose top class is right."""
    return float(100 * pooled.bin_accuracy.sum() / pooled.bin_count.sum())


class StreamResult(NamedTuple):
    """Sums over the evaluated images under one transform."""
    totals: torch.Tensor  # vector of CalibrationTotals under the chosen reduction
    pooled: CalibrationStatistics  # every kept pixel, for reliability diagrams
    image_eces: List[Tuple[float, str]]  # (ECE %, name) per image


def stream_statistics(pairs: Sequence[Pair], num_classes: int, dataset: dict,
                      totals: CalibrationTotals,
                      transforms: Sequence[Optional[Transform]],
                      ignore_index: int, exclude_classes: Sequence[int],
                      boundary_width: Optional[int] = None,
                      images: Optional[Dict[str, str]] = None,
                      progress=iter,
                      observers: Optional[Sequence[Observer]] = None
                      ) -> List[StreamResult]:
    """One pass over the images, one image in memory at a time.

    Args:
        transforms: one entry per result; None evaluates the logits as saved.
        images (dict, optional): image paths by name, for transforms that read
            the image; None passes None.
        observers (optional): one per transform, each called with the
            transformed logits ``(1, C, H, W)`` and labels ``(1, H, W)`` of
            every image (further statistics of the same pass).

    Returns:
        list[StreamResult]: one per transform.
    """
    pooled_size = CalibrationStatistics.size(num_classes, totals.num_bins,
                                             totals.num_cells)
    sums = [(totals.zeros(), torch.zeros(pooled_size, dtype=torch.float64), [])
            for _ in transforms]
    observers = observers or [None] * len(transforms)
    for pair in progress(pairs):
        logits, label = load_pair(pair, num_classes, dataset, ignore_index)
        image = (load_image(images.get(pair.name), label.shape)
                 if images is not None else None)
        for (total, pooled, eces), transform, observer in zip(sums, transforms,
                                                              observers):
            with torch.no_grad():
                scaled = logits if transform is None else transform(logits, image)
            if observer is not None:
                observer(scaled[None], label[None])
            stats = calibration_statistics(scaled, label, totals.num_bins,
                                           totals.num_cells, ignore_index,
                                           exclude_classes,
                                           boundary_width=boundary_width)
            total += totals.encode(stats)
            pooled += stats.flatten()
            eces.append((image_ece(stats), pair.name))
    return [
        StreamResult(
            total,
            CalibrationStatistics.unflatten(pooled, num_classes,
                                            totals.num_bins, totals.num_cells),
            eces) for total, pooled, eces in sums
    ]


def load_pairs(pairs: Sequence[Pair], num_classes: int, dataset: dict,
               ignore_index: int, images: Optional[Dict[str, str]] = None,
               progress=iter):
    """Yield ``(logits (C, H, W), labels (H, W), image (3, H, W) or None)`` per
    pair, one image in memory at a time (for :mod:`.sampling`); the image only
    when ``images`` (paths by name) is given."""
    for pair in progress(pairs):
        logits, label = load_pair(pair, num_classes, dataset, ignore_index)
        image = (load_image(images.get(pair.name), label.shape)
                 if images is not None else None)
        yield logits, label, image
