"""Every calibration method x both tiny models x several seeds on the demo data.

    python tools/benchmark_methods.py            # all of it; writes docs/results.md

Each run is ``tools/train.py`` on a demo config in its own process and work dir;
its final validation metrics (the demo's test split) and, for CALS, the learned
multipliers are read back from scalars.json and the last checkpoint. Finished runs
are kept and skipped when the command is run again, so an interrupted benchmark
continues where it stopped. The table reports mean +- standard deviation over
seeds, whatever it shows.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time

import numpy as np
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

from cals_seg.demo_data import VOC_CLASSES, make_demo_dataset  # noqa: E402
from cals_seg.fileio import write_atomic  # noqa: E402

METHODS = ('ce', 'ls', 'fl', 'mbls', 'ecp', 'cals')
MODELS = ('deeplabv3', 'pspnet')
METRICS = ('mIoU', 'ECE', 'AECE', 'CECE', 'NLL', 'Brier', 'fg/ECE', 'fg/CECE')
CONFIG = 'configs/demo/{model}_r18tiny_1500it_demo-voc_{method}.py'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--methods', nargs='+', choices=METHODS,
                        default=list(METHODS))
    parser.add_argument('--models', nargs='+', choices=MODELS, default=list(MODELS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--iters', type=int,
                        help="training iterations (default: the configs' 1500)")
    parser.add_argument('--data-root', default='data/cals_demo/voc')
    parser.add_argument('--work-dir', default='work_dirs/benchmark')
    parser.add_argument('--out', default='docs/results.md')
    return parser.parse_args(argv)


def run_one(model, method, seed, args) -> dict:
    """Train one configuration (or reuse a finished run) and return its result."""
    work_dir = osp.join(args.work_dir, f'{model}_{method}_seed{seed}')
    result_path = osp.join(work_dir, 'result.json')
    if osp.isfile(result_path):
        with open(result_path) as f:
            return json.load(f)
    data_root = osp.join(args.data_root, 'VOCdevkit', 'VOC2012')
    options = [f'randomness.seed={seed}'] + [
        f'{loader}.dataset.data_root={data_root}'
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')
    ]
    if args.iters:
        options += [f'train_cfg.max_iters={args.iters}',
                    f'train_cfg.val_interval={args.iters}',
                    f'default_hooks.checkpoint.interval={args.iters}']
    start = time.time()
    subprocess.run([
        sys.executable,
        osp.join(REPO, 'tools', 'train.py'),
        osp.join(REPO, CONFIG.format(model=model, method=method)), '--work-dir',
        work_dir, '--cfg-options'
    ] + options, check=True, stdout=subprocess.DEVNULL)
    result = dict(model=model, method=method, seed=seed,
                  minutes=(time.time() - start) / 60)
    result['metrics'] = _last_validation(work_dir)
    if method == 'cals':
        result['multipliers'] = _multipliers(work_dir)
    write_atomic(result_path, json.dumps(result, indent=2).encode('utf-8'))
    return result


def _last_validation(work_dir) -> dict:
    records = []
    for root, _, files in os.walk(work_dir):
        if 'scalars.json' in files:
            with open(osp.join(root, 'scalars.json')) as f:
                records += [json.loads(line) for line in f if line.strip()]
    validations = [r for r in records if 'mIoU' in r]
    if not validations:
        raise RuntimeError(f'no validation metrics in {work_dir}')
    return {key: validations[-1][key] for key in METRICS}


def _multipliers(work_dir) -> list:
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        checkpoint = torch.load(f.read().strip(), map_location='cpu',
                                weights_only=True)
    return checkpoint['state_dict']['decode_head.loss_decode.multipliers'].tolist()


def format_results(results, command: str, classes) -> str:
    lines = [
        '# Calibration methods on the generated demo data', '',
        f'Produced by `{command}` on {time.strftime("%Y-%m-%d")}: mean ± standard '
        'deviation over seeds of the final validation metrics (the demo\'s test '
        'split). ECE, AECE and CECE in %, 15 bins; fg = background excluded.', ''
    ]
    for model in sorted({r['model'] for r in results}):
        lines += [f'## {model} (tiny, ResNet-18 with 8 base channels)', '',
                  '| method | seeds | ' + ' | '.join(METRICS) + ' | minutes |',
                  '| --- ' * (len(METRICS) + 3) + '|']
        for method in METHODS:
            runs = [r for r in results if r['model'] == model and r['method'] == method]
            if not runs:
                continue
            cells = []
            for key in METRICS:
                values = np.array([r['metrics'][key] for r in runs])
                cells.append(f'{values.mean():.3f} ± {values.std():.3f}')
            minutes = np.mean([r['minutes'] for r in runs])
            lines.append(f'| {method.upper()} | {len(runs)} | ' + ' | '.join(cells) +
                         f' | {minutes:.1f} |')
        cals = [r for r in results if r['model'] == model and r['method'] == 'cals']
        if cals:
            multipliers = np.array([r['multipliers'] for r in cals])
            lines += ['', 'CALS multipliers per class (mean ± std over seeds):', '',
                      '| ' + ' | '.join(classes) + ' |', '| --- ' * len(classes) + '|',
                      '| ' + ' | '.join(f'{m:.3g} ± {s:.2g}' for m, s in zip(
                          multipliers.mean(0), multipliers.std(0))) + ' |']
        lines.append('')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isdir(osp.join(args.data_root, 'VOCdevkit')):
        make_demo_dataset(args.data_root, 'voc')
    results = []
    runs = [(m, k, s) for m in args.models for k in args.methods for s in args.seeds]
    for index, (model, method, seed) in enumerate(runs, 1):
        print(f'[{index}/{len(runs)}] {model} {method} seed {seed}', flush=True)
        results.append(run_one(model, method, seed, args))
    command = 'python tools/benchmark_methods.py ' + ' '.join(
        sys.argv[1:] if argv is None else argv)
    report = format_results(results, command.strip(), VOC_CLASSES)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    write_atomic(args.out, report.encode('utf-8'))
    print(report)


if __name__ == '__main__':
    main()
