"""Writes each test image's conformal set sizes as a map, beside the test.

A hook that scores a trained model and never changes its weights, so it lives
with the evaluation (editing it re-evaluates a study's runs, never retrains them).
"""
import io
import os
import os.path as osp
from typing import Optional, Sequence

import numpy as np
from mmengine.hooks import Hook
from PIL import Image

from mmseg.registry import HOOKS

from ..utils.io import write_atomic
from ..utils.saved_logits import logits_name
from .conformal import ConformalSets


@HOOKS.register_module()
class SetSizeHook(Hook):
    """Saves, per test image, how many classes each pixel's conformal set holds.

    Files are ``<out_dir>/<image basename>.png``, 8-bit, one value per pixel at
    the original image size: the set size (0 to C), as the sets saved by
    ``tools/calib_eval.py --conformal`` give it; ``mode='class_fnr'`` counts the
    class masks a pixel falls in instead. :func:`cals_seg.visualization.sets.
    set_size_panels` draws them as heatmaps.

    Args:
        conformal (str): a ``conformal_<row>.json`` file.
        out_dir (str): folder to write to (created).
        mode (str): ``'coverage'`` (default) or ``'class_fnr'``.
    """
    priority = 'LOW'

    def __init__(self, conformal: str, out_dir: str, mode: str = 'coverage'):
        if mode not in ('coverage', 'class_fnr'):
            raise ValueError(f"mode must be 'coverage' or 'class_fnr', got {mode!r}")
        self.sets = ConformalSets.load(conformal)
        self.out_dir, self.mode = out_dir, mode

    def before_test(self, runner) -> None:
        os.makedirs(self.out_dir, exist_ok=True)

    def after_test_iter(self, runner, batch_idx: int, data_batch=None,
                        outputs: Optional[Sequence] = None) -> None:
        for sample in outputs:
            logits = sample.seg_logits.data.detach()[None]
            if logits.shape[1] != self.sets.num_classes:
                raise ValueError(f'the conformal sets were calibrated for '
                                 f'{self.sets.num_classes} classes, the model '
                                 f'predicts {logits.shape[1]}')
            sizes = self.sets.sets(logits, self.mode).sum(1)[0].cpu().numpy()
            buffer = io.BytesIO()
            Image.fromarray(sizes.astype(np.uint8)).save(buffer, format='PNG')
            write_atomic(osp.join(self.out_dir, f'{logits_name(sample.img_path)}.png'),
                         buffer.getvalue())
