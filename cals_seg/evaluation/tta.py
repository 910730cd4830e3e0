"""Test-time augmentation as mmseg does it (``TestTimeAug`` in the test
pipeline, a TTA model merging the augmentations), for the evaluation."""
import copy
from typing import List, Tuple

from mmengine.config import Config

from ..utils.data_check import leaf_datasets, with_pipeline

LOADER = 'LoadImageFromFile'
# Steps that come after the augmentations in mmseg's own TTA pipelines.
LAST = ('LoadAnnotations', 'PackSegInputs')
FLIPS = [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')]


def tta_pipeline(cfg: Config) -> Tuple[List[dict], str]:
    """The pipeline of a config's TTA and what it does: the config's own
    ``tta_pipeline`` where it has one (mmseg's dataset configs: several scales
    and a horizontal flip), else its test pipeline with a horizontal flip
    (every step as it was, the flip added before the labels are loaded).

    Returns:
        tuple: the pipeline and 'scales and flip' or 'flip'.

    Raises:
        ValueError: a test pipeline that does not start by loading the image.
    """
    if cfg.get('tta_pipeline'):
        return copy.deepcopy(list(cfg.tta_pipeline)), 'scales and flip'
    test = copy.deepcopy(list(next(leaf_datasets(
        cfg.test_dataloader.dataset))['pipeline']))
    if not test or not str(test[0].get('type', '')).endswith(LOADER):
        raise ValueError(f'the test pipeline must start with {LOADER} to add a '
                         f'flip: {[s.get("type") for s in test]}')
    steps = [[step] for step in test[1:]]
    at = next((k for k, step in enumerate(test[1:])
               if step.get('type') in LAST), len(steps))
    steps.insert(at, copy.deepcopy(FLIPS))
    return [test[0], dict(type='TestTimeAug', transforms=steps)], 'flip'


def with_tta(cfg: Config) -> Tuple[Config, str]:
    """A copy of ``cfg`` whose test split reads through :func:`tta_pipeline`
    (the shift passes then corrupt each image before its augmentations), and
    what the TTA does."""
    pipeline, kind = tta_pipeline(cfg)
    cfg = copy.deepcopy(cfg)
    cfg.test_dataloader.dataset = with_pipeline(cfg.test_dataloader.dataset,
                                                pipeline)
    return cfg, kind
