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
import json
import os
import os.path as osp
import re
import shlex
import shutil
import sys
import time
from contextlib import ExitStack
from typing import Dict, List, NamedTuple, Optional

import torch
from mmengine.config import Config, DictAction

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

from cals_seg.calibrators import SHORT_NAMES  # noqa: E402
from cals_seg.datasets.transforms import CORRUPTIONS  # noqa: E402
from cals_seg.methods import METHODS, method_options  # noqa: E402
from cals_seg.methods.config_walk import find_split  # noqa: E402
from cals_seg.study import finetune, tuning  # noqa: E402
from cals_seg.study.execute import (RunJob, Scheduler, Stopped,  # noqa: E402
                                    command_minutes, make_executor, run_lock,
                                    visible_gpus)
from cals_seg.study.plan import (PlanError, PlannedRun, Probe,  # noqa: E402
                                 check_data, estimate, probe, summary)
from cals_seg.study.evaluate import (EVALUATION_FILE, RUN_FILE,  # noqa: E402
                                     TRAIN_DIR)
from cals_seg.evaluation.tta import tta_pipeline  # noqa: E402
from cals_seg.study.finetune import start_fields  # noqa: E402
from cals_seg.study.free_rows import KINDS as FREE_KINDS  # noqa: E402
from cals_seg.study.free_rows import (FreeSpec, ensemble_rows,  # noqa: E402
                                      free_key, free_specs, tta_rows)
from cals_seg.study.runs import (RECORD_VERSION, RunSpec,  # noqa: E402
                                 code_version, covers, evaluation_key, load_record,
                                 load_records, resolve_config, row_spec, run_key,
                                 save_record, training_minutes, union)
from cals_seg.utils.io import write_atomic  # noqa: E402

STUDY_FILE = 'study.json'
DEFAULT_POSTHOC = ('ts', 'vs', 'dirichlet', 'lts', 'selective')
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


class Study:
    """Runs (or reuses) the study's runs through its executor, at most ``jobs``
    at once, printing a line per finished run with the time left."""

    def __init__(self, args):
        self.args = args
        self.code = code_version()
        # Where runs train, whose type is keyed: a SLURM allocation's GPUs (the
        # submitting host may have none), else this machine's.
        self.train_device = ('cuda' if args.launcher == 'slurm' or
                             torch.cuda.is_available() else 'cpu')
        args.device = args.device or self.train_device
        self.world_size = args.gpus if args.launcher != 'none' else 1
        on_gpu = self.train_device == 'cuda'
        executor = make_executor(
            'slurm' if args.launcher == 'slurm' else 'local',
            osp.join(args.work_dir, 'submitit'), tasks=self.world_size,
            gpus_per_task=int(on_gpu), partition=args.partition,
            cpus_per_task=args.cpus_per_task, timeout_min=args.run_timeout,
            sbatch=args.sbatch)
        local_gpus = visible_gpus() if on_gpu and args.launcher != 'slurm' else []
        self.scheduler = Scheduler(executor, args.jobs, local_gpus,
                                   self.world_size if local_gpus else 0,
                                   local=args.launcher != 'slurm')
        self.threads = (None if on_gpu else
                        max(1, (os.cpu_count() or 1) // (args.jobs * self.world_size)))
        self.evaluation = dict(
            posthoc=list(args.posthoc),
            corruptions=list(args.corruptions) if args.shift_severities else [],
            severities=sorted(set(args.shift_severities)),
            domain_root=args.domain_root, background=args.background)
        self.failures: List[str] = []  # one line per failed or skipped run
        self.records: Dict[str, dict] = {}  # every run's record, by spec id
        self.keys: Dict[str, str] = {}  # training keys by RunSpec.id
        self.on_record = None  # called after each stored record
        self.done = self.total = self.trained = 0
        self.seconds = 0.0
        # Per base config: images per split, and the probe's timings.
        self._checked: Dict[str, dict] = {}
        self._probes: Dict[str, Probe] = {}
        self._resolved: Dict[str, Config] = {}  # by RunSpec.id
        self.started = time.time()

    def settings(self, spec: RunSpec, full: bool = True) -> dict:
        """How a run is evaluated: calibrators for the methods of
        --posthoc-on, shift passes; ``full=False``: the hold-out and test
        splits only (enough to choose a knob)."""
        if not full:
            return dict(posthoc=[], corruptions=[], severities=[], domain_root=None,
                        background=self.evaluation['background'])
        calibrated = (spec.method in self.args.posthoc_on
                      and not isinstance(spec, FreeSpec))  # free rows: raw only
        return dict(self.evaluation,
                    posthoc=self.evaluation['posthoc'] if calibrated else [])

    def run_all(self, specs: List[RunSpec], full: bool = True) -> Dict[str, dict]:
        """The record of every spec that has one, by :attr:`RunSpec.id`: stored
        ones reused, the others run through the scheduler while the study holds
        their folders' locks. A run that fails, or is in progress in another
        study, has none; :attr:`failures` says why, and the others go on.
        Specs may be free runs (:class:`FreeSpec`), evaluated only, after
        their members.

        Raises:
            Stopped: the study was stopped; its runs resume on the next call.
        """
        configs = self.configs(specs)
        self.total += len(specs)
        records, failures, work, pending = {}, [], {}, {}
        with ExitStack() as locks:
            for spec, cfg in zip(specs, configs):
                absent = [m.name for m in getattr(spec, 'members', ())
                          if m.id not in self.records]
                if absent:
                    failures.append(f'{spec.name}: no record of {", ".join(absent)}')
                    self._progress(spec, 'skipped: a member run has no record')
                    continue
                key, scoring, settings, record, action = self.classify(spec, cfg,
                                                                       full)
                self.keys[spec.id] = key
                if action == 'reuse':
                    records[spec.id] = self.records[spec.id] = record
                    self._progress(spec, f'reused {key}')
                    continue
                run_dir = self.run_dir(spec, key)
                if not locks.enter_context(run_lock(run_dir)):
                    failures.append(f'{spec.name}: in progress in another study '
                                    f'(its folder {run_dir} is locked); skipped')
                    self._progress(spec, 'skipped: in progress in another study')
                    continue
                resumed = self._prepare(run_dir, cfg, settings, spec)
                work[spec.name] = RunJob(run_dir, REPO, self.world_size > 1,
                                         self.threads,
                                         train=not isinstance(spec, FreeSpec))
                pending[spec.name] = (spec, key, scoring, settings, record, resumed)

            def finished(name: str, error: Optional[BaseException]) -> None:
                spec = pending[name][0]
                if error is None:
                    try:
                        records[spec.id] = self.records[spec.id] = self._record(
                            work[name].run_dir, *pending[name])
                        if self.on_record is not None:
                            self.on_record()
                        return
                    except (OSError, ValueError, KeyError) as failure:
                        error = failure  # its evaluation left no usable files
                failures.append(f'{spec.name}: {type(error).__name__}: {error}')
                self._progress(spec, 'FAILED (the others go on)')

            self.scheduler.run(work, finished)
        self.failures += failures
        return records

    def stored_key(self, spec: RunSpec) -> Optional[str]:
        """The key of the spec's run where its record is stored (by this study
        or another), else None."""
        key = self.keys.get(spec.id)
        if key is None or load_record(self.args.results_dir, key) is None:
            return None
        return key

    def configs(self, specs: List[RunSpec]) -> list:
        """The resolved training config of each spec, resolved once per study
        (the plan and the runs read the same ones)."""
        trained = [getattr(spec, 'members', (spec, ))[0] for spec in specs]
        for spec in trained:
            if spec.id not in self._resolved:
                self._resolved[spec.id] = resolve_config(
                    spec, self.args.cfg_options, self.args.protocol[spec.config])
        return [self._resolved[spec.id] for spec in trained]

    def classify(self, spec: RunSpec, cfg, full: bool = True) -> tuple:
        """What the study does with a run: ``(key, evaluation key, settings,
        stored record or None, action)``, the action 'reuse' (its record's keys
        match and its evaluation covers the settings), 'evaluate' (again, from
        its checkpoint, with at least what it had) or 'train'; a free run
        (:class:`FreeSpec`, its members recorded) is never trained."""
        free = isinstance(spec, FreeSpec)
        if free:
            key = free_key(spec, [self.records[m.id]['key'] for m in spec.members],
                           tta_pipeline(cfg)[0] if spec.kind == 'tta' else None)
        else:
            key = run_key(cfg, spec, self.world_size, self.code, self.train_device)
        scoring = evaluation_key(cfg, self.code, self.args.device)
        settings = self.settings(spec, full)
        record = load_record(self.args.results_dir, key)
        if record is None:
            return key, scoring, settings, None, 'evaluate' if free else 'train'
        if (record.get('evaluation_key') == scoring
                and covers(record['settings'], settings)):
            return key, scoring, settings, record, 'reuse'
        kept = free or osp.isfile(osp.join(self.run_dir(spec, key), TRAIN_DIR,
                                           'last_checkpoint'))
        return (key, scoring, union(record['settings'], settings), record,
                'evaluate' if kept else 'train')

    def run_dir(self, spec: RunSpec, key: str) -> str:
        return osp.join(self.args.work_dir, 'runs',
                        spec.name.replace('/', '_') + f'_{key}')

    def plan(self, specs: List[RunSpec], full: bool = True) -> List[PlannedRun]:
        """Every spec's action and estimated cost; the data of each base config
        checked and, where it has runs to train or evaluate, probed.

        Raises:
            PlanError: missing or unreadable data, or a probe that failed.
        """
        planned, probes, checked = [], self._probes, self._checked
        for spec, cfg in zip(specs, self.configs(specs)):
            if spec.config not in checked:
                checked[spec.config] = check_data(cfg, f'{spec.name} ({spec.config})',
                                                  self.args.domain_root)
            key, _, settings, _, action = self.classify(spec, cfg, full)
            train_min = evaluate_min = float('nan')  # not estimated
            if action == 'reuse':
                train_min = evaluate_min = 0.0
            elif self.args.launcher != 'slurm':  # a login node is not a node
                if spec.config not in probes:
                    probes[spec.config] = probe(cfg, spec.config, REPO,
                                                self.threads, self.args.device)
                train_min, evaluate_min = estimate(cfg, probes[spec.config],
                                                   checked[spec.config], settings)
                if action == 'evaluate':
                    train_min = 0.0
            planned.append(PlannedRun(spec.name, key, action, train_min,
                                      evaluate_min))
        return planned

    def _prepare(self, run_dir: str, cfg, settings: dict, spec) -> bool:
        """Write the run's config and settings (a free run's: its members' run
        folders); whether it has a checkpoint to resume from (a finished
        training resumes at its last iteration and stops at once)."""
        cfg.dump(osp.join(run_dir, 'config.py'))
        if isinstance(spec, FreeSpec):
            members = [osp.abspath(self.run_dir(m, self.records[m.id]['key']))
                       for m in spec.members]
            write_atomic(osp.join(run_dir, RUN_FILE), json.dumps(dict(
                settings=settings, device=self.args.device,
                free=dict(kind=spec.kind, members=members))).encode())
            return True
        work_dir = osp.join(run_dir, TRAIN_DIR)
        resumed = osp.isfile(osp.join(work_dir, 'last_checkpoint'))
        if not resumed:
            # Stopped before its first checkpoint: start afresh, so that no log
            # of the stopped start is read as this run's (the multipliers).
            shutil.rmtree(work_dir, ignore_errors=True)
        write_atomic(osp.join(run_dir, RUN_FILE), json.dumps(dict(
            settings=settings, device=self.args.device)).encode())
        return resumed

    def _record(self, run_dir: str, spec: RunSpec, key: str, scoring: str,
                settings: dict, before: Optional[dict], resumed: bool) -> dict:
        """Store the record of a run whose job ended well, and say so."""
        with open(osp.join(run_dir, EVALUATION_FILE)) as f:
            evaluation = json.load(f)
        evaluated = command_minutes(run_dir, 'evaluate.log')
        members = [self.records[m.id] for m in getattr(spec, 'members', ())]
        free = {}
        if members:  # its cost: what its members trained, and its evaluation
            minutes = dict(train=sum(m['minutes']['train'] for m in members),
                           evaluate=evaluated)
            free = dict(kind=spec.kind, members=[m['key'] for m in members],
                        seeds=[m['seed'] for m in members])
        else:  # training: every start of the run, a stopped one's too
            minutes = dict(train=training_minutes(osp.join(run_dir, TRAIN_DIR)),
                           evaluate=evaluated)
        record = dict(
            key=key, record_version=RECORD_VERSION, config=spec.config,
            method=spec.method, options=spec.options,
            resolved_options=dict(method_options(spec.method),
                                  **self.args.protocol[spec.config], **spec.options),
            seed=spec.seed, world_size=self.world_size, code=self.code,
            evaluation_key=scoring, train_device=self.train_device,
            device=self.args.device, settings=settings, minutes=minutes,
            **start_fields(spec.start), **free, **evaluation)
        save_record(self.args.results_dir, record)
        self.trained += 1
        self.seconds += 60 * (evaluated + (0 if members else minutes['train']))
        if members:
            self._progress(spec, f'evaluated {evaluated:.1f} min')
            return record
        if before is not None and resumed:
            done = 'evaluated again from its checkpoint'
        elif before is not None:
            done = f'trained again (no checkpoint kept) {minutes["train"]:.1f} min'
        else:
            done = f'trained {minutes["train"]:.1f} min'
        self._progress(spec, f'{done}, evaluated {minutes["evaluate"]:.1f} min')
        return record

    def _progress(self, spec: RunSpec, what: str) -> None:
        self.done += 1
        left = self.total - self.done
        eta = ''
        if self.trained and left:
            minutes = round(self.seconds / self.trained * left / self.args.jobs / 60)
            eta = (f'; {left} left, about {minutes // 60} h {minutes % 60:02d} '
                   'min if none is reused')
        print(f'[{self.done}/{self.total}] {spec.name}: {what}{eta}', flush=True)


def default_rows(args) -> List[dict]:
    """The study's rows: per base config and start (trained in full, or
    fine-tuned from --from), each method at its defaults (and the user's
    --options) on every seed."""
    return [dict(kind='default', config=config, method=method,
                 options=args.method_options.get(method, {}), seeds=args.seeds,
                 **start_fields(start))
            for config in args.configs for start in args.starts[config]
            for method in args.methods]


def seed_major(rows: List[dict]) -> List[RunSpec]:
    """The runs of ``rows``, every row's first seed before any row's second: a
    study stopped part way has every method at the same number of seeds."""
    most = max((len(row['seeds']) for row in rows), default=0)
    return [row_spec(row, row['seeds'][k])
            for k in range(most) for row in rows if k < len(row['seeds'])]


def tune(study: Study, args) -> List[dict]:
    """The tuned rows: each knob's grid on the tuning seeds, scored on the
    selection part; a choice at an end of the grid extends it one step and is
    made again; the chosen value then runs on every reported seed."""
    grids = tuning_grids(args)
    records = run_grid(study, args, grids)
    for knob_of in [k for k, grid in grids.items() if not all(
            spec.id in records for spec in all_grid_specs(args, {k: grid}))]:
        study.failures.append(f'{knob_of.config}: {knob_of.method} not tuned, a '
                              'run of its grid has no record')
        del grids[knob_of]
    extended = {}
    for knob_of, grid in grids.items():
        value = tuning.extension(tuning.KNOBS[knob_of.method], grid, tuning.choose(
            grid_scores(args, records, knob_of, grid)))
        if value is not None:
            extended[knob_of] = value
            grid.append(value)
    records.update(run_grid(study, args, {k: [v] for k, v in extended.items()}))
    rows = []
    for knob_of, grid in grids.items():
        if knob_of in extended and not all(spec.id in records for spec in grid_specs(
                args, knob_of, extended[knob_of])):
            study.failures.append(f'{knob_of.config}: {knob_of.method} not tuned, a '
                                  'run of its extended grid has no record')
            continue
        config, start, method = knob_of
        knob = tuning.KNOBS[method]
        scores = grid_scores(args, records, knob_of, grid)
        keys = {str(value): [records[spec.id]['key'] for spec in
                             grid_specs(args, knob_of, value)]
                for value in grid}
        rows.append(dict(kind='tuned', config=config, method=method,
                         options=dict(args.method_options.get(method, {}),
                                      **{knob.option: tuning.choose(scores)}),
                         seeds=args.seeds, **start_fields(start), knob=knob.option,
                         grid=grid, extended=extended.get(knob_of),
                         scores={str(v): s for v, s in scores.items()},
                         tuning_seeds=args.tuning_seeds, tuning_keys=keys))
    return rows


class TunedKnob(NamedTuple):
    """A knob tuned for one base config and start."""
    config: str
    start: Optional[finetune.Start]
    method: str


def tuning_grids(args) -> Dict[TunedKnob, List[float]]:
    """The grid of every knob the study tunes (not one the user fixed with
    --options), per base config and start."""
    return {TunedKnob(config, start, method): list(tuning.KNOBS[method].grid)
            for config in args.configs for start in args.starts[config]
            for method in tuning.tunable(args.methods)
            if tuning.KNOBS[method].option not in args.method_options.get(method, {})}


def grid_specs(args, knob_of: TunedKnob, value: float) -> List[RunSpec]:
    """The tuning runs of one grid value, one per tuning seed."""
    knob = tuning.KNOBS[knob_of.method]
    options = dict(args.method_options.get(knob_of.method, {}),
                   **{knob.option: value})
    return [RunSpec(knob_of.config, knob_of.method, options, seed, knob_of.start)
            for seed in args.tuning_seeds]


def run_grid(study: Study, args,
             grids: Dict[TunedKnob, List[float]]) -> Dict[str, dict]:
    """Train and score (test, hold-out and selection parts only) the tuning
    runs of ``grids`` (values per knob), by spec id."""
    specs = all_grid_specs(args, grids)
    return study.run_all(specs, full=False) if specs else {}


def all_grid_specs(args, grids: Dict[TunedKnob, List[float]]) -> List[RunSpec]:
    return [spec for knob_of, values in grids.items()
            for value in values for spec in grid_specs(args, knob_of, value)]


def grid_scores(args, records: Dict[str, dict], knob_of: TunedKnob,
                grid: List[float]) -> Dict[float, List[float]]:
    """Per grid value, the selection part's score of each tuning seed's run.

    Raises:
        ValueError: a run's config has no selection part.
    """
    config, method = knob_of.config, knob_of.method
    scores = {}
    for value in grid:
        runs = [records[spec.id] for spec in grid_specs(args, knob_of, value)]
        if any(tuning.SPLIT not in run for run in runs):
            raise ValueError(f'{config}: the tuning runs of {method} have no '
                             f'{tuning.SPLIT} part to score on; give '
                             '--selection-fraction')
        scores[value] = [run[tuning.SPLIT][tuning.SCORE] for run in runs]
    return scores


def write_report(args, manifest: dict) -> None:
    from cals_seg.study.report import build_report
    records = {r['key']: r for r in load_records(args.results_dir)}
    wanted = [key for row in manifest['rows'] for key in row['keys'] if key]
    wanted += [key for row in manifest['rows']
               for keys in row.get('tuning_keys', {}).values() for key in keys]
    missing = [key for key in wanted if key not in records]
    if missing:
        raise FileNotFoundError(f'{len(missing)} run record(s) of {STUDY_FILE} are '
                                f'not in {args.results_dir}, e.g. {missing[0]}')
    out_dir = osp.dirname(osp.abspath(args.out))
    figures_dir = osp.join(out_dir, 'figures')
    text, figures = build_report(manifest, records, osp.relpath(figures_dir, out_dir))
    os.makedirs(figures_dir, exist_ok=True)
    for name, data in figures.items():
        write_atomic(osp.join(figures_dir, name), data)
    write_atomic(args.out, text.encode('utf-8'))
    print(f'wrote {args.out} and {len(figures)} figure(s) in {figures_dir}')


def main(argv=None):
    args = parse_args(argv)
    if args.evaluate_run:
        import cals_seg.utils.mmengine_checkpoints  # noqa: F401
        from cals_seg.study.evaluate import evaluate_run
        evaluate_run(args.evaluate_run)
        return
    manifest_path = osp.join(args.results_dir, STUDY_FILE)
    if args.report:
        if not osp.isfile(manifest_path):
            sys.exit(f'error: {manifest_path} not found: run the study first')
        with open(manifest_path) as f:
            write_report(args, json.load(f))
        return
    study = Study(args)
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

    def with_keys(rows: List[dict]) -> List[dict]:
        """The rows with their runs' keys, None where a run has no record yet
        (failed, or not finished)."""
        return [dict(row, keys=[study.stored_key(spec) for spec in (
            free_specs(row) if row['kind'] in FREE_KINDS else
            [row_spec(row, seed) for seed in row['seeds']])]) for row in rows]

    def write_manifest() -> dict:
        """study.json as it stands."""
        manifest = dict(
            title=args.title, command=command.strip(), rows=with_keys(rows),
            posthoc=list(args.posthoc), posthoc_on=list(args.posthoc_on),
            seeds=args.seeds, tuned=args.tune,
            tuning_seeds=args.tuning_seeds if args.tune else [],
            settings=study.evaluation)
        os.makedirs(args.results_dir, exist_ok=True)
        write_atomic(manifest_path, json.dumps(manifest, indent=1).encode('utf-8'))
        return manifest

    study.on_record = write_manifest
    try:
        study.run_all(specs)
        if args.tune:
            tuned = tune(study, args)
            rows += tuned
            study.run_all(seed_major(tuned))
        if args.free_rows:
            by_key = {r['key']: r for r in study.records.values()}
            free = ensemble_rows(rows) + tta_rows(with_keys(rows), by_key)
            rows += free
            study.run_all([spec for row in free for spec in free_specs(row)])
    except ValueError as error:
        sys.exit(f'error: {error}')
    except Stopped as signal_name:
        write_manifest()
        sys.exit(f'stopped by {signal_name}: the runs in flight were stopped; the '
                 'next call resumes them from their last checkpoints')
    write_report(args, write_manifest())
    minutes = (time.time() - study.started) / 60
    print(f'{study.trained} run(s) trained, {study.done - study.trained} reused, '
          f'{minutes:.1f} min')
    if study.failures:
        sys.exit(f'error: {len(study.failures)} run(s) failed; the report marks '
                 'them and no verdict uses them:\n' + '\n'.join(study.failures))


if __name__ == '__main__':
    main()
