"""Answers across rows: which method wins at its fair setting, and how
fine-tuned rows rank the methods against training in full."""
import os.path as osp
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .rows import COLUMNS, RAW, VERDICT_METRICS, Row, cell, distinct_rows
from .tables import column_name, paired_gain
from .verdicts import candidates_of, find_leaders, leaders_text


def fair_rows(rows: List[Row]) -> List[Row]:
    """Each trained method once, at its fair setting: the tuned row where the
    study tuned its knob, its default row otherwise (CE, SVLS, a knob the user
    fixed); and CE + TS, whose one parameter is fitted on the same hold-out
    part the knobs were chosen on."""
    tuned = {r.method for r in rows if r.tuned}
    return [r for r in rows if not r.free and (
        (r.output == RAW and (r.tuned or r.method not in tuned))
        or (r.method == 'ce' and r.output == 'ts'))]


def criteria(columns: List[str]) -> List[Tuple[str, bool, Callable, Optional[str]]]:
    """What a method can win: the in-domain verdict metrics and ECE under each
    shift, as (name, higher is better, the row's values per seed, the in-domain
    metric's key or None)."""
    criteria = [(header, higher, lambda row, key=key: row.values(key), key)
                for key, header, higher in COLUMNS if key in VERDICT_METRICS]
    for column in columns[1:]:  # after 'clean', the in-domain ECE again
        where = 'in the' if column == 'domain' else 'at'
        criteria.append((f'ECE {where} {column_name(column)}', False,
                         lambda row, column=column: row.shift(column, 'ECE'), None))
    return criteria


def fair_reading(rows: List[Row], ce: Optional[Row],
                  columns: List[str]) -> List[str]:
    """Templated answer to the study's question: which method wins at its fair
    setting, and does CALS with its held-out margin win anything."""
    fair = distinct_rows(fair_rows(rows), ce)
    with_ts = (', beside CE + TS (its temperature fitted on the same hold-out '
               'part)' if any(r.output == 'ts' for r in fair) else '')
    lines = ['', '### Which method wins at its fair setting', '',
             'Each method once, at its knob\'s held-out choice where the study '
             f'tuned it and at its default otherwise{with_ts}; rows equal to CE '
             'are left out.', '']
    standing = {}
    for name, higher, values, key in criteria(columns):
        leaders, text = find_leaders(candidates_of(fair, values, key), higher, key)
        standing[name] = leaders
        lines.append(f'- {name}: {text}.')
    cals = next((r for r in fair if r.method == 'cals' and r.output == RAW), None)
    if cals is None:
        return lines
    best = [n for n, leaders in standing.items() if leaders == [cals.label]]
    tied = [n for n, leaders in standing.items()
            if cals.label in leaders and len(leaders) > 1]
    behind = [n for n in standing if n not in best + tied]
    parts = [f'best on {", ".join(best) or "nothing"}']
    if tied:
        parts.append(f'tied for best on {", ".join(tied)}')
    if behind:
        parts.append(f'behind on {", ".join(behind)}')
    gains = [(c, paired_gain(cals, ce, c)) for c in columns] if ce else []
    gains = ', '.join(f'{column_name(c)} {cell(g)}' for c, g in gains
                      if g is not None)
    lines.append(f'- {cals.label}: {"; ".join(parts)}.' +
                 (f' ECE gained over CE, paired by seed: {gains}.' if gains else ''))
    return lines


def rank_correlation(x: List[float], y: List[float]) -> float:
    """Spearman's ρ; NaN for fewer than 3 values or a side without an order
    (every value equal)."""
    from scipy.stats import spearmanr
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float('nan')
    return float(spearmanr(x, y)[0])


def finetune_agreement(sections: Dict[tuple, List[Row]]) -> List[str]:
    """Per base config with both, how the fine-tuned rows rank the methods
    against the rows trained in full: each method at its defaults, the same
    seeds; Spearman's rank correlation of their means and each side's verdict
    per verdict metric; and what a run costs on each side."""
    lines = []
    for (config, iters, digest), tuned_rows in sections.items():
        full_rows = sections.get((config, None, None))
        if iters is None or full_rows is None:
            continue
        def by_method(rows):
            return {r.method: r for r in rows if r.output == RAW and not r.tuned
                    and not r.missing and not r.free}
        full, tuned = by_method(full_rows), by_method(tuned_rows)
        methods = [m for m in full if m in tuned]
        stem = osp.splitext(osp.basename(config))[0]
        if not lines:
            lines += ['## Fine-tuning against training in full', '']
        lines += [f'### {stem}, fine-tuned {iters} it', '',
                  f'The {len(methods)} methods at their defaults, fine-tuned from '
                  f'the checkpoint (sha256 {digest}) against trained in full. '
                  'Spearman\'s ρ: the rank correlation of the methods\' means over '
                  'seeds (1: the same order); each side\'s verdict as in its own '
                  'section.', '',
                  '| metric | Spearman ρ | in full: best or tied | fine-tuned: '
                  'best or tied |', '| --- | --- | --- | --- |']
        for key, header, higher in COLUMNS:
            if key not in VERDICT_METRICS:
                continue
            rho = rank_correlation([full[m].values(key).mean() for m in methods],
                                    [tuned[m].values(key).mean() for m in methods])
            rho_text = '–' if not np.isfinite(rho) else f'{rho:.2f}'
            lines.append(f'| {header} | {rho_text} | '
                         f'{leaders_text([full[m] for m in methods], key, higher)} | '
                         f'{leaders_text([tuned[m] for m in methods], key, higher)} |')
        cost = [np.mean([r['minutes']['train'] for m in methods
                         for r in side[m].records]) for side in (full, tuned)]
        lines += ['', f'Training per run, mean over these runs: {cost[0]:.1f} min in '
                  f'full, {cost[1]:.1f} min fine-tuned ({cost[1] / cost[0]:.2f} of '
                  'the cost; the checkpoint itself is not counted).', '']
    return lines
