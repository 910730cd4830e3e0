"""A study's plan, before anything trains: each run with what the study does with
it (reuse its record, evaluate its checkpoint again, or train it), the data it
reads checked, and its cost estimated from a probe.

- :func:`check_data` finds what would fail after a run trained: a split whose
  data root, image list or folders are missing, an empty split, a sample that
  does not load, a shifted domain in another layout.
- :func:`probe` times a few training iterations of a base config, the
  evaluation of one test image, what each post-hoc calibrator and the conformal
  sets add to it, on this machine.
- :func:`estimate` turns a probe into minutes for one run; :func:`summary`
  prints the plan.
"""
import copy
import json
import math
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, NamedTuple, Optional, Sequence

from ..functional.conformal import minimum_images
from .finetune import without_pretrained

PROBE_ITERATIONS = 8
PROBE_WARMUP = 2  # first iterations left out (allocation, first batches)


class PlanError(ValueError):
    """The study would fail after training: the message names the run, its base
    config and the missing path."""


class CalibratorProbe(NamedTuple):
    """What a post-hoc calibrator adds to one evaluated image, in seconds;
    ``spatial``: it fits on crops, sampled in a pass of their own."""
    image_s: float
    spatial: bool


class Probe(NamedTuple):
    """Seconds one training iteration and one evaluated test image take here,
    each post-hoc calibrator's costs by short name, what measuring the
    conformal sets adds to an evaluated image, per output, and what a training
    process costs besides its iterations."""
    iteration_s: float
    image_s: float
    calibrators: Dict[str, CalibratorProbe] = {}
    sets_s: float = 0.0
    startup_s: float = 0.0  # a training's seconds besides its iterations


class PlannedRun(NamedTuple):
    """One run of the plan.

    Attributes:
        name (str): the run (:attr:`RunSpec.name`).
        key (str): its training key.
        action (str): 'reuse', 'evaluate' (again, from its checkpoint) or
            'train' (then evaluate).
        train_min (float): estimated training minutes (0 unless 'train').
        evaluate_min (float): estimated evaluation minutes (0 for 'reuse').
    """
    name: str
    key: str
    action: str
    train_min: float
    evaluate_min: float


def _leaf_paths(dataset: dict) -> List[str]:
    """The files and folders a dataset config reads: data root, image list
    and data folders (those it names)."""
    from ..utils.data_check import leaf_datasets
    paths = []
    for leaf in leaf_datasets(dataset):
        root = leaf.get('data_root') or ''
        paths.append(root)
        if leaf.get('ann_file'):
            paths.append(osp.join(root, leaf['ann_file']))
        for folder in (leaf.get('data_prefix') or {}).values():
            if folder:
                paths.append(osp.join(root, folder))
    return [p for p in paths if p]


def check_data(cfg, run: str, domain_root: Optional[str] = None) -> Dict[str, int]:
    """Check every split a run reads and return its number of images (before
    its key, which fingerprints the data).

    Args:
        cfg (Config): the run's resolved config.
        run (str): the run and its base config, for the messages.
        domain_root (str, optional): a shifted domain, in the test split's layout.

    Returns:
        dict: images per split ('test', 'train', 'holdout', 'selection' where
        the config has it, 'domain' with ``domain_root``).

    Raises:
        PlanError: a missing path, an empty split, or a sample that fails to load.
    """
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    from ..evaluation.shift import shift_loader
    from ..evaluation.split_report import split_loaders
    init_default_scope('mmseg')
    loaders = {k: v for k, v in split_loaders(cfg).items() if v is not None}
    if domain_root:
        loaders['domain'] = shift_loader(cfg, data_root=domain_root)
    counts = {}
    for split, loader in loaders.items():
        where = f'{run}, {split} split'
        missing = [p for p in _leaf_paths(loader['dataset']) if not osp.exists(p)]
        if missing:
            raise PlanError(f'{where}: {missing[0]} does not exist')
        try:
            dataset = Runner.build_dataloader(copy.deepcopy(loader)).dataset
            if len(dataset) == 0:
                raise PlanError(f'{where}: no images')
            dataset[0]
        except PlanError:
            raise
        except Exception as error:  # named with the split it came from
            raise PlanError(f'{where}: {type(error).__name__}: {error}') from error
        counts[split] = len(dataset)
    return counts


def probe(cfg, name: str, repo: str, threads: Optional[int], device: str,
          posthoc: Sequence[str] = ()) -> Probe:
    """Time :data:`PROBE_ITERATIONS` training iterations of ``cfg`` (its own
    process, ``tools/train.py``, as a run trains), one test image's
    evaluation and each ``posthoc`` calibrator (:func:`probe_calibrators`),
    from random weights: the cost does not depend on them, and pretrained ones
    may have to be downloaded.

    Args:
        cfg (Config): a resolved training config (the base config's CE run).
        name (str): the base config, for the messages.
        repo (str): the repository whose tools/train.py runs.
        threads (int, optional): OMP threads, as the study gives each run.
        device (str): where the image is evaluated.
        posthoc (sequence[str]): short names of the calibrators to time.
    """
    import torch
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    from mmseg.apis import init_model
    from ..evaluation.split_report import (evaluate_split, prediction_head,
                                           split_loaders)
    short = copy.deepcopy(cfg)
    short.train_cfg.max_iters = PROBE_ITERATIONS
    short.train_cfg.val_interval = PROBE_ITERATIONS + 1
    # No validation (mmengine validates after the last iteration otherwise), and
    # each iteration's own time logged, not a mean over a window.
    short.val_cfg = short.val_dataloader = short.val_evaluator = None
    short.log_processor = dict(short.get('log_processor') or {}, window_size=1)
    short.default_hooks.logger.interval = 1
    short.default_hooks.checkpoint = dict(type='CheckpointHook', interval=-1,
                                          save_last=False)
    short.custom_hooks = []  # the multipliers' rounds are estimated apart
    short.load_from = None
    short.model = without_pretrained(short.model)
    with tempfile.TemporaryDirectory() as work_dir:
        config = osp.join(work_dir, 'probe.py')
        short.dump(config)
        env = dict(os.environ, PYTHONPATH=repo + os.pathsep +
                   os.environ.get('PYTHONPATH', ''))
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        start = time.perf_counter()
        result = subprocess.run([sys.executable, osp.join(repo, 'tools', 'train.py'),
                                 config, '--work-dir', work_dir], env=env,
                                capture_output=True, text=True)
        wall_s = time.perf_counter() - start
        if result.returncode != 0:
            raise PlanError(f'the probe of {name} failed:\n'
                            f'{result.stderr[-2000:]}')
        times = [entry['time'] for entry in _scalars(work_dir) if 'time' in entry]
    if len(times) <= PROBE_WARMUP:
        raise PlanError(f'the probe of {name} logged no iteration times')
    iteration_s = statistics.median(times[PROBE_WARMUP:])
    # What a training costs besides its iterations: the process, the model and
    # the loaders built, a checkpoint written (a short fine-tuning is mostly this).
    startup_s = max(wall_s - sum(times), 0.0)
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        init_default_scope('mmseg')
        model = init_model(cfg, None, device=device)
        head = prediction_head(model)
        loader = Runner.build_dataloader(split_loaders(cfg)['test'])
        batch = [next(iter(loader))]
        evaluate_split(model, batch, head.num_classes)  # warm-up
        start = time.perf_counter()
        evaluate_split(model, batch, head.num_classes)
        image_s = time.perf_counter() - start
        calibrators = probe_calibrators(model, loader, head, posthoc, image_s)
        sets_s = probe_sets(model, loader, head, batch)
    except Exception as error:  # named with the config it came from
        raise PlanError(f'the probe of {name} failed to evaluate an image on '
                        f'{device}: {type(error).__name__}: {error}') from error
    finally:
        torch.set_num_threads(threads_before)
    return Probe(iteration_s, image_s, calibrators, sets_s, startup_s)


def probe_sets(model, loader, head, batch: list) -> float:
    """Seconds the conformal sets of the raw output add to the evaluation of
    the image in ``batch``: sets calibrated, for timing only, on the first
    images of ``loader`` repeated to the fewest the study's risk needs."""
    from torch.utils.data import DataLoader, Subset
    from ..evaluation.split_report import calibrate_sets, evaluate_split
    from .evaluate import CONFORMAL_ALPHA
    count = len(loader.dataset)
    repeated = DataLoader(
        Subset(loader.dataset, [i % count for i in range(minimum_images(
            CONFORMAL_ALPHA))]), batch_size=1, collate_fn=loader.collate_fn)
    ignore_index = getattr(head, 'ignore_index', 255)
    sets = calibrate_sets(model, repeated, None, head.num_classes, CONFORMAL_ALPHA,
                          ignore_index)
    times = {}
    for with_sets in (True, False, True, False):  # the second of each counts
        start = time.perf_counter()
        evaluate_split(model, batch, head.num_classes, ignore_index=ignore_index,
                       sets=sets if with_sets else None)
        times[with_sets] = time.perf_counter() - start
    return max(times[True] - times[False], 0.0)


def probe_calibrators(model, loader, head, names: Sequence[str],
                      image_s: float) -> Dict[str, CalibratorProbe]:
    """What each calibrator adds to the evaluation of the first image of
    ``loader``, timed on the identity (applying one costs the same fitted or
    not). Fits are not timed: their iterations' fixed overheads dominate on
    small hold-out parts, so two images tell little of a run's, and a probe
    that fitted each calibrator would take minutes before every study.

    Args:
        model: the segmentor.
        loader (DataLoader): the test split's.
        head: its prediction head (``num_classes``, ``ignore_index``).
        names (sequence[str]): calibrators' short names.
        image_s (float): one image's evaluation without calibrators.
    """
    from ..calibrators import SHORT_NAMES
    from ..evaluation.split_report import evaluate_split
    first = [next(iter(loader))]
    found = {}
    for name in names:
        calibrator = SHORT_NAMES[name](head.num_classes).to(
            next(model.parameters()).device)
        calibrator.identity()
        calibrator.eval()
        times = []
        for _ in range(2):  # the first call warms the calibrator up
            start = time.perf_counter()
            evaluate_split(model, first, head.num_classes, {name: calibrator},
                           ignore_index=getattr(head, 'ignore_index', 255))
            times.append(time.perf_counter() - start)
        found[name] = CalibratorProbe(max(times[-1] - image_s, 0.0), calibrator.spatial)
    return found


def _scalars(work_dir: str) -> List[dict]:
    entries = []
    for root, _, files in os.walk(work_dir):
        if 'scalars.json' in files:
            with open(osp.join(root, 'scalars.json')) as f:
                entries += [json.loads(line) for line in f if line.strip()]
    return entries


def estimate(cfg, found: Probe, images: Dict[str, int], settings: dict) -> tuple:
    """Estimated (training, evaluation) minutes of one run.

    Training: the probe's process cost besides its iterations, and its
    iteration time times the schedule's iterations, plus a multiplier hook's
    hold-out rounds (each a pass over the hold-out images).
    Evaluation: one image's time times the images the run's evaluation reads:
    the test split, hold-out and selection parts, every corrupted pass and the
    shifted domain, with the hold-out part once more when calibrators are fitted;
    the selection part once more for the conformal sets (where it holds
    enough images); per calibrator, what it adds to each image it is applied
    to (the test split, the sets' pass, every corrupted pass and the shifted
    domain: an upper bound for the sets' pass, which computes no statistics);
    and, where sets are calibrated, their measurement on every output of the
    test split, corrupted passes and shifted domain. The calibrators' fits are
    left out (:func:`probe_calibrators`).
    """
    iterations = cfg.train_cfg.max_iters
    train_s = found.startup_s + found.iteration_s * iterations
    for hook in cfg.get('custom_hooks') or []:
        if hook.get('type') == 'CALSMultiplierHook' and hook.get('source') == 'holdout':
            interval = hook.get('interval')
            rounds = (min(hook['rounds'], iterations) if hook.get('rounds')
                      else iterations // interval if isinstance(interval, int)
                      else 0)  # 'epoch': not known before the data is read
            train_s += rounds * images.get('holdout', 0) * found.image_s
    from .evaluate import CONFORMAL_ALPHA  # the evaluation stack: imported late
    holdout, selection = images.get('holdout', 0), images.get('selection', 0)
    # The conformal sets every run reports are calibrated on the selection
    # part, when it holds enough images.
    sets = selection if selection >= minimum_images(CONFORMAL_ALPHA) else 0
    # Images each calibrator is applied to: the test split, the sets' pass, every
    # corrupted pass and the shifted domain.
    calibrated = (images['test'] + sets
                  + images['test'] * len(settings['corruptions'])
                  * len(settings['severities']) + images.get('domain', 0))
    # Raw passes: those, and the hold-out and selection parts' own numbers.
    passes = calibrated + holdout + selection
    evaluate_s = 0.0
    costs = [found.calibrators[name] for name in settings['posthoc']
             if name in found.calibrators]
    # The hold-out part is read once for the pixels the pixel-wise calibrators
    # fit on, and once for the spatial ones' crops.
    kinds = {cost.spatial for cost in costs} or ({False} if settings['posthoc']
                                                   else set())
    passes += holdout * len(kinds)
    # Sets measured for the raw output and each calibrator's on the test split,
    # every corrupted pass and the shifted domain.
    if sets:
        evaluate_s += found.sets_s * (1 + len(costs)) * (calibrated - sets)
    evaluate_s += sum(cost.image_s for cost in costs) * calibrated
    return train_s / 60, (passes * found.image_s + evaluate_s) / 60


def summary(runs: Sequence[PlannedRun], jobs: int, device: str) -> List[str]:
    """The plan in lines: one per run, then the totals and the wall time with
    ``jobs`` runs at once ('-' and no totals where runs were not estimated:
    they run on SLURM nodes, which a probe here would not time)."""
    def cell(minutes: float, width: int) -> str:
        return f'{"-":>{width}}' if math.isnan(minutes) else f'{minutes:{width}.1f}'

    lines = [f'{"run":<70} {"action":<9} {"train min":>9} {"eval min":>8}']
    for run in runs:
        lines.append(f'{run.name:<70} {run.action:<9} {cell(run.train_min, 9)} '
                     f'{cell(run.evaluate_min, 8)}')
    counts = {a: sum(r.action == a for r in runs) for a in ('train', 'evaluate',
                                                            'reuse')}
    line = (f'plan: {counts["train"]} to train, {counts["evaluate"]} to evaluate '
            f'again, {counts["reuse"]} to reuse')
    train = sum(r.train_min for r in runs)
    evaluate = sum(r.evaluate_min for r in runs)
    if math.isnan(train + evaluate):
        lines.append(line + '; not estimated: the runs go to SLURM nodes')
    else:
        lines.append(f'{line}; estimated {train:.0f} min of training and '
                     f'{evaluate:.0f} min of evaluation on {device}, about '
                     f'{(train + evaluate) / jobs:.0f} min with {jobs} at once')
    return lines
