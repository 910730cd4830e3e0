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
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

from cals_seg.demo_data import VOC_CLASSES, make_demo_dataset  # noqa: E402
from cals_seg.fileio import write_atomic  # noqa: E402

METHODS = ('ce', 'ls', 'fl', 'mbls', 'ecp', 'cals', 'cals-m10')
MODELS = ('deeplabv3', 'pspnet')
METRICS = ('mIoU', 'ECE', 'AECE', 'CECE', 'NLL', 'Brier', 'fg/ECE', 'fg/CECE')
CONFIG = 'configs/demo/{model}_r18tiny_1500it_demo-voc_{method}.py'
DEFAULT_ITERS = 1500
HIGHER_IS_BETTER = ('mIoU', )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--methods', nargs='+', choices=METHODS,
                        default=list(METHODS))
    parser.add_argument('--models', nargs='+', choices=MODELS, default=list(MODELS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--iters', type=int,
                        help="training iterations (default: the configs' 1500)")
    parser.add_argument(
        '--jobs', type=int, default=2,
        help='runs trained at once, each with cpu_count/jobs threads (on 2 cores '
        'two one-thread runs finish in about the time of one two-thread run)')
    parser.add_argument('--data-root', default='data/cals_demo/voc')
    parser.add_argument('--work-dir', default='work_dirs/benchmark')
    parser.add_argument('--out', default='docs/results.md')
    return parser.parse_args(argv)


def run_one(model, method, seed, args) -> dict:
    """Train one configuration (or reuse a finished run) and return its result."""
    iters = args.iters or DEFAULT_ITERS
    work_dir = osp.join(args.work_dir, f'{model}_{method}_{iters}it_seed{seed}')
    result_path = osp.join(work_dir, 'result.json')
    if osp.isfile(result_path):
        with open(result_path) as f:
            result = json.load(f)
        if method.startswith('cals') and 'trajectory' not in result:
            # Runs finished before the trajectory was reported.
            result['trajectory'] = _trajectory(work_dir, iters)
            write_atomic(result_path, json.dumps(result, indent=2).encode('utf-8'))
        return result
    data_root = osp.join(args.data_root, 'VOCdevkit', 'VOC2012')
    # Only the final validation is reported, so the run validates once, at its end.
    options = [f'randomness.seed={seed}', f'train_cfg.max_iters={iters}',
               f'train_cfg.val_interval={iters}', f'param_scheduler.0.end={iters}',
               f'default_hooks.checkpoint.interval={iters}'] + [
        f'{loader}.dataset.data_root={data_root}'
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')
    ]
    threads = str(max(1, (os.cpu_count() or 1) // args.jobs))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    start = time.time()
    subprocess.run([
        sys.executable,
        osp.join(REPO, 'tools', 'train.py'),
        osp.join(REPO, CONFIG.format(model=model, method=method)), '--work-dir',
        work_dir, '--cfg-options'
    ] + options, check=True, stdout=subprocess.DEVNULL, env=env)
    result = dict(model=model, method=method, seed=seed,
                  minutes=(time.time() - start) / 60)
    result['metrics'] = _last_validation(work_dir)
    if method.startswith('cals'):
        result['multipliers'] = _multipliers(work_dir)
        result['trajectory'] = _trajectory(work_dir, iters)
    write_atomic(result_path, json.dumps(result, indent=2).encode('utf-8'))
    return result


def _records(work_dir) -> list:
    """Every line of the run's scalars.json files."""
    records = []
    for root, _, files in os.walk(work_dir):
        if 'scalars.json' in files:
            with open(osp.join(root, 'scalars.json')) as f:
                records += [json.loads(line) for line in f if line.strip()]
    return records


def _trajectory(work_dir, iters) -> dict:
    """Logged per-class multipliers at a quarter, half, three quarters and the end
    of training: {iteration: [lambda per class]}."""
    logged = sorted((r['iter'], [v for k, v in r.items() if k.startswith('cals/lambda/')])
                    for r in _records(work_dir) if 'cals/lambda_mean' in r)
    points = {}
    for quarter in (1, 2, 3, 4):
        target = iters * quarter // 4
        before = [entry for entry in logged if entry[0] <= target]
        if before:
            points[str(before[-1][0])] = before[-1][1]
    return points


def _last_validation(work_dir) -> dict:
    validations = [r for r in _records(work_dir) if 'mIoU' in r]
    if not validations:
        raise RuntimeError(f'no validation metrics in {work_dir}')
    return {key: validations[-1][key] for key in METRICS}


def _multipliers(work_dir) -> list:
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        checkpoint = torch.load(f.read().strip(), map_location='cpu',
                                weights_only=True)
    return checkpoint['state_dict']['decode_head.loss_decode.multipliers'].tolist()


def _multiplier_tables(name, runs, classes) -> list:
    """Learned multipliers per class at the end (mean ± std over seeds) and, at the
    logged points that all runs share, during training (mean over seeds)."""
    final = np.array([r['multipliers'] for r in runs])
    lines = ['', f'{name} multipliers per class at the end:', '',
             '| ' + ' | '.join(classes) + ' |', '| --- ' * len(classes) + '|',
             '| ' + ' | '.join(f'{m:.3g} ± {s:.2g}' for m, s in zip(
                 final.mean(0), final.std(0))) + ' |']
    shared = set.intersection(*(set(r['trajectory']) for r in runs))
    if shared:
        lines += ['', f'{name} multipliers during training:', '',
                  '| iteration | ' + ' | '.join(classes) + ' |',
                  '| --- ' * (len(classes) + 1) + '|']
        for point in sorted(shared, key=int):
            mean = np.mean([r['trajectory'][point] for r in runs], axis=0)
            lines.append(f'| {point} | ' + ' | '.join(f'{m:.3g}' for m in mean) +
                         ' |')
    return lines


def _ranking(results, model) -> str:
    """Which method has the best mean on each metric: the table's verdict, in words."""
    means = {}
    for method in METHODS:
        runs = [r for r in results if r['model'] == model and r['method'] == method]
        if runs:
            means[method] = {k: np.mean([r['metrics'][k] for r in runs]) for k in METRICS}
    best = {}
    for key in METRICS:
        choose = max if key in HIGHER_IS_BETTER else min
        best[key] = choose(means, key=lambda method: means[method][key])
    return 'Best mean per metric: ' + ', '.join(
        f'{key} {best[key].upper()}' for key in METRICS) + '.'


def format_results(results, command: str, classes) -> str:
    lines = [
        '# Calibration methods on the generated demo data', '',
        f'Produced by `{command}` on {time.strftime("%Y-%m-%d")}: mean ± standard '
        'deviation over seeds of the final validation metrics (the demo\'s test '
        'split). ECE, AECE and CECE in %, 15 bins; fg = background excluded. '
        'minutes: wall time of one run, with `--jobs` runs sharing the cores.', ''
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
        lines += ['', _ranking(results, model)]
        for method in (m for m in METHODS if m.startswith('cals')):
            runs = [r for r in results if r['model'] == model and r['method'] == method]
            if runs:
                lines += _multiplier_tables(method.upper(), runs, classes)
        lines.append('')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isdir(osp.join(args.data_root, 'VOCdevkit')):
        make_demo_dataset(args.data_root, 'voc')
    runs = [(m, k, s) for m in args.models for k in args.methods for s in args.seeds]
    finished = 0

    def run_and_report(run):
        nonlocal finished
        result = run_one(*run, args)
        finished += 1
        print(f'[{finished}/{len(runs)}] {" ".join(map(str, run))}: '
              f'{result["minutes"]:.1f} min', flush=True)
        return result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run_and_report, runs))
    command = 'python tools/benchmark_methods.py ' + ' '.join(
        sys.argv[1:] if argv is None else argv)
    report = format_results(results, command.strip(), VOC_CLASSES)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    write_atomic(args.out, report.encode('utf-8'))
    print(report)


if __name__ == '__main__':
    main()
