"""A deterministic train/hold-out split of any mmseg dataset."""
import hashlib
import os.path as osp
from typing import Optional, Union

from mmengine.dataset import BaseDataset

from mmseg.registry import DATASETS

from ..utils.data_check import with_pipeline

SPLITS = ('train', 'holdout')


def hash_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key``, the same on every machine and run."""
    digest = hashlib.sha1(key.encode('utf-8')).digest()
    return int.from_bytes(digest[:8], 'big') / 2**64


@DATASETS.register_module()
class HashSplitDataset:
    """The training or hold-out part of a dataset, split by hashing image names.

    An image goes to the hold-out part when the hash of its file name (without
    folder and extension) falls below ``holdout_fraction``, so the split depends on
    nothing but the names: it is the same on every rank, machine and run, and an
    image added to the dataset does not move the others. Use the 'train' part to
    train and the 'holdout' part as ``CALSMultiplierHook(source='holdout')``'s
    data, so the multipliers are tuned on neither the training batches nor the
    reported validation set.

    Args:
        dataset (dict | BaseDataset): the dataset to split (any pipeline).
        split (str): 'train' or 'holdout'.
        holdout_fraction (float): share of images held out, in (0, 1).
        pipeline (list, optional): replaces the pipeline of every file-reading
            dataset in the ``dataset`` config (through ConcatDataset and other
            wrappers), so a hold-out loader can reuse the training dataset's
            config with the test pipeline. Needs ``dataset`` as a config.
    """

    def __init__(self, dataset: Union[dict, BaseDataset], split: str,
                 holdout_fraction: float = 0.1,
                 pipeline: Optional[list] = None):
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
        if not 0 < holdout_fraction < 1:
            raise ValueError(f'holdout_fraction must be in (0, 1), got '
                             f'{holdout_fraction}')
        if pipeline is not None:
            if not isinstance(dataset, dict):
                raise ValueError('pipeline needs dataset as a config dict, got a '
                                 f'built {type(dataset).__name__}')
            dataset = with_pipeline(dataset, pipeline)
        self.dataset = DATASETS.build(dataset) if isinstance(dataset,
                                                              dict) else dataset
        self.split = split
        self.holdout_fraction = holdout_fraction
        want_holdout = split == 'holdout'
        self.indices = [
            i for i in range(len(self.dataset))
            if (self._fraction_of(i) < holdout_fraction) == want_holdout
        ]

    def _fraction_of(self, index: int) -> float:
        path = self.dataset.get_data_info(index)['img_path']
        return hash_fraction(osp.splitext(osp.basename(path))[0])

    @property
    def metainfo(self) -> dict:
        return self.dataset.metainfo

    def get_data_info(self, index: int) -> dict:
        return self.dataset.get_data_info(self.indices[index])

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]

    def __len__(self) -> int:
        return len(self.indices)
