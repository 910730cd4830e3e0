"""What tools/train.py and tools/test.py share: mmseg's common options and
loading the config they describe."""
import argparse
import os
import os.path as osp
import sys
from typing import Sequence

from mmengine.config import Config, DictAction

from .data_check import DatasetNotFoundError, check_datasets


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--work-dir, --cfg-options, --launcher and --local-rank, as mmseg's tools."""
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings in the used config, the key-value pair '
        'in xxx=yyy format will be merged into config file.')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def load_config(args: argparse.Namespace) -> Config:
    """The config of ``args.config`` with the common options applied."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    return cfg


def exit_if_dataset_missing(cfg: Config, dataloaders: Sequence[str]) -> None:
    """One line on stderr and exit code 2 when a dataset path does not exist."""
    try:
        check_datasets(cfg, dataloaders)
    except DatasetNotFoundError as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)
