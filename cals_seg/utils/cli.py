"""What tools/train.py, tools/test.py and tools/print_config.py share: mmseg's
common options, a method recipe (--method), and loading the config they describe."""
import argparse
import os
import os.path as osp
import sys
from typing import Sequence

from mmengine.config import Config, DictAction

from ..methods import METHODS, apply_method
from .data_check import DatasetNotFoundError, check_datasets


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--cfg-options, --method and --method-options: what makes the config."""
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings in the used config, the key-value pair '
        'in xxx=yyy format will be merged into config file (before --method '
        'applies, so the keys are those of the config file).')
    parser.add_argument(
        '--method',
        choices=list(METHODS),
        help="apply a method recipe (cals_seg.methods.apply_method: the CALS "
        "authors' protocol plus the method's loss and hook) to the config, a "
        'cross-entropy one: ' + '; '.join(
            f'{method.name}: {method.summary}' for method in METHODS.values()))
    parser.add_argument(
        '--method-options',
        nargs='+',
        action=DictAction,
        metavar='KEY=VALUE',
        help='options of --method, e.g. margin=10 source=train rounds=50 '
        '(values parsed as for --cfg-options)')


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The config arguments, --work-dir, --launcher and --local-rank, as mmseg's
    tools."""
    add_config_arguments(parser)
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def build_config(args: argparse.Namespace) -> Config:
    """The config of ``args.config`` with --cfg-options merged, then --method
    applied; a bad method or option exits with one line naming it."""
    if args.method_options and not args.method:
        sys.exit('error: --method-options needs --method')
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.method:
        try:
            cfg = apply_method(cfg, args.method, **(args.method_options or {}))
        except ValueError as error:
            sys.exit(f'error: --method {args.method}: {error}')
    return cfg


def load_config(args: argparse.Namespace) -> Config:
    """The config of ``args.config`` with the common options applied."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg = build_config(args)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        # The config's name, which --method changes (apply_method).
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(cfg.filename))[0])
    return cfg


def exit_if_dataset_missing(cfg: Config, dataloaders: Sequence[str]) -> None:
    """One line on stderr and exit code 2 when a dataset path does not exist."""
    try:
        check_datasets(cfg, dataloaders)
    except DatasetNotFoundError as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)
