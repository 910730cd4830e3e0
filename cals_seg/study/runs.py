"""The runs of a calibration study: what each one is, the key it is stored
under, and its stored record.

A run is one (base config, method with options, seed). Two keys say what
produced its numbers:

- the training key (:func:`run_key`, the record's name) hashes what sets the
  trained weights: the fully resolved training config (base config, the study's
  ``--cfg-options``, the method recipe and the seed), the method's full options
  (defaults filled in, so ``ls`` and ``ls smoothing=0.05`` are one run), the
  number of training processes, the checkpoint a fine-tuning run starts from
  (its bytes' hash, not its path), the training code (:func:`code_version`, Python's
  docstrings and comments left out), the versions of torch, numpy, MMEngine, MMCV
  and MMSegmentation, the device type and a fingerprint of the training and
  hold-out data (:func:`data_fingerprint`);
- the evaluation key (:func:`evaluation_key`, stored in the record) hashes what
  scores them: the evaluation code, the libraries it adds (the corruptions,
  OpenCV), the evaluation device type and the test data's fingerprint.

A stored record is reused when its training key matches, its evaluation key
matches and its evaluation covers what is asked (:func:`covers`: the
calibrators, shift passes and background); with only the training key matching,
the run is evaluated again from its kept checkpoint (trained again only where
none is kept); anything else makes a new run.
"""
import ast
import copy
import hashlib
import json
import os
import os.path as osp
import re
import subprocess
import time
import warnings
from typing import Any, Dict, List, NamedTuple, Optional

from mmengine.config import Config

from ..methods import apply_method, method_options
from ..utils.io import write_atomic
from .finetune import Start, checkpoint_digest, finetune_config, row_start

PACKAGE = osp.dirname(osp.dirname(osp.abspath(__file__)))
# Parts of the package that draw the report's figures from stored records and
# so never change a run's numbers: editing them keeps every run valid.
REPORT_ONLY = ('visualization/', )
# The study itself (plans, grids, keys, records, verdicts, the report): what runs
# and what is said of it, not the numbers of a run; but for its evaluation
# worker (EVALUATION_ONLY), which is matched first.
STUDY_ONLY = ('study/', )
# Parts that score a trained model and never change its weights: editing them
# re-evaluates the kept checkpoints.
EVALUATION_ONLY = ('evaluation/', 'calibrators/', 'functional/calibration.py',
                   'functional/image_sums.py', 'functional/conformal.py',
                   'ops/csrc/calibration_statistics.cpp', 'ops/triton/calibration.py',
                   'datasets/transforms/', 'models/segmentors/',
                   'engine/hooks/save_logits_hook.py', 'study/evaluate.py',
                   'study/multipliers.py')
CODE_SUFFIXES = ('.py', '.cpp', '.h', '.cu')
# Distributions whose versions are in the keys (those installed of each list).
TRAINING_LIBRARIES = ('torch', 'numpy', 'onedl-mmengine', 'mmengine', 'mmcv-lite',
                      'mmcv', 'onedl-mmsegmentation', 'mmsegmentation')
EVALUATION_LIBRARIES = ('imagecorruptions-imaug', 'opencv-python', 'scipy')
# Settings that say where a run writes, not what it computes.
UNKEYED = ('work_dir', 'launcher', 'resume')
RECORD_VERSION = 1


class RunSpec(NamedTuple):
    """One run of a study.

    Attributes:
        config (str): the base config file (as given, relative or absolute).
        method (str): a method recipe name (:data:`cals_seg.methods.METHODS`).
        options (dict): the method options given (not the defaults).
        seed (int): ``randomness.seed``.
        start (Start, optional): fine-tuned from this checkpoint for its
            iterations (:mod:`cals_seg.study.finetune`); None: trained in full.
    """
    config: str
    method: str
    options: Dict[str, Any]
    seed: int
    start: Optional[Start] = None

    @property
    def id(self) -> str:
        """A hashable identity (the options are a dict)."""
        return json.dumps([self.config, self.method, self.options, self.seed,
                           self.start], sort_keys=True, default=str)

    @property
    def name(self) -> str:
        """``<config stem>/<method>[_key-value...][_ft<iters>]/seed<k>``, for
        progress lines and folder names."""
        stem = osp.splitext(osp.basename(self.config))[0]
        options = ''.join(f'_{k}-{v}' for k, v in sorted(self.options.items()))
        tuned = f'_ft{self.start.iters}' if self.start else ''
        return f'{stem}/{self.method}{options}{tuned}/seed{self.seed}'


def row_spec(row: dict, seed: int) -> RunSpec:
    """The run of a study manifest's row (``config``, ``method``, ``options``,
    ``finetune``) on one seed."""
    return RunSpec(row['config'], row['method'], row['options'], seed,
                   row_start(row))


def resolve_config(spec: RunSpec, cfg_options: Optional[dict] = None,
                   protocol: Optional[dict] = None) -> Config:
    """The training config of a run: the base config with ``cfg_options``
    merged, the method recipe applied (with the study-wide ``protocol`` options,
    such as ``selection_fraction``, beside the run's own), the seed set and, for
    a fine-tuning run, its schedule shrunk to start from its checkpoint
    (:func:`cals_seg.study.finetune.finetune_config`).

    Raises:
        ValueError: from :func:`cals_seg.methods.apply_method` (unknown method
            or option, a config the recipe cannot change) or from
            :func:`~cals_seg.study.finetune.finetune_config`.
    """
    cfg = Config.fromfile(spec.config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg = apply_method(cfg, spec.method, **dict(protocol or {}, **spec.options))
    cfg.randomness = dict(cfg.get('randomness') or {}, seed=spec.seed)
    if spec.start is not None:
        finetune_config(cfg, spec.start)
    return cfg


def _canonical(value) -> Any:
    """JSON-serialisable, order-independent form of a config value."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(),
                                                         key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return f'{type(value).__module__}.{getattr(value, "__qualname__", repr(value))}'


def _normalised(path: str) -> bytes:
    """A source file as it computes: Python without its docstrings and comments
    (its syntax tree), other sources as they are."""
    with open(path, 'rb') as f:
        source = f.read()
    if not path.endswith('.py'):
        return source
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, 'body', None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                              ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree).encode('utf-8')


def code_version(package: str = PACKAGE) -> Dict[str, Any]:
    """What code a run ran: ``tree``, a hash of the training code (the package's
    sources less :data:`REPORT_ONLY`, :data:`STUDY_ONLY` and
    :data:`EVALUATION_ONLY`, docstrings and comments left out), which keys the
    training; ``evaluation``, the same of the evaluation-only sources; and, for
    the record, the package version, the git commit and whether the package's
    files differ from it."""
    from .. import __version__
    digests = dict(tree=hashlib.sha256(), evaluation=hashlib.sha256())
    for root, dirs, files in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != '__pycache__')
        for name in sorted(files):
            path = osp.join(root, name)
            relative = osp.relpath(path, package).replace(os.sep, '/')
            if not name.endswith(CODE_SUFFIXES):
                continue
            if relative.startswith(EVALUATION_ONLY):
                part = 'evaluation'
            elif relative.startswith(REPORT_ONLY + STUDY_ONLY):
                continue
            else:
                part = 'tree'
            digests[part].update(relative.encode() + b'\0' + _normalised(path) + b'\0')
    commit = dirty = None
    try:
        repo = osp.dirname(package)
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=repo,
                                capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(['git', 'status', '--porcelain', '--', package],
                                    cwd=repo, capture_output=True, text=True,
                                    check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass  # not a git checkout: the tree hash alone says what ran
    return dict(package=__version__,
                **{k: d.hexdigest()[:16] for k, d in digests.items()},
                commit=commit, dirty=dirty)


def library_versions(names) -> Dict[str, str]:
    """``{distribution: version}`` of those of ``names`` that are installed."""
    from importlib.metadata import PackageNotFoundError, version
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


_FINGERPRINTS: Dict[str, str] = {}


def data_fingerprint(dataset_cfg) -> str:
    """16 hex digits over the files a dataset config reads: each sample's image
    and label file names with their sizes, in the dataset's order (a moved data
    root keeps it; other images, labels or splits change it). Cached per config.

    Raises:
        FileNotFoundError: a file the dataset lists is missing.
    """
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS
    text = json.dumps(_canonical(dataset_cfg), sort_keys=True)
    if text not in _FINGERPRINTS:
        with DefaultScope.overwrite_default_scope('mmseg'):  # its pipeline's names
            dataset = DATASETS.build(copy.deepcopy(dataset_cfg))
        digest = hashlib.sha256()
        for index in range(len(dataset)):
            info = dataset.get_data_info(index)
            for path in (info.get('img_path'), info.get('seg_map_path')):
                if path:
                    entry = f'{osp.basename(path)}:{osp.getsize(path)}\0'
                    digest.update(entry.encode())
        _FINGERPRINTS[text] = digest.hexdigest()[:16]
    return _FINGERPRINTS[text]


def _device_type(device: str) -> str:
    return str(device).split(':')[0]


def _hash(content: dict) -> str:
    text = json.dumps(content, sort_keys=True, separators=(',', ':'))
    return hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]


def run_key(cfg: Config, spec: RunSpec, world_size: int, code: Dict[str, Any],
            device: str = 'cpu') -> str:
    """The run's training key: 16 hex digits of a hash of everything that sets
    its trained weights (see the module docstring).

    Args:
        cfg (Config): the run's resolved config (:func:`resolve_config`).
        spec (RunSpec): the run.
        world_size (int): training processes.
        code (dict): :func:`code_version`.
        device (str): where it trains ('cpu', 'cuda', 'cuda:1': the type counts).
    """
    config = {k: v for k, v in cfg.to_dict().items() if k not in UNKEYED}
    if config.get('load_from'):  # the weights it starts from, wherever they lie
        config['load_from'] = 'sha256:' + checkpoint_digest(config['load_from'])
    data = {name: data_fingerprint(cfg[name]['dataset'])
            for name in ('train_dataloader', 'holdout_dataloader') if cfg.get(name)}
    return _hash(dict(config=_canonical(config), method=spec.method,
                      options=_canonical(dict(method_options(spec.method),
                                              **spec.options)),
                      world_size=world_size, code=code['tree'],
                      libraries=library_versions(TRAINING_LIBRARIES), data=data,
                      device=_device_type(device), record_version=RECORD_VERSION))


def evaluation_key(cfg: Config, code: Dict[str, Any], device: str = 'cpu') -> str:
    """What scores a trained run: the evaluation code, every library it runs on,
    the device type and the test data (see the module docstring)."""
    return _hash(dict(code=code['evaluation'],
                      libraries=library_versions(TRAINING_LIBRARIES +
                                                 EVALUATION_LIBRARIES),
                      device=_device_type(device),
                      data=data_fingerprint(cfg.test_dataloader.dataset)))


RECORDS = 'runs'  # the records' folder in a results directory
# MMEngine's folder of one start of a run: its local start time.
ATTEMPT = re.compile(r'\d{8}_\d{6}')


def training_minutes(work_dir: str) -> float:
    """Minutes a run trained, over every start of it (a killed and resumed run has
    several): per MMEngine timestamped folder under ``work_dir``, from the local
    time its name gives to its log's last write. 0 without any."""
    seconds = 0.0
    for name in sorted(os.listdir(work_dir)) if osp.isdir(work_dir) else []:
        log = osp.join(work_dir, name, f'{name}.log')
        if ATTEMPT.fullmatch(name) and osp.isfile(log):
            started = time.mktime(time.strptime(name, '%Y%m%d_%H%M%S'))
            seconds += max(0.0, osp.getmtime(log) - started)
    return seconds / 60


def covers(done: dict, wanted: dict) -> bool:
    """Whether a record evaluated with settings ``done`` holds everything that
    settings ``wanted`` ask for: its calibrators, corruptions and severities
    (or more), the same shifted domain when one is asked for, and the same
    background classes (absent: those named background)."""
    return (set(wanted['posthoc']) <= set(done['posthoc'])
            and set(wanted['corruptions']) <= set(done['corruptions'])
            and set(wanted['severities']) <= set(done['severities'])
            and wanted['domain_root'] in (None, done['domain_root'])
            and wanted.get('background') == done.get('background'))


def union(done: dict, wanted: dict) -> dict:
    """Settings that cover both ``done`` and ``wanted`` (in their order)."""
    def merged(key):
        return list(dict.fromkeys(list(done[key]) + list(wanted[key])))
    return dict(posthoc=merged('posthoc'), corruptions=merged('corruptions'),
                severities=sorted(set(done['severities']) | set(wanted['severities'])),
                domain_root=wanted['domain_root'] or done['domain_root'],
                background=wanted.get('background'))


def record_path(results_dir: str, key: str) -> str:
    return osp.join(results_dir, RECORDS, f'{key}.json')


def load_record(results_dir: str, key: str) -> Optional[dict]:
    """The finished run stored under ``key``, or None. Records are written
    whole (atomically) and only once a run is finished, so a file that exists
    is a finished run."""
    path = record_path(results_dir, key)
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def save_record(results_dir: str, record: dict) -> str:
    path = record_path(results_dir, record['key'])
    os.makedirs(osp.dirname(path), exist_ok=True)
    text = json.dumps(record, indent=1, sort_keys=True, allow_nan=True)
    write_atomic(path, (text + '\n').encode('utf-8'))
    return path


def load_records(results_dir: str) -> List[dict]:
    """Every stored record of this :data:`RECORD_VERSION`, in key order; a
    record of another version is named in a warning and skipped (its run is
    made again when a study needs it).

    Raises:
        FileNotFoundError: ``results_dir`` does not exist.
        ValueError: a file that is not a run record, named.
    """
    folder = osp.join(results_dir, RECORDS)
    if not osp.isdir(folder):
        raise FileNotFoundError(f'no run records in {results_dir} ({folder} is '
                                'missing)')
    records = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith('.json'):
            continue
        path = osp.join(folder, name)
        with open(path) as f:
            try:
                record = json.load(f)
            except ValueError as error:
                raise ValueError(f'{path} is not JSON: {error}') from None
        if not isinstance(record, dict) or 'key' not in record:
            raise ValueError(f'{path} is not a study run record')
        if record.get('record_version') != RECORD_VERSION:
            warnings.warn(f'{path} is a run record of version '
                          f'{record.get("record_version")}, not {RECORD_VERSION}: '
                          'skipped', stacklevel=2)
            continue
        records.append(record)
    return records
