"""The demo: cross-entropy against CALS on generated data, on a CPU, in minutes.

    make demo                   # or: python tools/demo.py

Generates the demo dataset if missing (VOC layout; few training images, so the
network memorises them and ends over-confident as real networks do), then runs
the calibration study (tools/calib_study.py, the machinery of ``make
benchmark``) on the tiny DeepLabV3: cross-entropy and CALS by the authors'
protocol, one seed, both trained at once (one thread each), temperature
scaling fitted on the held-out part. It prints a line per run and the table;
the training logs, the records and the report with its reliability diagrams
are under --work-dir. A second call reuses the finished runs.
"""
import stack_warnings  # noqa: F401  (first: tools/stack_warnings.py)

import argparse
import os
import os.path as osp
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

from cals_seg.datasets.demo_data import make_demo_dataset  # noqa: E402

CONFIG = 'configs/demo/deeplabv3_r18tiny_1500it_demo-voc_ce.py'
DEFAULT_ITERS = 1500
TABLE = '### In-domain (test split)'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data-root', default='data/cals_demo/voc')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--iters', type=int, default=DEFAULT_ITERS,
                        help=f'training iterations (default: {DEFAULT_ITERS})')
    return parser.parse_args(argv)


def study_command(args) -> list:
    """The study the demo runs: CE and CALS, seed 0, TS, no shift passes; the
    run validates and saves once, at its end."""
    data_root = osp.join(args.data_root, 'VOCdevkit', 'VOC2012')
    iters = args.iters
    options = [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
               f'param_scheduler.0.end={iters}',
               f'default_hooks.checkpoint.interval={iters}']
    options += [f'{loader}.dataset.data_root={data_root}'
                for loader in ('val_dataloader', 'test_dataloader')]
    options += [f'{loader}.dataset.dataset.data_root={data_root}'
                for loader in ('train_dataloader', 'holdout_dataloader')]
    return [sys.executable, osp.join(REPO, 'tools', 'calib_study.py'),
            osp.join(REPO, CONFIG), '--methods', 'ce', 'cals', '--seeds', '0',
            '--posthoc', 'ts', '--shift-severities', '--jobs', '2',
            '--title', 'The demo: CE against CALS on the tiny DeepLabV3',
            '--work-dir', args.work_dir, '--cfg-options', *options]


def table_of(report: str) -> str:
    """The in-domain section of a study report: the table and its verdicts."""
    section = report[report.index(TABLE) + len(TABLE):]
    return section.split('\n![', 1)[0].split('\n### ', 1)[0].strip()


def main(argv=None):
    args = parse_args(argv)
    if not osp.isdir(osp.join(args.data_root, 'VOCdevkit')):
        make_demo_dataset(args.data_root, 'voc')
        print(f'generated the demo dataset under {args.data_root}', flush=True)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep +
               os.environ.get('PYTHONPATH', ''))
    result = subprocess.run(study_command(args), env=env)
    if result.returncode != 0:
        sys.exit(result.returncode)
    report_path = osp.join(args.work_dir, 'report.md')
    with open(report_path) as f:
        print('\n' + table_of(f.read()))
    print(f'\nreport with the reliability diagrams: {report_path}')


if __name__ == '__main__':
    main()
