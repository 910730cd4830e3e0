"""One training iteration of the tiny demo DeepLabV3: CALS + hook against CE
(targets: docs/costs.md)."""
import os.path as osp
from types import SimpleNamespace

import torch
from mmengine.config import Config
from mmengine.logging import MessageHub, MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.structures import PixelData

from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import register_all_modules

from cals_seg.engine.hooks import CALSMultiplierHook, find_cals_losses
from common import report, time_side_by_side

DEMO = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs', 'demo')


def _batch(size=128, batch=8, classes=6):
    samples = []
    for _ in range(batch):
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, classes, (1, size, size)))
        sample.set_metainfo(dict(img_shape=(size, size), pad_shape=(size, size)))
        samples.append(sample)
    return dict(inputs=[torch.randint(0, 255, (3, size, size)).float()
                        for _ in range(batch)], data_samples=samples)


def _trainer(config):
    cfg = Config.fromfile(osp.join(DEMO, config))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    batch = _batch()
    losses = find_cals_losses(model)
    if not losses:
        return lambda: model.train_step(batch, optim_wrapper)
    hook = CALSMultiplierHook(source='train', interval=50)
    hook._losses, hook._class_names = losses, []
    for _, loss in losses:
        loss.collect_round_statistics = True
    runner = SimpleNamespace(logger=MMLogger.get_instance('bench'),
                             message_hub=MessageHub.get_instance('bench'))
    count = [0]

    def step():
        model.train_step(batch, optim_wrapper)
        hook._reduce_pending()
        count[0] += 1
        if count[0] % hook.interval == 0:
            hook._finish_round(runner)
    return step


def main() -> bool:
    register_all_modules()
    t = time_side_by_side({
        'ce': _trainer('deeplabv3_r18tiny_1500it_demo-voc_ce.py'),
        'cals': _trainer('deeplabv3_r18tiny_1500it_demo-voc_cals.py'),
    }, repeats=20)
    return report('training iteration, tiny DeepLabV3, CALS+hook / CE',
                  t['cals'] / t['ce'], 1.05)


if __name__ == '__main__':
    main()
