"""Fine-tuning from a trained checkpoint: every method of a study started from
the cross-entropy checkpoint a team already has, for a few iterations of the
method's loss, instead of trained from scratch.

The schedule is the base config's, shrunk: iterations, learning-rate
schedulers (warm-up included), the validation and checkpoint intervals and the
number of CALS/CRaC multiplier rounds all scale by ``iters / max_iters``, so a
fine-tuning run is the full run's protocol in miniature. The weights come from
the checkpoint (``load_from``), so no pretrained backbone is loaded.
"""
import hashlib
import os
import os.path as osp
from typing import Dict, NamedTuple, Optional, Tuple

from mmengine.config import Config

# --finetune-iters by default: this share of the base config's schedule.
DEFAULT_SHARE = 0.1
MULTIPLIER_HOOK = 'CALSMultiplierHook'


class Start(NamedTuple):
    """Where fine-tuning runs start and how long they train.

    Attributes:
        checkpoint (str): an MMEngine checkpoint of the base config's model.
        iters (int): training iterations of every fine-tuning run.
    """
    checkpoint: str
    iters: int


def default_iters(cfg: Config) -> int:
    """:data:`DEFAULT_SHARE` of ``cfg``'s iterations, at least 1.

    Raises:
        ValueError: ``cfg`` trains by epochs (no ``train_cfg.max_iters``).
    """
    return max(1, round(DEFAULT_SHARE * _max_iters(cfg)))


def _max_iters(cfg: Config) -> int:
    iters = (cfg.get('train_cfg') or {}).get('max_iters')
    if not isinstance(iters, int) or iters < 1:
        raise ValueError('fine-tuning needs an iteration-based schedule '
                         f'(train_cfg.max_iters), got train_cfg={cfg.get("train_cfg")}')
    return iters


def _scaled(value: int, ratio: float) -> int:
    return max(1, round(value * ratio))


def finetune_config(cfg: Config, start: Start) -> Config:
    """``cfg`` (a resolved training config, the method applied) as a run that
    starts from ``start.checkpoint`` and trains ``start.iters`` iterations.

    Args:
        cfg (Config): changed in place and returned.
        start (Start): the checkpoint and the iterations.

    Raises:
        ValueError: an epoch-based schedule or learning-rate scheduler, or
            ``start.iters`` < 1.
    """
    full = _max_iters(cfg)
    if not isinstance(start.iters, int) or start.iters < 1:
        raise ValueError(f'fine-tuning iterations must be an int >= 1, got '
                         f'{start.iters!r}')
    ratio = start.iters / full
    cfg.train_cfg.max_iters = start.iters
    if isinstance(cfg.train_cfg.get('val_interval'), int):
        cfg.train_cfg.val_interval = _scaled(cfg.train_cfg.val_interval, ratio)
    schedulers = cfg.get('param_scheduler') or []
    for index, scheduler in enumerate(
            [schedulers] if isinstance(schedulers, dict) else schedulers):
        if scheduler.get('by_epoch', True):
            raise ValueError(f'param_scheduler.{index} ({scheduler.get("type")}) '
                             'counts epochs: fine-tuning scales iteration-based '
                             'schedulers only (by_epoch=False)')
        begin = round(scheduler.get('begin', 0) * ratio)
        scheduler['begin'] = begin
        if 'end' in scheduler and scheduler['end'] <= full:
            scheduler['end'] = max(begin + 1, round(scheduler['end'] * ratio))
    checkpoint = (cfg.get('default_hooks') or {}).get('checkpoint') or {}
    if isinstance(checkpoint.get('interval'), int) and checkpoint['interval'] > 0:
        checkpoint['interval'] = _scaled(checkpoint['interval'], ratio)
    for hook in cfg.get('custom_hooks') or []:
        if hook.get('type') == MULTIPLIER_HOOK and hook.get('rounds'):
            hook['rounds'] = _scaled(hook['rounds'], ratio)
    cfg.load_from = start.checkpoint
    cfg.model = without_pretrained(cfg.model)
    return cfg


def without_pretrained(node):
    """A model config with no pretrained weights to load: ``pretrained`` None
    and every ``init_cfg`` of type 'Pretrained' left out."""
    if isinstance(node, dict):
        return {k: (None if k == 'pretrained' else without_pretrained(v))
                for k, v in node.items()
                if not (k == 'init_cfg' and isinstance(v, dict)
                        and v.get('type') == 'Pretrained')}
    if isinstance(node, list):
        return [without_pretrained(v) for v in node]
    return node


_DIGESTS: Dict[Tuple[str, int, int], str] = {}


def checkpoint_digest(path: str) -> str:
    """16 hex digits of the SHA-256 of a checkpoint file's bytes (what a run
    starts from, wherever the file lies), cached per path, size and mtime.

    Raises:
        FileNotFoundError: ``path`` is not a file.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} not found')
    stat = os.stat(path)
    cached = (osp.abspath(path), stat.st_size, stat.st_mtime_ns)
    if cached not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                digest.update(block)
        _DIGESTS[cached] = digest.hexdigest()[:16]
    return _DIGESTS[cached]


def start_fields(start: Optional[Start]) -> dict:
    """What a manifest row or record says of its start: nothing when trained
    in full; ``finetune`` (checkpoint, its hash, iterations) when fine-tuned."""
    if start is None:
        return {}
    return dict(finetune=dict(checkpoint=start.checkpoint, iters=start.iters,
                              sha256=checkpoint_digest(start.checkpoint)))


def row_start(row: dict) -> Optional[Start]:
    """The start of a manifest row (:func:`start_fields`)."""
    entry = row.get('finetune')
    return None if entry is None else Start(entry['checkpoint'], entry['iters'])
