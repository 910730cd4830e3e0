"""Every calibration method x both tiny models x several seeds on the demo data.

    python tools/benchmark_methods.py            # all of it; writes docs/results.md

Each run is ``tools/train.py`` on a demo config in its own process and work dir,
then ``tools/regime_report.py`` on its last checkpoint: one pass in eval mode over
the test split, the training part and the held-out part, which gives every
reported number (mIoU; pooled, per-image, foreground, boundary and interior ECE;
AECE, CECE, NLL, Brier, AURC; the reliability bins; the regime figures). For CE
and CALS it also fits the post-hoc calibrators on the held-out part and
evaluates them on the test split: the rows 'CE + ...' and 'CALS + ...'. For CALS
runs the learned multipliers are read from the last checkpoint and their
trajectory from scalars.json.

Finished runs are kept and skipped when the command is run again, so an
interrupted benchmark continues where it stopped; a run whose report is older
than this tool's (``REPORT_VERSION``) gets a new report from its checkpoint,
without training again. The table reports mean ±
standard deviation over seeds, whatever it shows; the hand-written reading in
``docs/results_reading.md`` is appended after the generated tables.
"""
import warnings

# mmengine 0.10.7 imports pkg_resources, which the pinned setuptools deprecates
# on every start: noise in a tool's one-line errors.
warnings.filterwarnings('ignore', 'pkg_resources is deprecated', UserWarning)

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

# The plugin, and torch.load of MMEngine checkpoints
import cals_seg.utils.mmengine_checkpoints  # noqa: E402,F401
from cals_seg.datasets.demo_data import VOC_CLASSES, make_demo_dataset  # noqa: E402
from cals_seg.utils.io import write_atomic  # noqa: E402
from cals_seg.functional.groups import group_names  # noqa: E402

# Trained methods, one demo config each; 'ce+ts' and the other 'method+calibrator'
# rows are that method's runs with a post-hoc calibrator fitted on the held-out
# part (no training of their own).
TRAINED = ('ce', 'ls', 'ls-0.1', 'fl', 'mbls', 'ecp', 'nacl', 'svls', 'cals',
           'cals-trainsrc', 'cals-m10', 'cals-label', 'crac')
POSTHOC = ('ts', 'vs', 'dirichlet', 'lts', 'selective')
CALIBRATED = ('ce', 'cals')
METHODS = ('ce', *(f'ce+{c}' for c in POSTHOC), 'ls', 'ls-0.1', 'fl', 'mbls',
           'ecp', 'nacl', 'svls', 'cals', *(f'cals+{c}' for c in POSTHOC),
           'cals-trainsrc', 'cals-m10', 'cals-label', 'crac')
LABELS = {
    'ce': 'CE', 'ls': 'LS (ε 0.05)',
    'ls-0.1': 'LS (ε 0.1)', 'fl': 'FL (γ 3)', 'mbls': 'MbLS (m 10, α 0.1)',
    'ecp': 'ECP (β 0.1)', 'nacl': 'NACL (3×3 mean, α 0.1)',
    'svls': 'SVLS (3×3, σ 1)', 'cals': 'CALS (authors\' protocol, m 20)',
    'cals-trainsrc': 'CALS, training-batch source', 'cals-m10': 'CALS, margin 10',
    'cals-label': 'CALS, a multiplier per label (m 20)',
    'crac': 'CRaC (class × region, m 5, ρ 0.1)'
}
CALIBRATOR_LABELS = dict(ts='TS', vs='vector scaling', dirichlet='Dirichlet (ODIR)',
                         lts='LTS', selective='selective scaling')
LABELS.update({f'{method}+{c}': f'{method.upper()} + {CALIBRATOR_LABELS[c]}'
               for method in CALIBRATED for c in POSTHOC})
# The multiplier grouping of each method that does not use CALS's (one per logit).
GROUPING = {'cals-label': 'label', 'crac': 'region'}
MODELS = ('deeplabv3', 'pspnet')
METRICS = ('mIoU', 'ECE', 'ECE_image', 'fg/ECE', 'ECE_boundary', 'ECE_interior',
           'AECE', 'CECE', 'NLL', 'Brier', 'AURC')
# What a result.json holds; older ones get a new report from their checkpoint.
REPORT_VERSION = 5
# Not a quality metric, so never ranked: the share of (pixel, non-winning class)
# logit distances above 10 on the test split, how far a method moves the logit scale.
DESCRIPTIVE = ('distance_share', )
HEADERS = dict(ECE='ECE', ECE_image='ECE per image', distance_share='d > 10 (%)',
               ECE_boundary='boundary ECE', ECE_interior='interior ECE',
               **{'fg/ECE': 'fg ECE'})
SCALE = dict(distance_share=100.0)
CONFIG = 'configs/demo/{model}_r18tiny_1500it_demo-voc_{method}.py'
DEFAULT_ITERS = 1500
HIGHER_IS_BETTER = ('mIoU', )
READING = 'docs/results_reading.md'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--methods', nargs='+', choices=METHODS,
                        default=list(METHODS))
    parser.add_argument('--models', nargs='+', choices=MODELS, default=list(MODELS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--iters', type=int,
                        help=f"training iterations (default: the configs', "
                        f'{DEFAULT_ITERS})')
    parser.add_argument(
        '--jobs', type=int, default=2,
        help='runs trained at once, each with cpu_count/jobs threads (on 2 cores '
        'two one-thread runs finish in about the time of one two-thread run)')
    parser.add_argument('--data-root', default='data/cals_demo/voc')
    parser.add_argument('--work-dir', default='work_dirs/benchmark')
    parser.add_argument('--out', default='docs/results.md')
    parser.add_argument('--figures', help='folder of the PNG figures (default: '
                        'figures/ beside --out)')
    return parser.parse_args(argv)


def _work_dir(args, model, method, seed) -> str:
    iters = args.iters or DEFAULT_ITERS
    return osp.join(args.work_dir, f'{model}_{method}_{iters}it_seed{seed}')


def learns_multipliers(method: str) -> bool:
    """Trained with an Augmented-Lagrangian loss (multipliers in the checkpoint)."""
    return '+' not in method and (method.startswith('cals') or method == 'crac')


def multiplier_names(method: str) -> list:
    """Names of a method's multipliers: one per class, or per group."""
    return group_names(GROUPING.get(method, 'logit'), VOC_CLASSES)


def source(method: str) -> str:
    """The trained method behind a row: 'ce' for 'ce+ts'."""
    return method.split('+')[0]


def run_one(model, method, seed, args) -> dict:
    """Train one configuration (or reuse a finished run) and return its result."""
    iters = args.iters or DEFAULT_ITERS
    work_dir = _work_dir(args, model, method, seed)
    result_path = osp.join(work_dir, 'result.json')
    calibrators = [c for c in POSTHOC if f'{method}+{c}' in args.methods]
    previous = None
    if osp.isfile(result_path):
        with open(result_path) as f:
            previous = json.load(f)
        reported = previous.get('metrics_posthoc', {})
        if (previous.get('report_version') == REPORT_VERSION
                and all(c in reported for c in calibrators)):
            return previous
        calibrators = [c for c in POSTHOC if c in calibrators or c in reported]
    data_root = osp.join(args.data_root, 'VOCdevkit', 'VOC2012')
    roots = [f'{loader}.dataset.data_root={data_root}'
             for loader in ('val_dataloader', 'test_dataloader')] + [
        f'{loader}.dataset.dataset.data_root={data_root}'
        for loader in ('train_dataloader', 'holdout_dataloader')]
    if learns_multipliers(method) and 'trainsrc' not in method:
        roots.append(f'custom_hooks.0.holdout_dataloader.dataset.dataset.'
                     f'data_root={data_root}')
    # Only the final validation is reported, so the run validates once, at its end.
    options = [f'randomness.seed={seed}', f'train_cfg.max_iters={iters}',
               f'train_cfg.val_interval={iters}', f'param_scheduler.0.end={iters}',
               f'default_hooks.checkpoint.interval={iters}'] + roots
    threads = str(max(1, (os.cpu_count() or 1) // args.jobs))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    config = osp.join(REPO, CONFIG.format(model=model, method=method))
    if previous is None:
        start = time.time()
        subprocess.run([
            sys.executable, osp.join(REPO, 'tools', 'train.py'), config,
            '--work-dir', work_dir, '--cfg-options'
        ] + options, check=True, stdout=subprocess.DEVNULL, env=env)
        minutes = (time.time() - start) / 60
    else:  # an older report of a finished run: report again, do not retrain
        minutes = previous['minutes']
    checkpoint = _last_checkpoint(work_dir)
    report_path = osp.join(work_dir, 'report.json')
    subprocess.run([
        sys.executable, osp.join(REPO, 'tools', 'regime_report.py'), config,
        checkpoint, '--json', report_path, '--calibrators', *calibrators,
        '--cfg-options'
    ] + roots, check=True, stdout=subprocess.DEVNULL, env=env)
    with open(report_path) as f:
        report = json.load(f)
    result = dict(model=model, method=method, seed=seed, minutes=minutes,
                  report_version=REPORT_VERSION, **report)
    if learns_multipliers(method):
        result['multipliers'] = _multipliers(checkpoint)
        result['trajectory'] = _trajectory(work_dir)
    write_atomic(result_path, json.dumps(result, indent=2).encode('utf-8'))
    return result


def _last_checkpoint(work_dir) -> str:
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def _records(work_dir) -> list:
    """Every line of the run's scalars.json files."""
    records = []
    for root, _, files in os.walk(work_dir):
        if 'scalars.json' in files:
            with open(osp.join(root, 'scalars.json')) as f:
                records += [json.loads(line) for line in f if line.strip()]
    return records


def _trajectory(work_dir) -> list:
    """Logged per-class multipliers: ``[[iteration, [lambda per class]], ...]``."""
    return sorted(
        [r['iter'], [v for k, v in r.items() if k.startswith('cals/lambda/')]]
        for r in _records(work_dir) if 'cals/lambda_mean' in r)


def _multipliers(checkpoint) -> list:
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    return state['state_dict']['decode_head.loss_decode.multipliers'].tolist()


def _rows(results, model, method, key='metrics') -> list:
    """Per seed, the metrics (or another per-output entry, such as the
    reliability bins) of a method's row; 'ce+ts' reads CE's runs."""
    calibrator = method.partition('+')[2]
    runs = [r for r in results if r['model'] == model and r['method'] == source(method)]
    if not calibrator:
        return [r[key] for r in runs]
    return [r[f'{key}_posthoc'][calibrator] for r in runs
            if calibrator in r.get(f'{key}_posthoc', {})]


def _ranking(results, model, methods) -> str:
    """Which method has the best mean on each metric: the table's verdict, in words."""
    means = {}
    for method in methods:
        rows = _rows(results, model, method)
        if rows:
            means[method] = {k: np.mean([r[k] for r in rows]) for k in METRICS}
    best = {}
    for key in METRICS:
        choose = max if key in HIGHER_IS_BETTER else min
        best[key] = choose(means, key=lambda method: means[method][key])
    return 'Best mean per metric: ' + ', '.join(
        f'{HEADERS.get(key, key)} {LABELS[best[key]]}' for key in METRICS) + '.'


def _regime_table(results, model) -> list:
    """The five regime figures of every CE run (the regime's targets,
    docs/results.md)."""
    runs = sorted((r for r in results if r['model'] == model and r['method'] == 'ce'),
                  key=lambda r: r['seed'])
    if not runs:
        return []
    lines = ['', 'Cross-entropy against the regime targets (test split unless said):',
             '', '| seed | ECE ≥ 5 | ECE per image ≥ 5 | fg ECE ≥ 10 | acc < conf '
             'in every bin > 0.5 | training-part pixel acc ≥ 97 | test mIoU 40-85 | '
             'distances > 10 ≥ 20 % |', '| --- ' * 8 + '|']
    for r in runs:
        f = r['figures']
        lines.append(
            f"| {r['seed']} | {f['ECE']:.2f} | {f['ECE_image']:.2f} | "
            f"{f['fg/ECE']:.2f} | {'yes' if f['overconfident']['all'] else 'no'} "
            f"({len(f['overconfident']['bins'])} bins) | {f['train_aAcc']:.2f} | "
            f"{f['test_mIoU']:.2f} | {100 * f['distance_share']:.1f} % |")
    return lines


def _multiplier_tables(name, runs, classes) -> list:
    """Learned multipliers per class (or group) at the end (mean ± std over
    seeds) and at the quarters of training (mean over seeds)."""
    final = np.array([r['multipliers'] for r in runs])
    lines = ['', f'{name}: multipliers per class at the end:', '',
             '| ' + ' | '.join(classes) + ' |', '| --- ' * len(classes) + '|',
             '| ' + ' | '.join(f'{m:.3g} ± {s:.2g}' for m, s in zip(
                 final.mean(0), final.std(0))) + ' |']
    logged = [dict((it, values) for it, values in r['trajectory']) for r in runs]
    shared = sorted(set.intersection(*(set(t) for t in logged)))
    if shared:
        points = sorted({shared[min(len(shared) - 1, len(shared) * q // 4)]
                         for q in (0, 1, 2, 3, 4)})
        lines += ['', f'{name}: multipliers during training (mean over seeds):', '',
                  '| iteration | ' + ' | '.join(classes) + ' |',
                  '| --- ' * (len(classes) + 1) + '|']
        for point in points:
            mean = np.mean([t[point] for t in logged], axis=0)
            lines.append(f'| {point} | ' + ' | '.join(f'{m:.3g}' for m in mean) +
                         ' |')
    return lines


def _pooled_bins(bins):
    """Reliability bins pooled over runs: counts add, means weigh by count."""
    count = np.sum([b['count'] for b in bins], axis=0)
    weighted = {}
    for field in ('confidence', 'accuracy'):
        values = np.array([np.nan_to_num(b[field]) * np.array(b['count'])
                           for b in bins]).sum(0)
        with np.errstate(invalid='ignore', divide='ignore'):
            weighted[field] = values / count
    return count, weighted['confidence'], weighted['accuracy']


def confidence_gaps(reliability: dict, fg_reliability: dict) -> tuple:
    """Mean accuracy minus mean confidence, in %, of background and of
    foreground pixels (> 0: under-confident). Background's bins are all pixels'
    minus the foreground's: the same confidence bins, the foreground protocol
    leaving out the pixels whose ground truth is background."""
    def sums(bins):
        count = np.array(bins['count'], dtype=float)
        return (count, *(np.nan_to_num(np.array(bins[f], dtype=float)) * count
                         for f in ('accuracy', 'confidence')))
    everything, foreground = sums(reliability), sums(fg_reliability)
    background = [a - b for a, b in zip(everything, foreground)]
    return tuple(100 * (accuracy.sum() - confidence.sum()) / count.sum()
                 for count, accuracy, confidence in (background, foreground))


def _gap_table(results, model, methods) -> list:
    """Background and foreground confidence gaps of every trained method."""
    lines = ['', 'Accuracy minus confidence by ground truth (%, mean ± std over seeds; '
             '> 0 under-confident): does a method calibrate the foreground by '
             'making the background under-confident?', '',
             '| method | background | foreground |', '| --- | --- | --- |']
    for method in methods:
        runs = [r for r in results if r['model'] == model and r['method'] == method]
        if not runs or '+' in method:  # post-hoc rows keep no foreground bins
            continue
        gaps = np.array([confidence_gaps(r['reliability'], r['fg_reliability'])
                         for r in runs])
        lines.append(f'| {LABELS[method]} | ' + ' | '.join(
            f'{m:+.2f} ± {s:.2f}' for m, s in zip(gaps.mean(0), gaps.std(0))) + ' |')
    return lines


def _reliability_grid(plt, results, grid, title, path):
    """Reliability diagrams, pixels pooled over seeds: one row per
    ``(model, methods)`` of ``grid``, one column per method."""
    columns = max(len(methods) for _, methods in grid)
    fig, axes = plt.subplots(len(grid), columns,
                             figsize=(2.2 * columns, 2.6 * len(grid)),
                             squeeze=False, sharey=True)
    for row, (model, methods) in enumerate(grid):
        for col, method in enumerate(methods):
            axis = axes[row][col]
            bins = _rows(results, model, method, 'reliability')
            if not bins:
                axis.set_axis_off()
                continue
            count, confidence, accuracy = _pooled_bins(bins)
            num_bins = len(count)
            centres = (np.arange(num_bins) + 0.5) / num_bins
            axis.bar(centres, np.nan_to_num(accuracy), width=1 / num_bins,
                     edgecolor='black', linewidth=0.3, color='tab:blue')
            axis.plot([0, 1], [0, 1], color='grey', linestyle='--', linewidth=0.8)
            axis.plot(confidence, accuracy, '.', color='tab:red', markersize=3)
            share = count / count.sum()
            axis.bar(centres, share * 0.25, width=1 / num_bins, color='tab:orange',
                     alpha=0.8)
            ece = np.mean([r['ECE'] for r in _rows(results, model, method)])
            axis.set_title(f'{LABELS[method]}\nECE {ece:.2f} %', fontsize=7)
            axis.set_xlim(0, 1)
            axis.set_ylim(0, 1)
            axis.tick_params(labelsize=6)
            if col == 0:
                axis.set_ylabel(f'{model}\naccuracy', fontsize=7)
            if row == len(grid) - 1:
                axis.set_xlabel('confidence', fontsize=7)
    fig.suptitle(f'{title}: reliability on the test split, pixels pooled over seeds '
                 '(blue: accuracy per bin; red: mean confidence; orange: share of '
                 'pixels x 0.25)', fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def draw_figures(results, methods, folder) -> dict:
    """Reliability diagrams of the trained methods side by side, of the
    post-hoc calibrators on CE and CALS, and the CALS multipliers over training;
    returns {name: path}."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    models = [m for m in MODELS if any(r['model'] == m for r in results)]
    present = [m for m in methods if _rows(results, models[0], m)]
    paths = {}
    trained = [m for m in present if '+' not in m or m == 'ce+ts']
    paths['reliability'] = osp.join(folder, 'reliability.png')
    _reliability_grid(plt, results, [(model, trained) for model in models],
                      'Training methods', paths['reliability'])
    posthoc = [(model, [m for m in present if source(m) == base])
               for model in models for base in CALIBRATED]
    posthoc = [(model, row) for model, row in posthoc if len(row) > 1]
    if posthoc:
        paths['posthoc'] = osp.join(folder, 'posthoc_reliability.png')
        _reliability_grid(plt, results, posthoc, 'Post-hoc calibrators',
                          paths['posthoc'])

    cals_methods = [m for m in methods if learns_multipliers(m)]
    cals_runs = [r for r in results if r['method'] in cals_methods and
                 r.get('trajectory')]
    if cals_runs:
        present = [m for m in cals_methods if any(r['method'] == m for r in cals_runs)]
        fig, axes = plt.subplots(len(models), len(present),
                                 figsize=(3.4 * len(present), 2.8 * len(models)),
                                 squeeze=False, sharey=True)
        for row, model in enumerate(models):
            for col, method in enumerate(present):
                axis = axes[row][col]
                runs = [r for r in cals_runs if r['model'] == model and
                        r['method'] == method]
                if not runs:
                    axis.set_axis_off()
                    continue
                logged = [dict((it, v) for it, v in r['trajectory']) for r in runs]
                shared = sorted(set.intersection(*(set(t) for t in logged)))
                values = np.mean([[t[i] for i in shared] for t in logged], axis=0)
                for index, name in enumerate(multiplier_names(method)):
                    axis.plot(shared, values[:, index], label=name, linewidth=1,
                              linestyle='--' if 'boundary' in name else '-')
                axis.set_yscale('log')
                axis.set_title(f'{model}: {LABELS[method]}', fontsize=7)
                axis.tick_params(labelsize=6)
                axis.set_xlabel('iteration', fontsize=7)
                if col == 0:
                    axis.set_ylabel('multiplier λ (mean over seeds)', fontsize=7)
        for axis in axes[0]:
            if axis.has_data():
                axis.legend(fontsize=5)
        fig.tight_layout()
        paths['multipliers'] = osp.join(folder, 'cals_multipliers.png')
        _save(fig, paths['multipliers'])
        plt.close(fig)
    return paths


def _save(fig, path):
    import io
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=130)
    write_atomic(path, buffer.getvalue())


def format_results(results, methods, command: str, figures: dict,
                   out_dir: str) -> str:
    lines = [
        '# Calibration methods on the over-confidence regime of the demo data', '',
        f'Produced by `{command}` on {time.strftime("%Y-%m-%d")} from the committed '
        'code; do not edit by hand. Mean ± standard deviation over seeds, test split '
        '(the demo\'s `val`, 40 images). ECE, AECE and CECE in %, 15 bins; '
        '`ECE per image`: computed per image and averaged over images, background '
        'kept (the CALS authors\' protocol); `fg ECE`: background excluded (MbLS, '
        'NACL, CRaC). minutes: wall time of one run, with `--jobs` runs sharing the '
        'cores.', '',
        'Every method trains on the same ~80 % of the training split (20 images); the '
        'held-out ~20 % (4 images, by name hash) updates CALS\'s multipliers '
        '(authors\' protocol) and is what the post-hoc calibrators are fitted on '
        '(rows "CE + ..." and "CALS + ...": TS, vector scaling, Dirichlet with '
        'ODIR weights 1e-3, LTS without the image, selective scaling; their fitting '
        'defaults are in cals_seg/calibrators). Chosen on the held-out part: the '
        'calibrators\' parameters only. Not chosen at all: every loss '
        'hyper-parameter is its published default (named in the method column); '
        'nothing was tuned on the test split. `boundary ECE`: pixels within 2 px '
        'of a label boundary (the ignore label included), `interior ECE` the '
        'others; AURC: area under the risk-coverage curve of the top-label '
        'confidence, in %.', ''
    ]
    for model in sorted({r['model'] for r in results}):
        columns = METRICS + DESCRIPTIVE
        headers = [HEADERS.get(k, k) for k in columns]
        lines += [f'## {model} (tiny: ResNet-18 with 16 base channels)', '',
                  '| method | seeds | ' + ' | '.join(headers) + ' | minutes |',
                  '| --- ' * (len(columns) + 3) + '|']
        for method in methods:
            rows = _rows(results, model, method)
            if not rows:
                continue
            cells = []
            for key in columns:
                values = SCALE.get(key, 1.0) * np.array([r[key] for r in rows])
                cells.append(f'{values.mean():.3f} ± {values.std():.3f}')
            minutes = np.mean([r['minutes'] for r in results
                               if r['model'] == model and r['method'] == source(method)])
            lines.append(f'| {LABELS[method]} | {len(rows)} | ' + ' | '.join(cells) +
                         f' | {minutes:.1f} |')
        lines += ['', _ranking(results, model, methods)]
        temperatures = [r['temperature'] for r in results
                        if r['model'] == model and r['method'] == 'ce' and
                        'temperature' in r]
        if temperatures:
            lines += ['', 'Temperatures fitted on the held-out part (CE, per seed): ' +
                      ', '.join(f'{t:.3f}' for t in temperatures) + '.']
        lines += _gap_table(results, model, methods)
        lines += _regime_table(results, model)
        for method in (m for m in methods if learns_multipliers(m)):
            runs = [r for r in results if r['model'] == model and r['method'] == method]
            if runs:
                lines += _multiplier_tables(LABELS[method], runs,
                                            multiplier_names(method))
        lines.append('')
    for name, path in figures.items():
        lines += [f'![{name}]({osp.relpath(path, out_dir)})', '']
    reading = osp.join(REPO, READING)
    if osp.isfile(reading):
        with open(reading) as f:
            lines += ['', f.read().rstrip(), '']
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isdir(osp.join(args.data_root, 'VOCdevkit')):
        make_demo_dataset(args.data_root, 'voc')
    trained = sorted({source(m) for m in args.methods}, key=TRAINED.index)
    runs = [(m, k, s) for m in args.models for k in trained for s in args.seeds]
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
    out_dir = osp.dirname(osp.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    methods = [m for m in METHODS if m in args.methods]
    figures = draw_figures(results, methods,
                           args.figures or osp.join(out_dir, 'figures'))
    report = format_results(results, methods, command.strip(), figures, out_dir)
    write_atomic(args.out, report.encode('utf-8'))
    print(report)


if __name__ == '__main__':
    main()
