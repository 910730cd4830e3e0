"""Writes each test image's logits to disk for offline calibration analysis."""
import io
import json
import os
import os.path as osp
from typing import Optional, Sequence

import numpy as np
from mmengine.dist import all_gather_object, is_main_process
from mmengine.hooks import Hook

from mmseg.registry import HOOKS

from ...utils.io import write_atomic
from ...utils.saved_logits import LOGITS_DTYPES, MANIFEST, logits_name


def _json_label_map(label_map: Optional[dict]) -> Optional[dict]:
    """mmseg's label_map (old id -> new id) with JSON's string keys."""
    if not label_map:
        return None
    return {str(old): int(new) for old, new in label_map.items()}


@HOOKS.register_module()
class SaveLogitsHook(Hook):
    """Saves ``seg_logits`` (C x H x W at the original image size) per test image.

    Files are ``<out_dir>/<image basename>.npy``; ``manifest.json`` beside them
    records what ``tools/calib_eval.py`` needs without the config: class names,
    ignore_index, the dataset's type, root, suffixes and label mapping, the config
    file, and each file's ground-truth map.

    Args:
        out_dir (str): folder to write to (created).
        dtype (str): 'float16' (default, half the disk) or 'float32'.
        ignore_index (int): label of ignored pixels, recorded in the manifest.
    """
    priority = 'LOW'

    def __init__(self, out_dir: str, dtype: str = 'float16',
                 ignore_index: int = 255):
        if dtype not in LOGITS_DTYPES:
            raise ValueError(f'dtype must be one of {LOGITS_DTYPES}, got {dtype!r}')
        self.out_dir = out_dir
        self.dtype = dtype
        self.ignore_index = ignore_index
        self._paths = {}

    def before_test(self, runner) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        self._paths = {}

    def after_test_iter(self, runner, batch_idx: int, data_batch=None,
                        outputs: Optional[Sequence] = None) -> None:
        for sample in outputs:
            name = logits_name(sample.img_path)
            logits = sample.seg_logits.data.detach().cpu().numpy().astype(
                self.dtype)
            buffer = io.BytesIO()
            np.save(buffer, logits)
            write_atomic(osp.join(self.out_dir, f'{name}.npy'), buffer.getvalue())
            self._paths[name] = (sample.get('seg_map_path'), sample.img_path)

    def after_test_epoch(self, runner, metrics=None) -> None:
        merged = {}
        for part in all_gather_object(self._paths):
            merged.update(part)
        merged = dict(sorted(merged.items()))
        if not is_main_process():
            return
        dataset = runner.test_dataloader.dataset
        dataset_cfg = runner.cfg.test_dataloader.dataset
        manifest = dict(
            classes=list(dataset.metainfo['classes']),
            ignore_index=self.ignore_index,
            dtype=self.dtype,
            config=runner.cfg.filename,
            dataset=dict(
                type=str(dataset_cfg.get('type')),
                data_root=dataset_cfg.get('data_root'),
                img_suffix=getattr(dataset, 'img_suffix', None),
                seg_map_suffix=getattr(dataset, 'seg_map_suffix', None),
                reduce_zero_label=bool(getattr(dataset, 'reduce_zero_label',
                                               False)),
                label_map=_json_label_map(dataset.metainfo.get('label_map'))),
            ground_truth={name: paths[0] for name, paths in merged.items()},
            images={name: paths[1] for name, paths in merged.items()})
        write_atomic(
            osp.join(self.out_dir, MANIFEST),
            json.dumps(manifest, indent=2).encode('utf-8'))
