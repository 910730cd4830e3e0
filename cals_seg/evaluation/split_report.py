"""Everything the benchmark reports about a trained model, from one pass per split.

:func:`evaluate_split` runs a segmentor in eval mode over a dataloader and keeps
small sums only (streaming, like :class:`CalibrationMetric`): pooled and
foreground calibration statistics, per-image ECE, the confusion matrix, and how
many logit distances exceed a threshold, for the raw model and any number of
post-hoc calibrators on the same pass. :func:`fit_calibrators` fits those on a
hold-out loader.
:func:`summarize` turns those sums into the numbers of docs/results.md, and
:func:`regime_figures` into the five figures that say whether a run is
over-confident the way real networks are (docs/results.md).
"""
import copy
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..calibrators import SHORT_NAMES, Calibrator
from .conformal import ConformalCalibration, ConformalSets, SetTotals
from ..utils.data_check import leaf_datasets, with_pipeline
from .sampling import DEFAULT_MAX_FIT_PIXELS, sample_crops, sample_pixels
from ..functional.calibration import (DEFAULT_BOUNDARY_WIDTH, DEFAULT_NUM_BINS,
                          CalibrationStatistics, calibration_errors,
                          calibration_statistics, keep_mask)
from ..functional.image_sums import image_row

RAW = 'raw'
BACKGROUND = 'background'


def prediction_head(model):
    """The decode head a segmentor predicts from: its only one, or the last of a
    cascade (mmseg's ``CascadeEncoderDecoder`` keeps them in a ``ModuleList``)."""
    head = model.decode_head
    return head[-1] if isinstance(head, torch.nn.ModuleList) else head


def background_classes(classes: Sequence[str],
                       background: Optional[Sequence[str]] = None) -> List[int]:
    """The classes that foreground statistics (``fg/ECE``) leave out.

    Args:
        classes (sequence[str]): the dataset's class names, in label order.
        background (sequence[str], optional): names to leave out; by default
            every class named 'background' (any case), and none when the dataset
            has no such class (ADE20K's class 0 is wall, COCO-Stuff's person).

    Returns:
        list[int]: their labels.

    Raises:
        ValueError: a name in ``background`` that is not a class.
    """
    if background is None:
        return [k for k, name in enumerate(classes) if name.lower() == BACKGROUND]
    unknown = [name for name in background if name not in classes]
    if unknown:
        raise ValueError(f'background classes {unknown} are not among the dataset\'s '
                         f'classes {list(classes)}')
    return [classes.index(name) for name in background]


def _logits_and_labels(model, loader):
    """Yield ``(name, logits (C, H, W), labels (H, W))`` per image, in eval mode."""
    model.eval()
    with torch.no_grad():
        for batch in loader:
            for sample in model.test_step(batch):
                logits = sample.seg_logits.data.float()
                labels = sample.gt_sem_seg.data.squeeze(0).to(logits.device).long()
                yield sample.metainfo.get('img_path', ''), logits, labels


def _outputs(logits: Tensor, transforms: Dict[str, Optional[Calibrator]]):
    """Yield ``(name, logits (C, H, W))`` of the raw logits (a None transform)
    and of each calibrator's, on the CPU (calibrators run on the logits'
    device)."""
    for name, calibrator in transforms.items():
        with torch.no_grad():
            calibrated = logits if calibrator is None else calibrator(
                logits.unsqueeze(0)).squeeze(0)
        yield name, calibrated.cpu()


def calibrate_sets(model, loader, calibrators: Optional[Dict[str, Calibrator]],
                   num_classes: int, alpha: float, ignore_index: int = 255,
                   class_names: Optional[Sequence[str]] = None
                   ) -> Dict[str, ConformalSets]:
    """Conformal pixel sets of risk ``alpha`` (:mod:`.conformal`) for the raw
    logits and each calibrator's, calibrated on a loader's images. Nothing may
    have been fitted on them (the selection part of the hold-out): sets
    calibrated on a calibrator's own fitting images would be in-sample.

    Raises:
        ConformalInputError: fewer images with labelled pixels than ``alpha``
            needs.
    """
    transforms = {RAW: None, **(calibrators or {})}
    calibrations = {name: ConformalCalibration(num_classes, ignore_index=ignore_index)
                    for name in transforms}
    for _, logits, labels in _logits_and_labels(model, loader):
        for name, calibrated in _outputs(logits, transforms):
            calibrations[name].update(calibrated.unsqueeze(0),
                                      labels.cpu().unsqueeze(0))
    return {name: calibration.fit(alpha, class_names, None if transform is None
                                  else type(transform).__name__)
            for (name, calibration), transform in zip(calibrations.items(),
                                                      transforms.values())}


def fit_calibrators(model, loader, names: Sequence[str], num_classes: int,
                    ignore_index: int = 255,
                    max_pixels: int = DEFAULT_MAX_FIT_PIXELS
                    ) -> Dict[str, Calibrator]:
    """Calibrators (short names of :data:`cals_seg.calibrators.SHORT_NAMES`)
    fitted on a hold-out loader, on the model's device: pixel-wise ones on its
    pixels, spatial ones on crops of its maps, both sampled as
    ``tools/calib_eval.py`` samples saved logits (:mod:`.sampling`), each
    checked out of fold (:meth:`Calibrator.fit`). Calibrators that read the
    image are not supported here (the model sees resized images)."""
    fitted = {}
    pixels = maps = None
    count = len(loader.dataset)
    for name in names:
        calibrator = SHORT_NAMES[name](num_classes)
        if calibrator.needs_images:
            raise ValueError(f'{name} reads the image; fit it with '
                             'tools/calib_eval.py on saved logits')
        if calibrator.spatial:
            maps = maps or sample_crops(
                ((z, y, None) for _, z, y in _logits_and_labels(model, loader)),
                count, max_pixels)
            data = maps[:3]
        else:
            pixels = pixels or sample_pixels(
                ((z, y) for _, z, y in _logits_and_labels(model, loader)), count,
                num_classes, ignore_index, max_pixels=max_pixels)
            data = pixels
        calibrator.fit(*data, ignore_index=ignore_index)
        fitted[name] = calibrator
    return fitted


def _distance_counts(logits: Tensor, keep: Tensor, threshold: float):
    """(pairs with distance > threshold, all pairs) over kept pixels and their
    non-winning classes; a winner's own distance is 0 and never counts."""
    z = logits.reshape(logits.shape[0], -1)[:, keep]
    over = int(((z.amax(dim=0, keepdim=True) - z) > threshold).sum())
    return over, z.shape[1] * (z.shape[0] - 1)


def evaluate_split(model,
                   loader,
                   num_classes: int,
                   calibrators: Optional[Dict[str, Calibrator]] = None,
                   exclude_classes: Sequence[int] = (),
                   ignore_index: int = 255,
                   num_bins: int = DEFAULT_NUM_BINS,
                   distance_threshold: float = 10.0,
                   boundary_width: int = DEFAULT_BOUNDARY_WIDTH,
                   sets: Optional[Dict[str, ConformalSets]] = None) -> dict:
    """Streaming sums of a model on one split, raw and after each calibrator.

    Args:
        model: an mmseg segmentor (``test_step`` returns ``seg_logits``).
        loader: dataloader of the split, test pipeline (labels at original size).
        num_classes (int): ``C``.
        calibrators (dict, optional): fitted calibrators by name; the sums are
            kept for the raw logits (under ``'raw'``) and for each.
        exclude_classes (sequence[int]): classes left out of the foreground
            statistics (:func:`background_classes`); none by default.
        ignore_index (int): label of pixels to leave out.
        num_bins (int): calibration bins.
        distance_threshold (float): logit distance counted by
            ``distance_share`` (of the raw logits).
        boundary_width (int): width of the boundary band of the pooled sums.
        sets (dict, optional): conformal sets by output name
            (:func:`calibrate_sets`), measured on the split.

    Returns:
        dict: ``confusion`` ``[C, C]`` (rows ground truth, raw predictions),
        ``distance_share``, ``images`` (names), and ``outputs``: per name,
        ``pooled`` and ``foreground`` (:class:`CalibrationStatistics`),
        ``image_ece`` (list of floats, percent, background kept),
        ``confusion`` of its predictions and ``image_rows`` (``(images,
        2 + 9B + 3C)``, each image's sufficient statistics of the verdict
        metrics: :func:`cals_seg.functional.image_sums.image_row`); with
        ``sets``, ``sets`` (:class:`SetTotals`) of each output that has them.
    """
    transforms = {RAW: None, **(calibrators or {})}
    outputs = {
        name: dict(pooled=None, foreground=None, image_ece=[], image_rows=[],
                   confusion=torch.zeros(num_classes, num_classes,
                                         dtype=torch.float64))
        for name in transforms
    }
    for name, conformal in (sets or {}).items():
        if name in outputs:
            outputs[name]['sets'] = SetTotals(conformal, ignore_index)
    over = pairs = 0
    names: List[str] = []
    for name, logits, labels in _logits_and_labels(model, loader):
        names.append(name)
        # Calibrators run on the model's device, the sums are kept on the CPU.
        labels = labels.cpu()
        flat_labels = labels.reshape(-1)
        keep = keep_mask(flat_labels, num_classes, ignore_index)
        image_over, image_pairs = _distance_counts(logits.cpu(), keep,
                                                   distance_threshold)
        over, pairs = over + image_over, pairs + image_pairs
        for key, calibrated in _outputs(logits, transforms):
            sums = outputs[key]
            if 'sets' in sums:
                sums['sets'].update(calibrated.unsqueeze(0), labels.unsqueeze(0))
            prediction = calibrated.reshape(num_classes, -1).argmax(dim=0)[keep]
            confusion = torch.bincount(
                flat_labels[keep] * num_classes + prediction,
                minlength=num_classes**2).reshape(num_classes, num_classes).double()
            sums['confusion'] += confusion
            image = calibration_statistics(calibrated, labels, num_bins,
                                           ignore_index=ignore_index,
                                           boundary_width=boundary_width)
            foreground = calibration_statistics(calibrated, labels, num_bins,
                                                ignore_index=ignore_index,
                                                exclude_classes=exclude_classes)
            if float(image.num_pixels) > 0:
                sums['image_ece'].append(calibration_errors(image)['ECE'])
            sums['image_rows'].append(image_row(image, foreground, confusion.numpy()))
            for part, stats in (('pooled', image), ('foreground', foreground)):
                sums[part] = stats if sums[part] is None else CalibrationStatistics(
                    *(a + b for a, b in zip(sums[part], stats)))
    if not names:
        raise ValueError('the loader yielded no image')
    for sums in outputs.values():
        sums['confusion'] = sums['confusion'].numpy()
        sums['image_rows'] = np.stack(sums['image_rows'])
    return dict(confusion=outputs[RAW]['confusion'], images=names,
                distance_share=over / max(pairs, 1), outputs=outputs)


def mean_iou(confusion: np.ndarray) -> float:
    """mmseg's mIoU (percent): classes with an empty union are left out."""
    hits = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - hits
    present = union > 0
    return float(100 * np.mean(hits[present] / union[present]))


def pixel_accuracy(confusion: np.ndarray) -> float:
    return float(100 * np.trace(confusion) / max(confusion.sum(), 1))


def summarize(split: dict, name: str = RAW) -> Dict[str, float]:
    """The benchmark's numbers of one split, raw or after a calibrator.

    Returns:
        dict: ``mIoU``, ``aAcc``; pooled ``ECE``, ``MCE``, ``AECE``, ``CECE``,
        ``NLL``, ``Brier``, ``ECE_boundary``, ``ECE_interior``, ``AURC``,
        ``AUROC``; ``ECE_image`` (mean per-image ECE, background kept, the CALS
        authors' protocol); ``fg/ECE`` and ``fg/CECE`` (background excluded);
        ``distance_share`` (of the raw logits); with conformal sets,
        ``coverage`` (percent, the mean over images of each image's share of
        pixels whose class is in their set: what the sets guarantee) and
        ``set_size`` (mean classes per pixel).
    """
    sums = split['outputs'][name]
    pooled = calibration_errors(sums['pooled'])
    foreground = calibration_errors(sums['foreground'])
    result = {key: float(pooled[key])
              for key in ('ECE', 'MCE', 'AECE', 'CECE', 'NLL', 'Brier',
                          'ECE_boundary', 'ECE_interior', 'AURC', 'AUROC')}
    result.update({
        'mIoU': mean_iou(sums['confusion']),
        'aAcc': pixel_accuracy(sums['confusion']),
        'ECE_image': float(np.mean(sums['image_ece'])),
        'fg/ECE': float(foreground['ECE']),
        'fg/CECE': float(foreground['CECE']),
        'distance_share': float(split['distance_share']),
    })
    if 'sets' in sums:
        coverage_sets = sums['sets'].compute()['coverage']
        result.update(coverage=coverage_sets['image_coverage'],
                      set_size=coverage_sets['set_size'])
    return result


def reliability_bins(stats: CalibrationStatistics) -> Dict[str, list]:
    """Per-bin pixel count, mean confidence and accuracy (NaN for empty bins)."""
    count = stats.bin_count.double().numpy()
    with np.errstate(invalid='ignore', divide='ignore'):
        confidence = stats.bin_confidence.double().numpy() / count
        accuracy = stats.bin_accuracy.double().numpy() / count
    return dict(count=count.tolist(), confidence=confidence.tolist(),
                accuracy=accuracy.tolist())


def overconfident_bins(stats: CalibrationStatistics, min_share: float = 0.005,
                       above: float = 0.5) -> Dict[str, object]:
    """Whether accuracy is below mean confidence in every bin whose lower edge is
    at least ``above`` and that holds at least ``min_share`` of the pixels.

    Returns:
        dict: ``all`` (bool; False when no bin qualifies) and ``bins``: per
        qualifying bin its range, share, confidence and accuracy.
    """
    bins = reliability_bins(stats)
    num_bins = len(bins['count'])
    total = sum(bins['count'])
    checked = []
    for index in range(num_bins):
        lower = index / num_bins
        share = bins['count'][index] / total if total else 0.0
        if lower >= above and share >= min_share:
            checked.append(dict(range=(lower, (index + 1) / num_bins), share=share,
                                confidence=bins['confidence'][index],
                                accuracy=bins['accuracy'][index]))
    return dict(all=bool(checked) and all(b['accuracy'] < b['confidence']
                                          for b in checked), bins=checked)


def regime_figures(test: dict, train: dict) -> Dict[str, object]:
    """The five figures of the over-confidence regime for a model (raw logits).

    Args:
        test (dict): :func:`evaluate_split` of the test split.
        train (dict): :func:`evaluate_split` of the training part.

    Returns:
        dict: ``ECE``, ``ECE_image``, ``fg/ECE`` (percent), ``overconfident``
        (see :func:`overconfident_bins`), ``train_aAcc``, ``test_mIoU``,
        ``distance_share`` (test pixels).
    """
    summary = summarize(test)
    return {
        'ECE': summary['ECE'],
        'ECE_image': summary['ECE_image'],
        'fg/ECE': summary['fg/ECE'],
        'overconfident': overconfident_bins(test['outputs'][RAW]['pooled']),
        'train_aAcc': pixel_accuracy(train['confusion']),
        'test_mIoU': summary['mIoU'],
        'distance_share': summary['distance_share'],
    }


def split_loaders(cfg, batch_size: int = 1) -> Dict[str, Optional[dict]]:
    """Loader configs of a training config's test split, its training part and,
    when the training set is a HashSplitDataset, its hold-out part and (when it
    has one) its selection part, all with the test pipeline; None for a part the
    config does not have."""
    pipeline = cfg.test_dataloader.dataset.get('pipeline')
    if pipeline is None:
        pipeline = next(leaf_datasets(cfg.test_dataloader.dataset))['pipeline']
    train = with_pipeline(cfg.train_dataloader.dataset, pipeline)
    holdout = selection = None
    if train.get('type') == 'HashSplitDataset':
        holdout = dict(copy.deepcopy(train), split='holdout')
        if train.get('selection_fraction'):
            selection = dict(copy.deepcopy(train), split='selection')

    def loader(dataset):
        return dict(batch_size=batch_size, num_workers=0, persistent_workers=False,
                    sampler=dict(type='DefaultSampler', shuffle=False),
                    dataset=dataset)

    return dict(test=loader(with_pipeline(cfg.test_dataloader.dataset, pipeline)),
                train=loader(train), holdout=loader(holdout) if holdout else None,
                selection=loader(selection) if selection else None)
