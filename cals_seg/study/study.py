"""The study's runs, executed: each run classified (reuse, evaluate again,
train) by its keys and stored record, planned with its estimated cost, run
through the executor while the study holds its folder's lock, and recorded."""
import json
import os
import os.path as osp
import shutil
import time
from contextlib import ExitStack
from typing import Dict, List, Optional

import torch
from mmengine.config import Config

from ..evaluation.tta import tta_pipeline
from ..methods import method_options
from ..utils.io import write_atomic
from .evaluate import EVALUATION_FILE, RUN_FILE, TRAIN_DIR
from .execute import (RunJob, Scheduler, command_minutes, make_executor, run_lock,
                      visible_gpus)
from .finetune import start_fields
from .free_rows import FreeSpec, free_key
from .plan import PlannedRun, Probe, check_data, estimate, probe
from .runs import (RECORD_VERSION, RunSpec, code_version, covers, evaluation_key,
                   load_record, resolve_config, run_key, save_record,
                   training_minutes, union)


def members_of(spec) -> tuple:
    """The trained runs a free run reads; none for a run that trains."""
    return spec.members if isinstance(spec, FreeSpec) else ()


class Study:
    """Runs (or reuses) the study's runs through its executor, at most ``jobs``
    at once, printing a line per finished run with the time left."""

    def __init__(self, args, repo: str):
        self.args = args
        self.repo = repo
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
                absent = [m.name for m in members_of(spec)
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
                work[spec.name] = RunJob(run_dir, self.repo, self.world_size > 1,
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
        trained = [(members_of(spec) or (spec, ))[0] for spec in specs]
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
                    probes[spec.config] = probe(cfg, spec.config, self.repo,
                                                self.threads, self.args.device,
                                                self.args.posthoc)
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
        members = [self.records[m.id] for m in members_of(spec)]
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
