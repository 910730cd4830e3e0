"""CalibratedSegmentor: any mmseg segmentor whose test and validation outputs
pass through a saved post-hoc calibrator.

In a config (mmseg's own ``tools/test.py`` runs it; ``custom_imports`` brings
cals_seg in)::

    model = dict(type='CalibratedSegmentor',
                 segmentor=dict(type='EncoderDecoder', ...),  # the trained model
                 calibrator='work_dirs/calib/calibrator_ts.pth')

or ``python tools/test.py CONFIG CKPT --calibrator FILE``. Checkpoints of the
plain segmentor load as they are: the wrapper maps their keys onto its
``module``. The calibrated logits replace ``seg_logits`` and their argmax
replaces ``pred_sem_seg``, so ``CalibrationMetric``, ``IoUMetric`` and
``--save-logits`` all see the calibrated model. Training steps are the
segmentor's own.
"""
from typing import List, Optional

import mmcv
import torch
from mmengine.model import BaseModel
from mmengine.structures import PixelData

from mmseg.registry import MODELS

from ...calibrators import Calibrator, load_calibrator


@MODELS.register_module()
class CalibratedSegmentor(BaseModel):
    """A segmentor and a post-hoc calibrator applied to its predictions.

    Args:
        segmentor (dict): config of the mmseg segmentor.
        calibrator (str): a file written by ``Calibrator.save`` (e.g. by
            ``tools/calib_eval.py --calibrators``), for the segmentor's classes.
        data_preprocessor (dict, optional): unused: MMEngine's Runner passes a
            config's top-level ``data_preprocessor`` to every model; the
            segmentor preprocesses with its own.
        init_cfg (dict, optional): as every mmengine model.
    """

    def __init__(self, segmentor: dict, calibrator: str,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.module = MODELS.build(segmentor)
        num_classes = getattr(getattr(self.module, 'decode_head', None),
                              'num_classes', None)
        # Not a submodule: its parameters are not in the segmentor's checkpoints.
        self.__dict__['calibrator'] = load_calibrator(calibrator, num_classes)
        self.calibrator_file = calibrator
        self._register_load_state_dict_pre_hook(self._map_segmentor_keys)

    @staticmethod
    def _map_segmentor_keys(state_dict, prefix, *args) -> None:
        """Let a plain segmentor's checkpoint (keys ``backbone.*``, ...) load
        into ``module``."""
        for key in list(state_dict):
            if key.startswith(prefix) and not key.startswith(prefix + 'module.'):
                state_dict[prefix + 'module.' + key[len(prefix):]] = state_dict.pop(key)

    def calibrate(self, samples: List) -> List:
        """Replace each sample's ``seg_logits`` and ``pred_sem_seg`` by the
        calibrated ones."""
        calibrator: Calibrator = self.calibrator
        for sample in samples:
            logits = sample.seg_logits.data
            calibrator.to(logits.device)
            image = None
            if calibrator.needs_images:
                image = self._image(sample.img_path, logits).to(logits.device)
            with torch.no_grad():
                calibrated = calibrator(logits.unsqueeze(0), image).squeeze(0)
            sample.set_data(dict(
                seg_logits=PixelData(data=calibrated),
                pred_sem_seg=PixelData(data=calibrated.argmax(dim=0, keepdim=True))))
        return samples

    @staticmethod
    def _image(path: str, logits: torch.Tensor) -> torch.Tensor:
        array = mmcv.imread(path, channel_order='rgb')
        if array is None or array.shape[:2] != tuple(logits.shape[1:]):
            raise ValueError(f'the calibrator reads the image, and {path} is '
                             f'{None if array is None else array.shape[:2]}, its '
                             f'logits {tuple(logits.shape[1:])}')
        return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).float()

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        outputs = self.module(inputs, data_samples, mode)
        return self.calibrate(outputs) if mode == 'predict' else outputs

    def val_step(self, data):
        return self.calibrate(self.module.val_step(data))

    def test_step(self, data):
        return self.calibrate(self.module.test_step(data))

    def train_step(self, data, optim_wrapper):
        return self.module.train_step(data, optim_wrapper)
