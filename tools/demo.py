"""The demo: cross-entropy against CALS on generated data, on a CPU, in minutes.

    make demo                   # or: python tools/demo.py

Generates the demo dataset if missing (VOC layout; few training images, so the
network memorises them and ends over-confident as real networks do), trains the
tiny DeepLabV3 with cross-entropy and with CALS by the authors' protocol
(multipliers from the held-out part of the training split, once per epoch) on the
same schedule, tests both with mIoU and the calibration metrics, and prints them
side by side with the multipliers CALS learned per class and where the
reliability diagrams are.
"""
import warnings

# mmengine 0.10.7 imports pkg_resources, which the pinned setuptools deprecates
# on every start: noise in a tool's one-line errors.
warnings.filterwarnings('ignore', 'pkg_resources is deprecated', UserWarning)

import argparse
import os.path as osp
import subprocess
import sys
import time

from mmengine.config import Config
from mmengine.runner import Runner

# The plugin and MMEngine checkpoints
import cals_seg.utils.mmengine_checkpoints  # noqa: F401
from cals_seg.utils.data_check import set_data_root
from cals_seg.datasets.demo_data import make_demo_dataset
from cals_seg.functional.calibration import DEFAULT_NUM_BINS
from cals_seg.engine.hooks import find_cals_losses

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {
    'CE': 'configs/demo/deeplabv3_r18tiny_1500it_demo-voc_ce.py',
    'CALS': 'configs/demo/deeplabv3_r18tiny_1500it_demo-voc_cals.py',
}
COLUMNS = ('mIoU', 'ECE', 'img/ECE', 'fg/ECE', 'AECE', 'CECE', 'NLL', 'Brier')


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data-root', default='data/cals_demo/voc')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--iters', type=int, help='training iterations '
                        '(default: the configs\', 1500)')
    return parser.parse_args()


def train_and_test(name: str, args) -> dict:
    cfg = Config.fromfile(osp.join(REPO, CONFIGS[name]))
    set_data_root(cfg, osp.join(args.data_root, 'VOCdevkit', 'VOC2012'))
    work_dir = osp.join(args.work_dir, name.lower())
    cfg.work_dir = work_dir
    # Visualizers are process-wide singletons by name: one per run keeps each
    # run's scalars.json in its own work_dir.
    cfg.visualizer.name = f'demo_{name.lower()}'
    if args.iters:
        cfg.train_cfg.max_iters = args.iters
        cfg.train_cfg.val_interval = args.iters
        cfg.param_scheduler[0].end = args.iters
    logits_dir = osp.join(work_dir, 'logits')
    cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
        dict(type='SaveLogitsHook', out_dir=logits_dir)
    ]
    runner = Runner.from_cfg(cfg)
    start = time.time()
    runner.train()
    metrics = runner.test()
    metrics['minutes'] = (time.time() - start) / 60
    losses = find_cals_losses(runner.model)
    if losses:
        classes = runner.test_dataloader.dataset.metainfo['classes']
        metrics['multipliers'] = dict(
            zip(classes, losses[0][1].multipliers.tolist()))
    metrics['logits_dir'] = logits_dir
    return metrics


def main():
    args = parse_args()
    if not osp.isdir(osp.join(args.data_root, 'VOCdevkit')):
        make_demo_dataset(args.data_root, 'voc')
        print(f'generated the demo dataset under {args.data_root}')
    results = {name: train_and_test(name, args) for name in CONFIGS}

    for name, result in results.items():
        out = osp.join(args.work_dir, name.lower(), 'calibration')
        subprocess.run([
            sys.executable,
            osp.join(REPO, 'tools', 'calib_eval.py'), result['logits_dir'], '--out',
            out
        ], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result['diagrams'] = out
    print(format_table(results))


def format_table(results: dict) -> str:
    header = f'{"method":<8}' + ''.join(f'{c:>10}' for c in COLUMNS) + f'{"minutes":>10}'
    lines = ['', 'tiny DeepLabV3 on the demo data, test split '
             f'({DEFAULT_NUM_BINS} bins; ECE, AECE, CECE in %; img = per image, '
             'averaged; fg = background excluded)', header]
    for name, result in results.items():
        lines.append(f'{name:<8}' + ''.join(f'{result[c]:>10.3f}' for c in COLUMNS) +
                     f'{result["minutes"]:>10.1f}')
    for name, result in results.items():
        if 'multipliers' in result:
            values = ', '.join(f'{k} {v:.3g}' for k, v in result['multipliers'].items())
            lines.append(f'{name} multipliers per class: {values}')
    for name, result in results.items():
        lines.append(f'{name} reliability diagrams: {result["diagrams"]}')
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
