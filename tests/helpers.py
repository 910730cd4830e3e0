"""Shared helpers of the end-to-end tests: tiny runs of real configs."""
import json
import os
import os.path as osp
import subprocess
import sys

import torch
from mmengine.config import Config
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from cals_seg.functional import (ScaledProportions, kernel_weights,
                                 neighbourhood_deviation, soft_label_shift)
from cals_seg.functional.groups import group_layout, num_groups
from cals_seg.utils.data_check import set_data_root

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIGS = osp.join(REPO, 'configs', 'demo')

# Shrinks mmseg's R-50-D8 models to ResNet-18 with 16 base channels.
TINY_R50_D8 = [
    'model.pretrained=None', 'model.backbone.depth=18',
    'model.backbone.base_channels=16', 'model.backbone.stem_channels=16',
    'model.decode_head.in_channels=128', 'model.decode_head.channels=16',
    'model.auxiliary_head.in_channels=64', 'model.auxiliary_head.channels=16'
]


def short_schedule(iterations, hook_interval=2):
    """Options for a few iterations; ``hook_interval`` (None: the config has no
    multiplier hook) sets the first custom hook's round interval (in place of
    its number of rounds)."""
    options = [
        f'train_cfg.max_iters={iterations}', f'train_cfg.val_interval={iterations}',
        f'default_hooks.checkpoint.interval={iterations}',
        'default_hooks.logger.interval=1', 'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False'
    ]
    if hook_interval is not None:
        options += ['custom_hooks.0.rounds=None',
                    f'custom_hooks.0.interval={hook_interval}']
    return options


LOADERS = ('train_dataloader', 'holdout_dataloader', 'val_dataloader',
           'test_dataloader')
# The tests' datasets have a handful of images: half of the training split held
# out, and no selection part (only the study's tuning needs one, and sets its
# own), leaves images on both sides of the hash split.
TEST_HOLDOUT_FRACTION = 0.5


def point_at(loader, data_root):
    """Read a loader config's data from ``data_root``, in the main process."""
    set_data_root(dict(train_dataloader=loader), data_root)
    if loader['dataset'].get('type') == 'HashSplitDataset':
        loader['dataset']['holdout_fraction'] = TEST_HOLDOUT_FRACTION
        loader['dataset'].pop('selection_fraction', None)
    loader['num_workers'] = 0
    loader['persistent_workers'] = False


def demo_config(name, data_root, work_dir, iterations=4, batch_size=2,
                size=64, margin=0.05, layout='voc'):
    """A demo config shrunk to a few iterations on ``data_root``, with the
    data and evaluators of ``configs/_base_/datasets/demo_{layout}.py``."""
    cfg = Config.fromfile(osp.join(DEMO_CONFIGS, name))
    data = Config.fromfile(
        osp.join(REPO, 'configs', '_base_', 'datasets', f'demo_{layout}.py'))
    for key in LOADERS + ('val_evaluator', 'test_evaluator'):
        cfg[key] = data[key]
    for loader in LOADERS:
        point_at(cfg[loader], data_root)
    for hook in cfg.get('custom_hooks', []):
        if 'holdout_dataloader' in hook:
            hook['holdout_dataloader'] = cfg.holdout_dataloader
    cfg.train_dataloader.batch_size = batch_size
    cfg.model.data_preprocessor.size = (size, size)
    cfg.train_cfg.max_iters = iterations
    cfg.train_cfg.val_interval = iterations
    cfg.default_hooks.checkpoint.interval = iterations
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = work_dir
    # Visualizers are process-wide singletons by name; a new name per run keeps
    # each run's scalars.json in its own work_dir.
    cfg.visualizer.name = f'visualizer_{osp.basename(work_dir)}_{id(cfg)}'
    if cfg.model.decode_head.loss_decode.type == 'CALSLoss':
        # A small margin makes constraints active on an untrained network, so the
        # multipliers must move within a few iterations.
        cfg.model.decode_head.loss_decode.margin = margin
        # A round every 2 iterations in place of the config's 100 rounds.
        cfg.custom_hooks[0].pop('rounds', None)
        cfg.custom_hooks[0].interval = 2
        # That margin also makes the penalty steep: a small step keeps it stable.
        cfg.optim_wrapper.optimizer.lr = 0.001
    return cfg


def deterministic_config(data_root, work_dir, iterations, batch_size,
                         hook_interval):
    """The tiny CALS demo config with every source of randomness off: no dropout,
    no flips, unshuffled data; the same run gives the same numbers."""
    cfg = demo_config('deeplabv3_r18tiny_1500it_demo-voc_cals.py', data_root,
                      work_dir, iterations=iterations, batch_size=batch_size)
    cfg.model.decode_head.dropout_ratio = 0.0
    cfg.train_dataloader.sampler.shuffle = False
    cfg.train_dataloader.dataset.dataset.pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations'),
        dict(type='PackSegInputs')
    ]
    cfg.custom_hooks = [
        dict(type='CALSMultiplierHook', source='train', interval=hook_interval)
    ]
    return cfg


def shipped_args(config, data_root, work_dir, iterations=4):
    """tools/train.py arguments that shrink a shipped R-50 config to a few
    iterations of a tiny ResNet on the demo data under ``data_root``."""
    args = ['tools/train.py', config, '--work-dir', work_dir, '--cfg-options']
    with_hook = config.endswith(('_cals.py', '_cals-label.py', '_cals-trainsrc.py',
                                 '_crac.py'))
    args += TINY_R50_D8 + short_schedule(iterations, 2 if with_hook else None)
    args += ['train_dataloader.batch_size=2']
    # The shipped configs split the training set by name hash; the hold-out loader
    # is the multiplier hook's own copy.
    splits = ['train_dataloader.dataset']
    if config.endswith(('_cals.py', '_cals-label.py', '_crac.py')):
        splits.append('custom_hooks.0.holdout_dataloader.dataset')
    if config.endswith(('_cals.py', '_cals-label.py', '_cals-trainsrc.py')):
        # A small margin makes the constraints active on an untrained network.
        args.append('model.decode_head.loss_decode.margin=0.05')
    for split in splits:
        args.append(f'{split}.holdout_fraction={TEST_HOLDOUT_FRACTION}')
        if 'voc' in config:
            for i in range(2):  # voc12aug: VOC train + SBD aug
                args.append(f'{split}.dataset.datasets.{i}.data_root={data_root}')
        else:
            args.append(f'{split}.dataset.data_root={data_root}')
    args.append(f'val_dataloader.dataset.data_root={data_root}')
    return args


def run_tool(args, cwd=None, timeout=600):
    """Run ``python tools/...`` as a user would; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=REPO)
    script = osp.join(REPO, args[0])
    return subprocess.run([sys.executable, script] + list(args[1:]), cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_scalars(work_dir):
    """Every record of vis_data/scalars.json under ``work_dir``."""
    records = []
    for root, _, files in os.walk(work_dir):
        if 'scalars.json' in files and root.endswith('vis_data'):
            with open(osp.join(root, 'scalars.json')) as f:
                records += [json.loads(line) for line in f if line.strip()]
    return records


def blocky_batch(seed=0, n=2, classes=4, size=(9, 10), scale=3.0, ignore=255,
                 ignore_share=0.1):
    """Random logits ``(n, classes, *size)`` and labels in 3 x 3 blocks of one
    class (so that regions and boundaries both occur), some pixels ignored."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, *size, generator=generator) * scale
    blocks = torch.randint(0, classes, (n, size[0] // 3 + 1, size[1] // 3 + 1),
                           generator=generator)
    label = blocks.repeat_interleave(3, 1).repeat_interleave(3, 2)
    label = label[:, :size[0], :size[1]].clone()
    label[torch.rand(n, *size, generator=generator) < ignore_share] = ignore
    return logits, label


def group_index(layout):
    """The group of every (pixel, logit) of a GroupLayout, int64 broadcastable
    to ``(N, C, *S)``: the plain reference for the penalties' grouped paths."""
    base = layout.base.unsqueeze(1)
    if layout.logit_stride == 0:
        return base
    spatial = (1, ) * (layout.base.dim() - 1)
    logit = torch.arange(layout.num_classes).view(1, -1, *spatial)
    return base + layout.logit_stride * logit


def on_backend_and_torch(function, *args, backend, **kwargs):
    """``function(*args, **kwargs)`` on ``backend`` and on the PyTorch path."""
    return tuple(function(*args, backend=b, **kwargs) for b in (backend, 'torch'))


def grouped_penalty_inputs(logits, label, grouping, targets, seed, ignore=255):
    """What grouped_constraint_penalty takes besides the logits: ``valid``, the
    GroupLayout, random multipliers and rho per group and, with ``targets``,
    CRaC-like proportions of a 5 x 5 gaussian window scaled per pixel (else
    None)."""
    valid = label != ignore
    generator = torch.Generator().manual_seed(seed)
    size = num_groups(grouping, logits.shape[1])
    multipliers = torch.rand(size, generator=generator) * 2
    rho = 1 + torch.rand(size, generator=generator) * 3
    reference = None
    if targets:
        reference = ScaledProportions(label, valid, kernel_weights('gaussian', 5),
                                      0.5 + torch.rand(label.shape, generator=generator))
    layout = group_layout(grouping, label, valid, logits.shape[1])
    return valid, layout, multipliers, rho, reference


def nacl_terms(logits, label, kernel_name, size, backend, ignore=255):
    """NACL's ``(total, direction)`` on ``backend`` and on the PyTorch path."""
    targets = ScaledProportions(label, label != ignore, kernel_weights(kernel_name, size))
    return on_backend_and_torch(neighbourhood_deviation, logits, targets,
                                backend=backend)


def svls_terms(logits, label, with_weight, backend, ignore=255):
    """SVLS's ``(total, direction)`` (3 x 3 window, a random per-pixel weight
    or none) on ``backend`` and on the PyTorch path."""
    targets = ScaledProportions(label, label != ignore, kernel_weights('svls', 3))
    weight = torch.rand(label.shape) + 0.5 if with_weight else None
    return on_backend_and_torch(soft_label_shift, logits, targets, weight,
                                backend=backend)


class Loader(list):
    """Batches, and the ``dataset`` whose length a dataloader has."""

    def __init__(self, batches):
        super().__init__(batches)
        self.dataset = [sample for batch in batches for sample in batch]


class FixedModel:
    """What evaluate_split needs of a segmentor: eval() and test_step, here
    returning stored logits for each 'image' of a batch."""

    def __init__(self, logits):
        self.logits = logits
        self.mode = 'train'

    def eval(self):
        self.mode = 'eval'

    def test_step(self, batch):
        assert self.mode == 'eval'
        samples = []
        for index, label in batch:
            sample = SegDataSample(metainfo=dict(img_path=f'img{index}.png'))
            sample.seg_logits = PixelData(data=self.logits[index])
            sample.gt_sem_seg = PixelData(data=label.unsqueeze(0))
            samples.append(sample)
        return samples
