"""Test a segmentor: mmseg's tools/test.py, plus --save-logits for calib_eval,
--calibrator, and --conformal (set-size maps of conformal pixel sets).

The device is MMEngine's choice, as in mmseg's tool: the Runner puts the model
on the GPU when there is one (``CUDA_VISIBLE_DEVICES=`` keeps it on the CPU),
and a calibrator follows the logits' device.
"""
import stack_warnings  # noqa: F401  (first: tools/stack_warnings.py)

import argparse
import os.path as osp
import sys

# The plugin and MMEngine checkpoints
import cals_seg.utils.mmengine_checkpoints  # noqa: F401
from mmengine.runner import Runner

from cals_seg.utils.cli import (add_common_arguments, exit_if_dataset_missing,
                                load_config)
from cals_seg.utils.saved_logits import LOGITS_DTYPES
from cals_seg.utils.launch import finish_distributed, prepare_cpu_distributed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--out',
        type=str,
        help='the directory to save the output prediction for offline evaluation')
    parser.add_argument(
        '--save-logits',
        metavar='DIR',
        help='write each image\'s logits (C x H x W, original size) to DIR as '
        '.npy, with a manifest.json for tools/calib_eval.py')
    parser.add_argument(
        '--logits-dtype',
        choices=LOGITS_DTYPES,
        default='float16',
        help='dtype of the saved logits (default: float16)')
    parser.add_argument(
        '--calibrator',
        metavar='FILE',
        help='apply a saved post-hoc calibrator (tools/calib_eval.py '
        '--calibrators writes them) to every prediction before evaluation')
    parser.add_argument(
        '--conformal',
        metavar='FILE',
        help='write each image\'s conformal set sizes as an 8-bit PNG map (sets '
        'saved by tools/calib_eval.py --conformal, conformal_<row>.json; with '
        '--calibrator, the row of that calibrator)')
    parser.add_argument(
        '--set-size-dir',
        metavar='DIR',
        help='where --conformal writes its maps (default: WORK_DIR/set_sizes)')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved. '
        'If specified, it will be automatically saved '
        'to the work_dir/timestamp/show_dir')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--tta', action='store_true', help='Test time augmentation')
    add_common_arguments(parser)
    return parser.parse_args(argv)


def trigger_visualization_hook(cfg, args):
    default_hooks = cfg.default_hooks
    if 'visualization' not in default_hooks:
        sys.exit('error: --show and --show-dir need a VisualizationHook in '
                 'default_hooks (visualization=dict(type="SegVisualizationHook"))')
    visualization_hook = default_hooks['visualization']
    visualization_hook['draw'] = True
    if args.show:
        visualization_hook['show'] = True
        visualization_hook['wait_time'] = args.wait_time
    if args.show_dir:
        visualizer = cfg.visualizer
        visualizer['save_dir'] = args.show_dir
    return cfg


def check_conformal_pairing(conformal: str, calibrator: str) -> None:
    """Exit unless the sets were calibrated on the outputs this test makes:
    the raw logits without ``--calibrator``, that calibrator's type with it."""
    from cals_seg.calibrators import CalibratorFileError, load_calibrator
    from cals_seg.evaluation.conformal import ConformalSets
    from cals_seg.functional.conformal import ConformalInputError
    try:
        sets = ConformalSets.load(conformal)
        applied = (type(load_calibrator(calibrator)).__name__
                   if calibrator else None)
    except (ConformalInputError, CalibratorFileError) as error:
        sys.exit(f'error: {error}')
    if sets.calibrator != applied:
        sys.exit(f'error: {conformal} holds sets calibrated on '
                 f'{sets.calibrator or "the raw logits"}, and this test makes '
                 f'{applied or "the raw logits"}: the guarantee holds for the '
                 'outputs the sets were calibrated on (pass the matching '
                 '--calibrator, or conformal_<row>.json of this row)')


def configure(cfg, args):
    """The test config with the options applied: the calibrator and TTA
    wrappers, the prediction output and the logits hook."""
    # Read before the wrappers below hide the segmentor's decode head.
    ignore_index = cfg.model.get('decode_head', {}).get('ignore_index', 255)

    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)

    if args.calibrator:
        if not osp.isfile(args.calibrator):
            sys.exit(f'error: calibrator not found: {args.calibrator}')
        cfg.model = dict(type='CalibratedSegmentor', segmentor=cfg.model,
                         calibrator=args.calibrator)

    if args.tta:
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model

    if args.out is not None:
        evaluators = cfg.test_evaluator if isinstance(
            cfg.test_evaluator, (list, tuple)) else [cfg.test_evaluator]
        for evaluator in evaluators:
            if evaluator.get('type') == 'IoUMetric':
                evaluator.update(output_dir=args.out, keep_results=True)

    if args.save_logits:
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
            dict(type='SaveLogitsHook', out_dir=args.save_logits,
                 dtype=args.logits_dtype, ignore_index=ignore_index)
        ]
    if args.conformal:
        check_conformal_pairing(args.conformal, args.calibrator)
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
            dict(type='SetSizeHook', conformal=args.conformal,
                 out_dir=args.set_size_dir or osp.join(cfg.work_dir, 'set_sizes'))
        ]
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    if not osp.isfile(args.checkpoint):
        sys.exit(f'error: checkpoint not found: {args.checkpoint}')
    cfg = configure(cfg, args)

    exit_if_dataset_missing(cfg, ('test_dataloader', ))
    prepare_cpu_distributed(cfg, args.launcher)

    runner = Runner.from_cfg(cfg)
    runner.test()
    finish_distributed()


if __name__ == '__main__':
    main()
