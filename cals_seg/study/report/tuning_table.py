"""The tuning table: each tuned knob's grid, its selection scores per tuning
seed and how far each value is from the chosen one, in noise units."""
from typing import Dict, List

import numpy as np

from ..statistics import differences_from
from ..tuning import KNOBS, NOISE_ERRORS, SCORE, default_value, per_seed_choices
from .rows import LABELS, RAW, number, section_of
from .verdicts import resampled


def tuning_table(manifest: dict, records: Dict[str, dict],
                  section: tuple) -> List[str]:
    """Each tuned method's grid: every value's selection score on each tuning
    seed, its paired difference from the chosen value with the standard error
    of seeds and selection images, and whether that is within noise."""
    tuned = [r for r in manifest['rows'] if section_of(r) == section and
             r['kind'] == 'tuned']
    if not tuned:
        return []
    if 'tuning_keys' not in tuned[0]:
        return first_seed_tuning_table(tuned)
    seeds = ', '.join(map(str, tuned[0]['tuning_seeds']))
    first = records[next(iter(tuned[0]['tuning_keys'].values()))[0]]
    images = first['selection_images']['images']
    lines = ['', f'Tuning: each knob\'s grid trained on tuning seed(s) {seeds}, '
             f'which no row reports, and scored by the raw model\'s {SCORE} on the '
             f'selection part of the training split ({images} images that nothing '
             'was fitted on: not the weights, not the multipliers, not a '
             'calibrator; lower is better). The lowest mean is chosen; a choice at '
             'an end of the grid extended it one step. "vs chosen": the paired '
             'difference from the chosen value ± its standard error (the tuning '
             'seeds and a bootstrap of the selection images); "noise": within '
             f'{NOISE_ERRORS:g} standard errors. The test split chose nothing.', '',
             f'| method | value | {SCORE} per tuning seed | vs chosen | reading |',
             '| --- | --- | --- | --- | --- |']
    for row in tuned:
        lines += tuning_lines(row, records)
    return lines


def first_seed_tuning_table(tuned: List[dict]) -> List[str]:
    """The table of studies made before the selection part and the tuning seeds
    (one NLL per value, of the first reported seed's run on the hold-out part),
    so that their reports still rebuild from their records."""
    lines = ['', f'Tuning: each knob\'s grid on seed {tuned[0]["tuning_seed"]}, '
             f'scored by the raw model\'s {SCORE} on the hold-out part of the '
             'training split (lower is better); the test split chose nothing.', '',
             '| method | knob | held-out NLL per value | chosen |',
             '| --- | --- | --- | --- |']
    for row in tuned:
        knob = KNOBS[row['method']]
        scores = ', '.join(f'{number(float(v))}: {s:.4f}'
                           for v, s in sorted(row['scores'].items(),
                                              key=lambda kv: float(kv[0])))
        lines.append(f'| {LABELS.get(row["method"], row["method"])} | '
                     f'{knob.option} ({knob.symbol}) | {scores} | '
                     f'{number(row["options"][knob.option])} |')
    return lines


def tuning_lines(row: dict, records: Dict[str, dict]) -> List[str]:
    knob = KNOBS[row['method']]
    grid = sorted(float(v) for v in row['scores'])
    chosen = row['options'][knob.option]
    runs = [[records[k] for k in row['tuning_keys'][str(v)]] for v in grid]
    values = np.array([[run['selection'][SCORE] for run in by_seed]
                       for by_seed in runs])  # [values, seeds]
    stored = runs[0][0]['selection_images']
    stack = np.array([[run['selection_images']['outputs'][RAW] for run in by_seed]
                      for by_seed in runs], dtype=np.float64)
    replicates = resampled(stack, (stored['num_bins'], stored['num_classes']), SCORE)
    reference = grid.index(chosen)
    difference, error = differences_from(values, reference, replicates)
    choices = per_seed_choices({v: list(values[k]) for k, v in enumerate(grid)})
    label = LABELS.get(row['method'], row['method'])
    lines = []
    for k, value in enumerate(grid):
        scores = ', '.join(f'{x:.4f}' for x in values[k])
        name = f'{knob.symbol} {number(value)}'
        if value == default_value(row['method']):
            name += ' (default)'
        if value == row.get('extended'):
            name += ' (extension)'
        if k == reference:
            stable = ('stable' if len(set(choices)) == 1 else 'not stable')
            reading = 'chosen'
            if len(choices) > 1:
                reading += (f'; each tuning seed alone: '
                            f'{", ".join(number(c) for c in choices)} ({stable})')
            if value in (grid[0], grid[-1]) and row.get('extended') is not None:
                reading += '; at the end of the extended grid'
            lines.append(f'| {label} | {name} | {scores} | – | {reading} |')
            continue
        if not np.isfinite(error[k]):
            reading = 'noise not measured'
        else:
            reading = ('noise' if abs(difference[k]) <= NOISE_ERRORS * error[k]
                       else 'worse')
        lines.append(f'| {label} | {name} | {scores} | {difference[k]:+.4f} ± '
                     f'{error[k]:.4f} | {reading} |')
    return lines
