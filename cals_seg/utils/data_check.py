"""A missing dataset as one clear sentence instead of a loader's traceback."""
import copy
import os.path as osp
from typing import Iterator, Optional, Sequence, Tuple

PREPARE_HINTS = {
    'PascalVOCDataset': (
        'prepare Pascal VOC 2012 (and the SBD augmentation for voc12aug configs: '
        "mmseg's tools/dataset_converters/voc_aug.py) as MMSegmentation's "
        'dataset-preparation guide describes'),
    'CityscapesDataset': (
        'download gtFine and leftImg8bit from the Cityscapes site and run '
        "mmseg's tools/dataset_converters/cityscapes.py to write the "
        '*_labelTrainIds.png maps'),
}
DEMO_HINT = 'the demo needs no dataset: run `make demo`'


class DatasetNotFoundError(FileNotFoundError):
    """A dataset path from a config that does not exist."""


def leaf_datasets(dataset: dict) -> Iterator[dict]:
    """The datasets that read files, through wrappers (Concat, Repeat, ...)."""
    if 'datasets' in dataset:
        for child in dataset['datasets']:
            yield from leaf_datasets(child)
    elif isinstance(dataset.get('dataset'), dict):
        yield from leaf_datasets(dataset['dataset'])
    else:
        yield dataset


def with_pipeline(dataset: dict, pipeline: list) -> dict:
    """A copy of a dataset config whose file-reading datasets all use
    ``pipeline`` (through wrappers such as ConcatDataset or HashSplitDataset)."""
    dataset = copy.deepcopy(dataset)
    for leaf in leaf_datasets(dataset):
        leaf['pipeline'] = copy.deepcopy(pipeline)
    return dataset


def dataloader_configs(cfg) -> Iterator[dict]:
    """Every dataloader config of a training config: the runner's loaders,
    ``holdout_dataloader`` and the hooks' own (CALSMultiplierHook's copy)."""
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader',
                'holdout_dataloader'):
        if isinstance(cfg.get(key), dict):
            yield cfg[key]
    for hook in cfg.get('custom_hooks') or ():
        if isinstance(hook.get('holdout_dataloader'), dict):
            yield hook['holdout_dataloader']


def set_data_root(cfg, data_root: str) -> None:
    """Point every dataset of every dataloader of ``cfg`` at ``data_root``."""
    for loader in dataloader_configs(cfg):
        for dataset in leaf_datasets(loader['dataset']):
            dataset['data_root'] = data_root


def _paths(dataset: dict) -> Iterator[str]:
    data_root = dataset.get('data_root') or ''
    if data_root:
        yield data_root
    if dataset.get('ann_file'):
        yield osp.join(data_root, dataset['ann_file'])
    for prefix in (dataset.get('data_prefix') or {}).values():
        if prefix:
            yield osp.join(data_root, prefix)


def find_missing_path(cfg, dataloaders: Sequence[str]) -> Optional[Tuple[str, str]]:
    """The first missing path of the named dataloaders' datasets, and its type."""
    for key in dataloaders:
        loader = cfg.get(key)
        if not loader or 'dataset' not in loader:
            continue
        for dataset in leaf_datasets(loader['dataset']):
            for path in _paths(dataset):
                if not osp.exists(path):
                    return path, str(dataset.get('type', 'dataset'))
    return None


def check_datasets(cfg, dataloaders: Sequence[str]) -> None:
    """Raise :class:`DatasetNotFoundError` naming the first missing path.

    Args:
        cfg (Config): an mmengine config.
        dataloaders (sequence[str]): keys such as 'train_dataloader'.
    """
    missing = find_missing_path(cfg, dataloaders)
    if missing is None:
        return
    path, dataset_type = missing
    hint = PREPARE_HINTS.get(dataset_type,
                             'prepare the dataset as its mmseg docs describe')
    raise DatasetNotFoundError(
        f'{dataset_type} not found: {path} does not exist; {hint}, or point '
        f'the config at it with --cfg-options; {DEMO_HINT}')
