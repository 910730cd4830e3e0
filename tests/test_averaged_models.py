"""Predictions averaged over test-time augmentations and over seeds' models:
the average of probabilities against numpy, an ensemble against its members
run one by one, and flip TTA through mmseg's TestTimeAug against the model
run on a flipped image by hand."""
import copy
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from cals_seg.datasets.demo_data import make_demo_dataset
from cals_seg.evaluation.split_report import split_loaders
from cals_seg.evaluation.tta import tta_pipeline, with_tta
from cals_seg.models.segmentors import (ProbabilityTTAModel, SeedEnsemble,
                                        log_mean_probabilities)
from helpers import demo_config

CONFIG = 'deeplabv3_r18tiny_1500it_demo-voc_ce.py'


def test_log_mean_probabilities_is_the_log_of_the_averaged_softmax():
    generator = torch.Generator().manual_seed(0)
    logits = [torch.randn(4, 3, 5, generator=generator) * 5 for _ in range(3)]
    expected = np.log(np.mean([np.exp(x.numpy()) / np.exp(x.numpy()).sum(0)
                               for x in logits], axis=0))
    np.testing.assert_allclose(log_mean_probabilities(logits).numpy(), expected,
                               rtol=1e-5, atol=1e-6)
    # Where every member's probability underflows, the log stays finite.
    far = [torch.tensor([[[0.]], [[-200.]]]), torch.tensor([[[0.]], [[-300.]]])]
    merged = log_mean_probabilities(far)
    assert torch.isfinite(merged).all()
    assert merged[1, 0, 0].item() == pytest.approx(-200 - np.log(2), abs=1e-3)


@pytest.fixture(scope='module')
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp('averaged')
    make_demo_dataset(str(root), 'voc', num_train=4, num_val=2, size=40, seed=5)
    cfg = demo_config(CONFIG, osp.join(str(root), 'VOCdevkit', 'VOC2012'),
                      str(root / 'work'))
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = MODELS.build(copy.deepcopy(cfg.model))
        model.init_weights()
        models.append(model.eval())
    return cfg, models


def _first_batch(loader_cfg):
    return next(iter(Runner.build_dataloader(loader_cfg)))


def test_an_ensemble_averages_its_members_probabilities(setting):
    cfg, models = setting
    batch = _first_batch(split_loaders(cfg)['test'])
    with torch.no_grad():
        alone = [m.test_step(copy.deepcopy(batch))[0].seg_logits.data.clone()
                 for m in models]
        (merged, ) = SeedEnsemble(models).test_step(batch)
    expected = log_mean_probabilities(alone)
    torch.testing.assert_close(merged.seg_logits.data, expected)
    assert torch.equal(merged.pred_sem_seg.data[0], expected.argmax(0))
    assert merged.gt_sem_seg.data.shape[-2:] == expected.shape[-2:]
    with pytest.raises(ValueError, match='2 or more members'):
        SeedEnsemble(models[:1])


def test_flip_tta_averages_the_image_and_its_mirror(setting):
    cfg, models = setting
    model = models[0]
    pipeline, kind = tta_pipeline(cfg)
    assert kind == 'flip' and pipeline[1]['type'] == 'TestTimeAug'
    tta_cfg, _ = with_tta(cfg)
    batch = _first_batch(split_loaders(tta_cfg)['test'])
    plain = _first_batch(split_loaders(cfg)['test'])
    with torch.no_grad():
        (merged, ) = ProbabilityTTAModel(module=model).test_step(batch)
        straight = model.test_step(copy.deepcopy(plain))[0].seg_logits.data
        mirrored = copy.deepcopy(plain)
        mirrored['inputs'] = [x.flip(-1) for x in mirrored['inputs']]
        flipped = model.test_step(mirrored)[0].seg_logits.data.flip(-1)
    expected = log_mean_probabilities([straight, flipped])
    torch.testing.assert_close(merged.seg_logits.data, expected, rtol=1e-4,
                               atol=1e-4)
    assert torch.equal(merged.gt_sem_seg.data, plain['data_samples'][0].gt_sem_seg.data)


def test_a_config_s_own_tta_pipeline_is_used():
    cfg = Config.fromfile('configs/deeplabv3_cityscapes_ce.py')
    pipeline, kind = tta_pipeline(cfg)
    assert kind == 'scales and flip' and pipeline == list(cfg.tta_pipeline)
    bare = Config(dict(test_dataloader=dict(dataset=dict(pipeline=[
        dict(type='LoadAnnotations')]))))
    with pytest.raises(ValueError, match='must start with LoadImageFromFile'):
        tta_pipeline(bare)
