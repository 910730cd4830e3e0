"""Which calibration method should I use on MY model and data? Every method on
your mmseg configs, several seeds, post-hoc calibrators, shift, one report.

    python tools/calib_study.py configs/my_model_ce.py --seeds 0 1 2 \\
        --work-dir work_dirs/study --out work_dirs/study/report.md
    python tools/calib_study.py configs/my_model_ce.py --tune ...   # + tuned rows
        # (each knob's grid on --tuning-seeds, scored on the selection part)
    python tools/calib_study.py --report --work-dir work_dirs/study \\
        --out work_dirs/study/report.md        # the report again, from the records

For every (base config, method, seed) it trains ``tools/train.py CONFIG
--method NAME`` in its own process (distributed with ``--launcher pytorch
--gpus N`` or ``--launcher slurm``), its log in the run's folder; then
evaluates the last checkpoint once, in another process, on the GPU when there
is one: the test split, the hold-out part of the training split, and the test
split under ImageNet-C corruptions (and a shifted domain with
``--domain-root``). The post-hoc calibrators of ``--posthoc`` are fitted on
the hold-out part of the runs of ``--posthoc-on`` through the code
``tools/calib_eval.py`` uses, and evaluated on every split.

Each finished run is one small JSON record in ``RESULTS_DIR/runs`` (default
``WORK_DIR/results``), keyed by a hash of the resolved config, the method's
options, the number of training processes and the code
(cals_seg.study.runs). A second call reuses every stored run whose
evaluation covers what is asked, evaluates a kept checkpoint again when more
is asked, and trains only new or changed runs; a killed study resumes
(training from its last checkpoint) and a record is written only when its
run is finished. ``RESULTS_DIR/study.json``
lists the rows of the study, so ``--report`` rebuilds the same markdown from
the records alone.
"""
import stack_warnings  # noqa: F401  (first: tools/stack_warnings.py)

import argparse
import ast
import os.path as osp
import re
import shlex
import sys
import time
from typing import Dict, List, Optional

from mmengine.config import Config, DictAction

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

from cals_seg.calibrators import SHORT_NAMES  # noqa: E402
from cals_seg.datasets.transforms import CORRUPTIONS  # noqa: E402
from cals_seg.methods import METHODS, method_options  # noqa: E402
from cals_seg.methods.config_walk import find_split  # noqa: E402
from cals_seg.study import finetune, tuning  # noqa: E402
from cals_seg.study.execute import Stopped  # noqa: E402
from cals_seg.study.free_rows import ensemble_rows, free_specs, tta_rows  # noqa: E402
from cals_seg.study.manifest import (build_manifest, read_manifest,  # noqa: E402
                                     write_manifest, write_report)
from cals_seg.study.plan import PlanError, summary  # noqa: E402
from cals_seg.study.rows import (all_grid_specs, default_rows,  # noqa: E402
                                 seed_major, tune, tuning_grids, with_keys)
from cals_seg.study.study import Study  # noqa: E402

DEFAULT_POSTHOC = ('ts', 'ets', 'vs', 'dirichlet', 'cmsap', 'cmsop', 'lts',
                   'selective')
DEFAULT_POSTHOC_ON = ('ce', 'cals')
POSTHOC_CHOICES = sorted(n for n, c in SHORT_NAMES.items()
                         if not getattr(c, 'keywords', None))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('configs', nargs='*', metavar='BASE_CONFIG',
                        help='cross-entropy training configs (any mmseg config; '
                        'each method is applied by its recipe)')
    parser.add_argument('--methods', nargs='+', default=list(METHODS),
                        choices=list(METHODS), metavar='METHOD',
                        help=f'default: all ({", ".join(METHODS)})')
    parser.add_argument('--options', nargs='+', default=[], metavar='M.KEY=VALUE',
                        help='a method option for every run of that method, '
                        'e.g. cals.margin=10 cals.groups=label')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--posthoc', nargs='*', default=list(DEFAULT_POSTHOC),
                        choices=POSTHOC_CHOICES, metavar='NAME',
                        help='post-hoc calibrators fitted on the hold-out part '
                        f'(default: {" ".join(DEFAULT_POSTHOC)}; none: no fitting)')
    parser.add_argument('--posthoc-on', nargs='*', metavar='METHOD',
                        help='the methods whose runs get the post-hoc calibrators '
                        f'(default: those of {" ".join(DEFAULT_POSTHOC_ON)} the '
                        'study runs)')
    parser.add_argument('--tune', action='store_true',
                        help="choose each method's main knob on the NLL of the "
                        'selection part of the training split (on the tuning '
                        'seeds), then run the choice on every seed')
    parser.add_argument('--tuning-seeds', nargs='+', type=int,
                        default=list(tuning.DEFAULT_TUNING_SEEDS),
                        help='seeds of the tuning runs, none of --seeds (default: '
                        f'{" ".join(map(str, tuning.DEFAULT_TUNING_SEEDS))}; two '
                        'or more show whether the choice is stable)')
    parser.add_argument('--selection-fraction', type=float,
                        help='share of the training split in the selection part, '
                        'given to every run, taken from the training part (default: '
                        'the config\'s own; else '
                        f'{tuning.DEFAULT_SELECTION_FRACTION} with --tune)')
    parser.add_argument('--from', nargs='+', dest='checkpoints',
                        metavar='CHECKPOINT', help='fine-tune every method from '
                        'this trained checkpoint of the base config (one per '
                        'BASE_CONFIG, in order) instead of training it in full')
    parser.add_argument('--finetune-iters', type=int, metavar='N',
                        help='iterations of each fine-tuning run with --from; the '
                        'schedule, warm-up and multiplier rounds scale to them '
                        f'(default: {finetune.DEFAULT_SHARE:g} of the base '
                        'config\'s)')
    parser.add_argument('--full', action='store_true',
                        help='with --from: also train every method in full, and '
                        'report how the fine-tuned rows rank the methods against '
                        'the full ones')
    parser.add_argument('--free-rows', action='store_true',
                        help='rows that need no training, evaluated from the kept '
                        'checkpoints: each method\'s seeds as one ensemble, and '
                        'test-time augmentation (the config\'s tta_pipeline, else a '
                        'flip) of CE and of the method with the lowest mean ECE')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='settings merged into every base config before the '
                        'method is applied, as tools/train.py --cfg-options')
    parser.add_argument('--corruptions', nargs='+', default=['all'],
                        metavar='NAME', help='ImageNet-C corruptions of the '
                        'shift columns: all (default) or names')
    parser.add_argument('--shift-severities', nargs='*', type=int, default=[3, 5],
                        help='severities of the shift columns (default: 3 5; '
                        'none: no corrupted passes)')
    parser.add_argument('--domain-root', help='a shifted domain\'s data root in '
                        'the test split\'s layout (tools/make_demo_data.py '
                        '--domain shifted), evaluated as a column')
    parser.add_argument('--background', nargs='+', metavar='CLASS',
                        help='class names the fg ECE column leaves out (default: '
                        'the classes named background; none when the dataset has '
                        'none, and fg ECE is then ECE)')
    parser.add_argument('--launcher', choices=('none', 'pytorch', 'slurm'),
                        default='none', help='none: each run one process on this '
                        'machine; pytorch: --gpus processes per run on this '
                        'machine; slurm: each run a SLURM job of --gpus tasks, '
                        'training and evaluating in its allocation (submitit)')
    parser.add_argument('--gpus', type=int, default=1,
                        help='processes (GPUs) per training run with --launcher')
    parser.add_argument('--partition', help='slurm partition (--launcher slurm)')
    parser.add_argument('--cpus-per-task', type=int,
                        help='CPUs per process (--launcher slurm)')
    parser.add_argument('--sbatch', action='extend', nargs='+', default=[],
                        metavar='--KEY=VALUE',
                        help='further sbatch arguments (--launcher slurm), e.g. '
                        '--sbatch=--account=vision --sbatch=--qos=high')
    parser.add_argument('--run-timeout', type=float, metavar='MINUTES',
                        help="a run's time limit per start: then it is stopped and "
                        'started again from its last checkpoint, at most 3 times '
                        '(default: 3 days)')
    parser.add_argument('--jobs', type=int, default=1,
                        help='runs at once; on this machine each gets its own '
                        'GPUs (--gpus of them) or, on CPU, cpu_count/jobs threads '
                        '(on 2 cores two one-thread runs take about the time of '
                        'one two-thread run)')
    parser.add_argument('--device', help='where runs are evaluated (default: '
                        'where they train: cuda on SLURM or where this machine '
                        'has it, else cpu)')
    parser.add_argument('--work-dir', default='work_dirs/calib_study')
    parser.add_argument('--results-dir', help='the run records (default: '
                        'WORK_DIR/results)')
    parser.add_argument('--out', help='the report (default: WORK_DIR/report.md); '
                        'figures go to figures/ beside it')
    parser.add_argument('--title', default='Calibration study')
    parser.add_argument('--report', action='store_true',
                        help='only rebuild the report from RESULTS_DIR')
    parser.add_argument('--plan', action='store_true',
                        help='check the data and print every run (to train, '
                        'evaluate again or reuse) with its estimated cost, then '
                        'stop; every study prints this first')
    parser.add_argument('--evaluate-run', metavar='RUN_DIR',
                        help=argparse.SUPPRESS)  # the study's own worker
    args = parser.parse_args(argv)
    args.results_dir = args.results_dir or osp.join(args.work_dir, 'results')
    args.out = args.out or osp.join(args.work_dir, 'report.md')
    if args.evaluate_run or args.report:
        return args
    if not args.configs:
        parser.error('name at least one BASE_CONFIG (or --report)')
    missing = [c for c in args.configs if not osp.isfile(c)]
    if missing:
        parser.error(f'config file(s) not found: {", ".join(missing)}')
    if args.corruptions == ['all']:
        args.corruptions = list(CORRUPTIONS)
    unknown = sorted(set(args.corruptions) - set(CORRUPTIONS))
    if unknown:
        parser.error(f'unknown corruptions {unknown}; valid: all or '
                     f'{", ".join(CORRUPTIONS)}')
    bad = [s for s in args.shift_severities if not 1 <= s <= 5]
    if bad:
        parser.error(f'--shift-severities must be in 1..5, got {bad}')
    if args.posthoc_on is None:
        args.posthoc_on = [m for m in DEFAULT_POSTHOC_ON if m in args.methods]
    unknown = sorted(set(args.posthoc_on) - set(args.methods))
    if unknown:
        parser.error(f'--posthoc-on names methods the study does not run: '
                     f'{unknown}')
    if args.gpus < 1 or args.jobs < 1:
        parser.error('--gpus and --jobs must be >= 1')
    if args.run_timeout is not None and args.run_timeout <= 0:
        parser.error(f'--run-timeout must be > 0 minutes, got {args.run_timeout}')
    if args.domain_root and not osp.isdir(args.domain_root):
        parser.error(f'--domain-root {args.domain_root} does not exist')
    for name in ('seeds', 'tuning_seeds'):
        values = getattr(args, name)
        if len(set(values)) != len(values):
            parser.error(f'--{name.replace("_", "-")} {values}: a seed given twice')
    reported = sorted(set(args.tuning_seeds) & set(args.seeds))
    if args.tune and reported:
        parser.error(f'--tuning-seeds {reported} are also --seeds: the run that '
                     'chose a value would be reported with it')
    if (args.selection_fraction is not None
            and not 0 < args.selection_fraction < 1):
        parser.error(f'--selection-fraction must be in (0, 1), got '
                     f'{args.selection_fraction}')
    try:
        args.method_options = parse_method_options(args.options, args.methods)
        args.protocol = protocol_options(args)
        args.starts = fine_tuning_starts(args)
    except ValueError as error:
        parser.error(str(error))
    return args


def base_config(args, config: str) -> Config:
    """A base config as every run of it sees it: with --cfg-options merged."""
    cfg = Config.fromfile(config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    return cfg


def fine_tuning_starts(args) -> Dict[str, List[Optional[finetune.Start]]]:
    """Per base config, how its rows start: [None] (trained in full) without
    --from; with it, the checkpoint and iterations (and None first with
    --full).

    Raises:
        ValueError: --from without one checkpoint per config, a checkpoint
            that is not a file, --finetune-iters or --full without --from, or
            a config whose schedule cannot be shrunk.
    """
    if not args.checkpoints:
        if args.finetune_iters is not None or args.full:
            raise ValueError('--finetune-iters and --full need --from CHECKPOINT')
        return {config: [None] for config in args.configs}
    if len(args.checkpoints) != len(args.configs):
        raise ValueError(f'--from gives {len(args.checkpoints)} checkpoint(s) for '
                         f'{len(args.configs)} base config(s): give one per config, '
                         'in their order')
    missing = [c for c in args.checkpoints if not osp.isfile(c)]
    if missing:
        raise ValueError(f'--from: checkpoint(s) not found: {", ".join(missing)}')
    if args.finetune_iters is not None and args.finetune_iters < 1:
        raise ValueError(f'--finetune-iters must be >= 1, got {args.finetune_iters}')
    starts = {}
    for config, checkpoint in zip(args.configs, args.checkpoints):
        cfg = base_config(args, config)
        try:
            iters = args.finetune_iters or finetune.default_iters(cfg)
        except ValueError as error:
            raise ValueError(f'{config}: {error}') from None
        starts[config] = ([None] if args.full else []) + [
            finetune.Start(checkpoint, iters)]
    return starts


def protocol_options(args) -> Dict[str, dict]:
    """Per base config, the protocol options every run of it gets: the
    selection part's share where the study sets it (``--selection-fraction``,
    or its default under ``--tune`` for a config without a selection part).

    Raises:
        ValueError: a share other than the one the config has, or a method
            option that sets the share.
    """
    given = sorted(m for m, o in args.method_options.items()
                   if 'selection_fraction' in o)
    if given:
        raise ValueError(f'--options sets selection_fraction for {given}: the '
                         'study compares methods on the same training images, '
                         'so give --selection-fraction for all of them')
    protocol = {}
    for config in args.configs:
        cfg = base_config(args, config)
        split = find_split((cfg.get('train_dataloader') or {}).get('dataset') or {})
        fraction = args.selection_fraction
        if split is not None and split.get('selection_fraction') and \
                fraction not in (None, split['selection_fraction']):
            raise ValueError(
                f'--selection-fraction {fraction}: {config} splits its training '
                f'set already, with selection_fraction='
                f'{split.get("selection_fraction", 0)}; change it in the config')
        if fraction is None and args.tune and not (split or {}).get(
                'selection_fraction'):
            # Taken from the training part; a split's held-out part stays.
            fraction = tuning.DEFAULT_SELECTION_FRACTION
        protocol[config] = ({} if fraction is None else
                            dict(selection_fraction=fraction))
    return protocol


def parse_method_options(items: List[str], methods: List[str]) -> Dict[str, dict]:
    """``['cals.margin=10']`` as ``{'cals': {'margin': 10.0}}``; values are
    Python literals where they parse, else strings, and whole numbers become
    floats where the option's default is a float (one run, one key).

    Raises:
        ValueError: a malformed item, a method not in ``methods``, or an option
            the method does not take.
    """
    options: Dict[str, dict] = {}
    for item in items:
        match = re.fullmatch(r'([\w-]+)\.(\w+)=(.*)', item)
        if not match:
            raise ValueError(f'--options {item!r}: expected METHOD.KEY=VALUE')
        method, key, text = match.groups()
        if method not in methods:
            raise ValueError(f'--options {item!r}: {method!r} is not one of the '
                             f'study\'s methods {methods}')
        if key not in method_options(method):
            raise ValueError(f'--options {item!r}: {method} has no option {key!r}; '
                             f'its options are {sorted(method_options(method))}')
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        default = method_options(method)[key]
        if isinstance(default, float) and type(value) is int:
            value = float(value)  # margin=10 is the run of margin 10.0
        options.setdefault(method, {})[key] = value
    return options


def main(argv=None):
    args = parse_args(argv)
    if args.evaluate_run:
        import cals_seg.utils.mmengine_checkpoints  # noqa: F401
        from cals_seg.study.evaluate import evaluate_run
        evaluate_run(args.evaluate_run)
        return
    if args.report:
        try:
            manifest = read_manifest(args.results_dir)
        except FileNotFoundError as error:
            sys.exit(f'error: {error}')
        write_report(args.results_dir, args.out, manifest)
        return
    study = Study(args, REPO)
    print(f'cals-seg {study.code["package"]}, code {study.code["tree"]} '
          f'(commit {study.code["commit"]}{", dirty" if study.code["dirty"] else ""})'
          f'; records in {args.results_dir}, logs in {args.work_dir}/runs',
          flush=True)
    rows = default_rows(args)
    specs = seed_major(rows)
    grids = tuning_grids(args) if args.tune else {}
    try:
        planned = study.plan(specs) + study.plan(all_grid_specs(args, grids),
                                                 full=False)
    except PlanError as error:
        sys.exit(f'error: {error}')
    print('\n'.join(summary(planned, args.jobs, study.train_device)))
    if grids:
        print(f'then the chosen value of each of the {len(grids)} tuned knobs on '
              f'every seed ({len(grids) * len(args.seeds)} runs at most, fewer where '
              'a default is chosen), and one grid step past a chosen end (at most '
              f'{len(grids) * len(args.tuning_seeds)} runs): planned once chosen',
              flush=True)
    if args.free_rows:
        print('then the free rows, from the kept checkpoints: each row\'s seeds as '
              'an ensemble, and test-time augmentation of CE and of the row with '
              'the lowest mean ECE on every seed: evaluation only', flush=True)
    if args.plan:
        return
    # Quoted as a shell needs it, so that the report's first line runs as shown.
    command = 'python tools/calib_study.py ' + shlex.join(
        sys.argv[1:] if argv is None else argv)

    def record_manifest() -> dict:
        """study.json as it stands: rewritten as each run finishes."""
        manifest = build_manifest(args, command, with_keys(study, rows),
                                  study.evaluation)
        write_manifest(args.results_dir, manifest)
        return manifest

    study.on_record = record_manifest
    try:
        study.run_all(specs)
        if args.tune:
            tuned = tune(study, args)
            rows += tuned
            study.run_all(seed_major(tuned))
        if args.free_rows:
            by_key = {r['key']: r for r in study.records.values()}
            free = ensemble_rows(rows) + tta_rows(with_keys(study, rows), by_key)
            rows += free
            study.run_all([spec for row in free for spec in free_specs(row)])
    except ValueError as error:
        sys.exit(f'error: {error}')
    except Stopped as signal_name:
        record_manifest()
        sys.exit(f'stopped by {signal_name}: the runs in flight were stopped; the '
                 'next call resumes them from their last checkpoints')
    write_report(args.results_dir, args.out, record_manifest())
    minutes = (time.time() - study.started) / 60
    print(f'{study.trained} run(s) trained, {study.done - study.trained} reused, '
          f'{minutes:.1f} min')
    if study.failures:
        sys.exit(f'error: {len(study.failures)} run(s) failed; the report marks '
                 'them and no verdict uses them:\n' + '\n'.join(study.failures))


if __name__ == '__main__':
    main()
