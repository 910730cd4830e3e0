"""The CALS authors' segmentation protocol, which every method recipe starts from.

by-liu/CALS trains its segmentation networks on 1,171 of VOC's 1,464 training
images (data_splits/voc2012), keeps the other 293 to update the multipliers,
averages cross-entropy over valid pixels (nn.CrossEntropyLoss), clips the gradient
norm at 2.0 (configs/train/lag_segment.yaml) and reports calibration per image with
15 bins (calibrate/evaluation/segment_calibrate_evaluator.py). The shipped
``configs/*_ce.py`` are mmseg's configs with exactly these changes, which
:func:`apply_protocol` makes to any config.
"""
import copy
from typing import List, Optional, Sequence

from ..datasets.hash_split import HOLDOUT_FRACTION
from ..utils.data_check import leaf_datasets
from .config_walk import SPLIT_TYPE, datasets_in, find_split, split_training_set

PLUGIN_IMPORTS = ['cals_seg', 'cals_seg.utils.mmengine_checkpoints']
# 293 of 1,464 images held out in the authors' VOC split.
DEFAULT_HOLDOUT_FRACTION = 0.2
DEFAULT_MAX_GRAD_NORM = 2.0
NUM_BINS = 15
BACKGROUND = 'background'


def apply_protocol(cfg: dict, holdout_fraction: Optional[float] = None,
                   max_grad_norm: Optional[float] = DEFAULT_MAX_GRAD_NORM,
                   exclude_classes: Optional[Sequence[str]] = None,
                   selection_fraction: Optional[float] = None) -> None:
    """Make ``cfg`` (a plain dict, changed in place) follow the protocol.

    - ``custom_imports`` loads cals_seg (so mmseg's own tools/train.py runs it).
    - The training set is split by :class:`~cals_seg.datasets.HashSplitDataset`:
      ``train_dataloader`` keeps ``1 - holdout_fraction`` of it and a new
      ``holdout_dataloader`` (batch 1, in order, the test pipeline) reads the rest;
      the top-level ``holdout_fraction`` records the share. With
      ``selection_fraction`` a further share goes to the selection part, which
      nothing trains or fits on (``tools/calib_study.py --tune`` scores its
      choices there). A config whose training set is already split is kept as
      it is (it must then have a ``holdout_dataloader``), so the protocol can be
      applied twice; but a selection part asked of a split without one is
      carved out of its training part, the held-out part unchanged.
    - ``optim_wrapper.clip_grad`` clips the gradient norm at ``max_grad_norm``.
    - ``val_evaluator`` and ``test_evaluator`` get CalibrationMetric per image,
      pooled, and without ``exclude_classes``, unless they have one already.

    Cross-entropy averaged over valid pixels is set with the losses
    (:mod:`cals_seg.methods.recipes`), which know which heads a method changes.

    Args:
        cfg (dict): the config as a plain dict.
        holdout_fraction (float, optional): share of training images held out;
            None: 0.2, or the share of an existing split.
        max_grad_norm (float, optional): None keeps the config's clipping.
        exclude_classes (sequence[str], optional): ground-truth classes left out
            of the third calibration metric; None: ``['background']`` where the
            dataset has that class, else no third metric.
        selection_fraction (float, optional): share of training images in the
            selection part; None: none, or the share of an existing split.
    """
    if not isinstance(cfg.get('train_dataloader'), dict) or not isinstance(
            cfg['train_dataloader'].get('dataset'), dict):
        raise ValueError('train_dataloader.dataset is missing: a method recipe '
                         'splits the training set, so it needs a training config')
    _add_plugin_imports(cfg)
    _split_training_set(cfg, holdout_fraction, selection_fraction)
    if max_grad_norm is not None:
        _clip_gradients(cfg, max_grad_norm)
    _add_calibration_metrics(cfg, exclude_classes)


def _add_plugin_imports(cfg: dict) -> None:
    custom = cfg.get('custom_imports') or {}
    imports = list(custom.get('imports') or [])
    imports += [name for name in PLUGIN_IMPORTS if name not in imports]
    cfg['custom_imports'] = dict(custom, imports=imports, allow_failed_imports=False)


def _split_training_set(cfg: dict, holdout_fraction: Optional[float],
                        selection_fraction: Optional[float]) -> None:
    train = cfg['train_dataloader']
    existing = find_split(train['dataset'])
    if existing is not None:
        if not isinstance(cfg.get('holdout_dataloader'), dict):
            raise ValueError('train_dataloader is already split by '
                             f'{SPLIT_TYPE}, but holdout_dataloader is missing')
        for name, asked, has in (
                ('holdout_fraction', holdout_fraction, existing.get('holdout_fraction')),
                ('selection_fraction', selection_fraction,
                 existing.get('selection_fraction') or None)):
            if asked is not None and has is not None and asked != has:
                raise ValueError(
                    f'{name}={asked}, but train_dataloader is already split '
                    f'with {name}={has}: change it in the config')
        if selection_fraction and not existing.get('selection_fraction'):
            _add_selection_part(cfg, existing.get('holdout_fraction',
                                                  HOLDOUT_FRACTION),
                                selection_fraction)
        return
    fraction = (DEFAULT_HOLDOUT_FRACTION
                if holdout_fraction is None else holdout_fraction)
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise ValueError(f'holdout_fraction must be in (0, 1), got {fraction!r}')
    selection = 0.0 if selection_fraction is None else selection_fraction
    _check_selection(fraction, selection)

    def make_split(dataset: dict, part: str) -> dict:
        split = dict(type=SPLIT_TYPE, split=part, holdout_fraction=fraction,
                     dataset=dataset)
        if selection:
            split['selection_fraction'] = selection
        return split

    train['dataset'], holdout = split_training_set(train['dataset'], make_split)
    holdout['pipeline'] = _test_pipeline(cfg)
    cfg['holdout_fraction'] = fraction
    if selection:
        cfg['selection_fraction'] = selection
    cfg['holdout_dataloader'] = dict(
        batch_size=1,
        num_workers=train.get('num_workers', 0),
        sampler=dict(type='DefaultSampler', shuffle=False),
        dataset=holdout)


def _check_selection(holdout: float, selection) -> None:
    if not (isinstance(selection, (int, float)) and 0 <= selection
            and holdout + selection < 1):
        raise ValueError(f'selection_fraction must be >= 0 and leave images to '
                         f'train on beside holdout_fraction {holdout}, got '
                         f'{selection!r}')


def _add_selection_part(cfg: dict, holdout: float, selection: float) -> None:
    """Carve a selection part out of the training part of a config already
    split without one: the held-out images stay as they are."""
    _check_selection(holdout, selection)
    for key in ('train_dataloader', 'holdout_dataloader'):
        for node in datasets_in(cfg[key]['dataset']):
            if node.get('type') == SPLIT_TYPE:
                node['selection_fraction'] = selection
    cfg['selection_fraction'] = selection


def _test_pipeline(cfg: dict) -> list:
    """The validation loader's pipeline (annotations at the original size, as the
    hold-out rounds compare predictions with them), else ``test_pipeline``."""
    val = cfg.get('val_dataloader') or {}
    for dataset in leaf_datasets(val.get('dataset') or {}):
        if dataset.get('pipeline'):
            return copy.deepcopy(dataset['pipeline'])
    if cfg.get('test_pipeline'):
        return copy.deepcopy(cfg['test_pipeline'])
    raise ValueError('the hold-out loader needs a test pipeline, and the config '
                     'has neither val_dataloader.dataset.pipeline nor '
                     'test_pipeline')


def _clip_gradients(cfg: dict, max_grad_norm: float) -> None:
    if not isinstance(cfg.get('optim_wrapper'), dict):
        raise ValueError('optim_wrapper is missing: the protocol clips the '
                         'gradient norm (max_grad_norm=None keeps the config)')
    if not (isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0):
        raise ValueError(f'max_grad_norm must be > 0 or None, got {max_grad_norm!r}')
    cfg['optim_wrapper']['clip_grad'] = dict(max_norm=max_grad_norm, norm_type=2)


def class_names(cfg: dict) -> Optional[List[str]]:
    """The class names of the validation (else training) dataset: its
    ``metainfo`` or its registered type's ``METAINFO``; None if unknown."""
    from mmseg.registry import DATASETS
    import mmseg.datasets  # noqa: F401  (registers mmseg's dataset types)
    for key in ('val_dataloader', 'train_dataloader'):
        for dataset in leaf_datasets((cfg.get(key) or {}).get('dataset') or {}):
            classes = (dataset.get('metainfo') or {}).get('classes')
            dataset_type = dataset.get('type')
            if classes is None and isinstance(dataset_type, str):
                registered = DATASETS.get(dataset_type)
                classes = getattr(registered, 'METAINFO', {}).get('classes')
            if classes is not None:
                return [str(name) for name in classes]
    return None


def _add_calibration_metrics(cfg: dict,
                             exclude_classes: Optional[Sequence[str]]) -> None:
    names = class_names(cfg)
    if exclude_classes is None:
        exclude_classes = [BACKGROUND] if names and BACKGROUND in names else []
    elif isinstance(exclude_classes, str):
        exclude_classes = [exclude_classes]
    exclude_classes = list(exclude_classes)
    unknown = [c for c in exclude_classes if names is not None and c not in names]
    if unknown:
        raise ValueError(f'exclude_classes {unknown} are not classes of the '
                         f'dataset; its classes are {names}')
    metrics = [
        dict(type='CalibrationMetric', num_bins=NUM_BINS, reduction='image',
             prefix='img'),
        dict(type='CalibrationMetric', num_bins=NUM_BINS)
    ]
    if exclude_classes:
        metrics.append(dict(type='CalibrationMetric', num_bins=NUM_BINS,
                            exclude_classes=exclude_classes, prefix='fg'))
    for key in ('val_evaluator', 'test_evaluator'):
        evaluator = cfg.get(key)
        if not evaluator:
            continue
        evaluators = [evaluator] if isinstance(evaluator, dict) else list(evaluator)
        if any(e.get('type') == 'CalibrationMetric' for e in evaluators):
            continue
        cfg[key] = evaluators + copy.deepcopy(metrics)
