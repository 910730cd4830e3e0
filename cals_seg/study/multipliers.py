"""The multipliers a CALS or CRaC run learned: at the end (from its last
checkpoint) and along training (from the scalars its hook logged)."""
import json
import os
import os.path as osp

from ..utils.checkpoint import load_mmengine_checkpoint

LOGGED_PREFIX = 'cals/lambda/'  # CALSMultiplierHook's per-class scalars


def final_multipliers(checkpoint: str) -> list:
    """The decode head's loss multipliers in a checkpoint (one per class or
    group).

    Raises:
        KeyError: the checkpoint holds no decode-head multipliers.
    """
    state = load_mmengine_checkpoint(checkpoint)
    found = [v for k, v in state['state_dict'].items()
             if k.startswith('decode_head.') and k.endswith('.multipliers')]
    if not found:
        raise KeyError(f'{checkpoint} holds no decode_head multipliers')
    return found[0].tolist()


def logged_trajectory(work_dir: str) -> list:
    """``[[iteration, [multiplier per class]], ...]`` from the scalars.json of
    every attempt under ``work_dir`` (mmengine writes one timestamped folder per
    start), in iteration order; where a resumed attempt logged an iteration an
    earlier one had logged too, the later attempt's values count."""
    points = {}
    logs = []
    for root, _, files in os.walk(work_dir):
        if 'scalars.json' in files:
            logs.append(osp.join(root, 'scalars.json'))
    # Timestamped folder names sort in time order.
    for path in sorted(logs):
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                entry = json.loads(line)
                values = [v for k, v in entry.items() if k.startswith(LOGGED_PREFIX)]
                if values:
                    points[entry['iter']] = values
    return [[iteration, points[iteration]] for iteration in sorted(points)]


def multiplier_record(checkpoint: str, work_dir: str) -> dict:
    return dict(final=final_multipliers(checkpoint),
                trajectory=logged_trajectory(work_dir))
