"""Train a segmentor: mmseg's tools/train.py, with cals-seg loaded, a clear
error for a missing dataset, and --method NAME [--method-options k=v ...] to
train any config by a method recipe (cals_seg.methods)."""
import stack_warnings  # noqa: F401  (first: tools/stack_warnings.py)

import argparse
import logging
import sys

# The plugin and MMEngine checkpoints
import cals_seg.utils.mmengine_checkpoints  # noqa: F401
from mmengine.logging import print_log
from mmengine.runner import Runner, find_latest_checkpoint

from mmseg.registry import RUNNERS

from cals_seg.utils.cli import (add_common_arguments, exit_if_dataset_missing,
                                load_config)
from cals_seg.utils.launch import finish_distributed, prepare_cpu_distributed


def parse_args():
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--resume',
        action='store_true',
        default=False,
        help='resume from the latest checkpoint in the work_dir automatically '
        '(without one: start afresh, from load_from\'s weights if it is set)')
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='enable automatic-mixed-precision training')
    add_common_arguments(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_config(args)
    if args.amp:
        optim_wrapper = cfg.optim_wrapper.type
        if optim_wrapper == 'AmpOptimWrapper':
            print_log('AMP training is already enabled in your config.',
                      logger='current', level=logging.WARNING)
        elif optim_wrapper != 'OptimWrapper':
            sys.exit(f'error: --amp needs optim_wrapper type OptimWrapper, the '
                     f'config has {optim_wrapper}')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.resume and find_latest_checkpoint(cfg.work_dir):
        # MMEngine resumes from load_from when it is set; a run started from a
        # checkpoint (fine-tuning) resumes from its own latest one instead.
        cfg.resume, cfg.load_from = True, None
    else:
        # Nothing of its own yet: a fresh start, from load_from's weights if any.
        cfg.resume = args.resume and not cfg.get('load_from')
    exit_if_dataset_missing(cfg, ('train_dataloader', 'val_dataloader'))
    prepare_cpu_distributed(cfg, args.launcher)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(
        cfg)
    runner.train()
    finish_distributed()


if __name__ == '__main__':
    main()
