"""A deterministic train/hold-out split of any mmseg dataset."""
import hashlib
import os.path as osp
from typing import Optional, Union

from mmengine.dataset import BaseDataset

from mmseg.registry import DATASETS

from ..utils.data_check import with_pipeline

SPLITS = ('train', 'holdout', 'selection')
HOLDOUT_FRACTION = 0.1  # the split's own default share


def hash_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key``, the same on every machine and run."""
    digest = hashlib.sha1(key.encode('utf-8')).digest()
    return int.from_bytes(digest[:8], 'big') / 2**64


@DATASETS.register_module()
class HashSplitDataset:
    """The training, hold-out or selection part of a dataset, split by hashing
    image names.

    The hash of an image's file name (without folder and extension) is a number
    in [0, 1): below ``holdout_fraction`` the image is held out, in the next
    ``selection_fraction`` it is a selection image, otherwise a training image.
    The split depends on nothing but the names: it is the same on every rank,
    machine and run, and an image added to the dataset does not move the others.

    Use the 'train' part to train and the 'holdout' part as
    ``CALSMultiplierHook(source='holdout')``'s data and the post-hoc calibrators'
    fitting data, so neither is fitted on the training batches nor on the
    reported validation set. The 'selection' part is fitted on by nothing: it
    scores hyper-parameter choices (``tools/calib_study.py --tune``), which
    images a multiplier or a calibrator was fitted on would score in-sample.

    Args:
        dataset (dict | BaseDataset): the dataset to split (any pipeline).
        split (str): 'train', 'holdout' or 'selection'.
        holdout_fraction (float): share of images held out, in (0, 1).
        selection_fraction (float): share of images for selection, in [0, 1);
            the two shares leave some images to train on.
        pipeline (list, optional): replaces the pipeline of every file-reading
            dataset in the ``dataset`` config (through ConcatDataset and other
            wrappers), so a hold-out loader can reuse the training dataset's
            config with the test pipeline. Needs ``dataset`` as a config.
    """

    def __init__(self, dataset: Union[dict, BaseDataset], split: str,
                 holdout_fraction: float = HOLDOUT_FRACTION,
                 selection_fraction: float = 0.0,
                 pipeline: Optional[list] = None):
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
        if not 0 < holdout_fraction < 1:
            raise ValueError(f'holdout_fraction must be in (0, 1), got '
                             f'{holdout_fraction}')
        if not (0 <= selection_fraction < 1
                and holdout_fraction + selection_fraction < 1):
            raise ValueError(
                f'selection_fraction must be in [0, 1) and leave images to train '
                f'on beside holdout_fraction {holdout_fraction}, got '
                f'{selection_fraction}')
        if pipeline is not None:
            if not isinstance(dataset, dict):
                raise ValueError('pipeline needs dataset as a config dict, got a '
                                 f'built {type(dataset).__name__}')
            dataset = with_pipeline(dataset, pipeline)
        self.dataset = DATASETS.build(dataset) if isinstance(dataset,
                                                              dict) else dataset
        self.split = split
        self.holdout_fraction = holdout_fraction
        self.selection_fraction = selection_fraction
        self.indices = [i for i in range(len(self.dataset))
                        if self._part_of(i) == split]

    def _part_of(self, index: int) -> str:
        path = self.dataset.get_data_info(index)['img_path']
        fraction = hash_fraction(osp.splitext(osp.basename(path))[0])
        if fraction < self.holdout_fraction:
            return 'holdout'
        if fraction < self.holdout_fraction + self.selection_fraction:
            return 'selection'
        return 'train'

    @property
    def metainfo(self) -> dict:
        return self.dataset.metainfo

    def get_data_info(self, index: int) -> dict:
        return self.dataset.get_data_info(self.indices[index])

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]

    def __len__(self) -> int:
        return len(self.indices)
