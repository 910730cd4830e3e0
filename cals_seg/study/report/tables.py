"""The report's tables and the readings that go with them: in-domain,
under shift, the ECE gained over CE, and the learned multipliers."""
from typing import List, Optional

import numpy as np

from ...functional.groups import group_names
from ..statistics import ALPHA, gain_p_value
from .rows import COLUMNS, RAW, SET_COLUMNS, SHIFT_METRICS, Row, cell, equals
from .verdicts import candidates_of, find_leaders, verdict


# Points of pixel accuracy below which a calibrator kept the argmax (float
# rounding of aAcc).
ACCURACY_TOLERANCE = 1e-6


def domain_table(rows: List[Row], ce: Optional[Row], lines: List[str]) -> List[str]:
    """The in-domain table; returns the notes it needs."""
    headers = [h for _, h, _ in COLUMNS]
    lines += ['| method | seeds | ' + ' | '.join(headers) + ' | pixel acc change | '
              'train min | eval min |', '| --- ' * (len(COLUMNS) + 5) + '|']
    notes = []
    for row in rows:
        flags = []
        if ce is not None and equals(row, ce):
            flags.append('= CE')
        if row.fits_undone:
            flags.append(f'fit undone on {row.fits_undone} of {len(row.records)} '
                         'seeds')
        if row.missing:
            flags.append(f'{row.missing} of {len(row.records) + row.missing} seeds '
                         'missing: in no verdict')
        accuracy = row.accuracy_change()
        if accuracy is not None and np.any(np.abs(accuracy) > ACCURACY_TOLERANCE):
            flags.append('changes the argmax')
        label = row.label + (f' ({"; ".join(flags)})' if flags else '')
        minutes = ['' if row.output != RAW else
                   f'{np.mean([r["minutes"].get(part, 0) for r in row.records]):.1f}'
                   for part in ('train', 'evaluate')]
        seeds = (f'{len(row.records)} (one model)' if row.free == 'ensemble'
                 else len(row.records))
        lines.append(f'| {label} | {seeds} | ' +
                     ' | '.join(cell(row.shown(row.values(k))) for k, _, _ in COLUMNS)
                     + f' | {"" if accuracy is None else cell(accuracy)}'
                     f' | {" | ".join(minutes)} |')
        if flags and flags[0] == '= CE' and row.output == RAW:
            notes.append(f'{row.label} equals CE on every number and seed.')
    return notes


def column_name(column: str) -> str:
    """A shift column's name in prose and headers: 'clean', 'severity 3',
    'shifted domain'."""
    return {'clean': 'clean', 'domain': 'shifted domain'}.get(
        column, f'severity {column}')


def shift_table(rows: List[Row], columns: List[str], lines: List[str]) -> None:
    headers = [f'{h} {column_name(c)}' for _, h, _ in SHIFT_METRICS
               for c in columns]
    lines += ['| method | ' + ' | '.join(headers) + ' |',
              '| --- ' * (len(headers) + 1) + '|']
    for row in rows:
        cells = [cell(row.shown(row.shift(column, metric)))
                 for metric, _, _ in SHIFT_METRICS for column in columns]
        lines.append(f'| {row.label} | ' + ' | '.join(cells) + ' |')


def sets_table(rows: List[Row], columns: List[str], alpha: Optional[float],
               lines: List[str]) -> None:
    """Conformal sets calibrated in-domain: coverage and set size on the test
    split and under each shift; why there are none, when the records say."""
    shown = [r for r in rows if r.shift('clean', 'coverage') is not None]
    notes = sorted({r['conformal_note'] for row in rows for r in row.records
                    if r.get('conformal_note')})
    if not shown:
        if notes:
            lines += ['', '### Conformal pixel sets', ''] + [
                f'- {note[0].upper() + note[1:]}.' for note in notes]
        return
    lines += ['', '### Conformal pixel sets', '',
              f'Sets of risk {alpha:g} (target: {100 * (1 - alpha):g} % of each '
              "image's pixels covered, in expectation), calibrated by conformal "
              'risk control on the selection part of the hold-out, where no '
              'weights, multipliers or calibrators were fitted (tuned rows chose '
              'their hyper-parameters on it, which the guarantee does not count), '
              'with the image as the exchangeable unit; coverage is '
              "the mean over test images of each image's share of covered pixels. "
              'Under shift the images are no longer exchangeable with the '
              "calibration images, and the guarantee lapses: the columns say by "
              'how much.', '']
    headers = [f'{h} {column_name(c)}' for _, h in SET_COLUMNS for c in columns]
    lines += ['| method | ' + ' | '.join(headers) + ' |',
              '| --- ' * (len(headers) + 1) + '|']
    for row in shown:
        cells = [cell(row.shown(row.shift(column, key)))
                 for key, _ in SET_COLUMNS for column in columns]
        lines.append(f'| {row.label} | ' + ' | '.join(cells) + ' |')


def shift_reading(rows: List[Row], columns: List[str]) -> List[str]:
    """Templated answers: which row is best where, and does a train-time
    method beat in-domain TS once the images change."""
    lines = []
    for column in columns:
        name = {'clean': 'clean test split', 'domain': 'shifted domain'}.get(
            column, f'corruptions at severity {column} (mean over corruptions)')
        candidates = candidates_of(rows, lambda r: r.shift(column, 'ECE'),
                                 'ECE' if column == 'clean' else None)
        metric = 'ECE' if column == 'clean' else None
        lines.append(f'- ECE, {name}: {verdict(candidates, False, metric)}.')
    ts = next((r for r in rows if r.method == 'ce' and r.output == 'ts'), None)
    for column in columns:
        trained = [r for r in rows if r.output == RAW and r.method != 'ce'
                   and r.shift(column, 'ECE') is not None]
        if (column == 'clean' or ts is None or not trained
                or ts.shift(column, 'ECE') is None):
            continue
        leaders, text = find_leaders(candidates_of(trained + [ts],
                                             lambda r: r.shift(column, 'ECE')),
                                 higher=False)  # under shift: the seeds' noise
        if not leaders:
            outcome = text
        elif leaders == [ts.label]:
            outcome = 'CE + TS is best, ahead of every train-time method'
        elif ts.label in leaders:
            outcome = ('CE + TS cannot be told apart from the best train-time '
                       'methods: ' + ', '.join(l for l in leaders if l != ts.label))
        else:
            outcome = ('at least one of them beats CE + TS; not told apart from the '
                       'best: ' + ', '.join(leaders))
        where = ('In the shifted domain' if column == 'domain' else
                 f'At severity {column}')
        lines.append(f'- {where}, the train-time methods against CE + TS fitted '
                     f'in-domain ({cell(ts.shift(column, "ECE"))}), these '
                     f'{len(trained) + 1} rows compared the same way: {outcome}.')
    return lines


def paired_gain(row: Row, ce: Row, column: str) -> Optional[np.ndarray]:
    """Per seed, CE's ECE minus the row's at ``column`` (> 0: the row is
    better calibrated than CE on that seed); None unless both have every seed."""
    mine, theirs = row.shift(column, 'ECE'), ce.shift(column, 'ECE')
    if mine is None or theirs is None or [r['seed'] for r in row.records] != [
            r['seed'] for r in ce.records]:
        return None
    return theirs - mine


def survival(gain_clean: np.ndarray, gain_shifted: np.ndarray, level: float) -> str:
    """What becomes of a row's ECE advantage over CE under shift: an advantage,
    and a change of it, counts when a one-sided t-test paired by seed finds it
    at ``level``. With few seeds an advantage can be real and still not be
    found, so the words say what the test found, not what is absent."""
    def real(gain):
        return gain_p_value(gain) <= level  # NaN (one seed, no spread): False

    if not real(gain_clean):
        return 'found only under shift' if real(gain_shifted) else 'found in neither'
    if not real(gain_shifted):
        return 'not found under shift'
    change = gain_shifted - gain_clean
    if real(change):
        return 'grows'
    if real(-change):
        return 'shrinks'
    return 'holds'


def gain_table(rows: List[Row], ce: Row, columns: List[str]) -> List[str]:
    """ECE gained over CE per column, paired by seed, and what becomes of it."""
    shifted = [c for c in columns if c != 'clean']
    headers = [column_name(c) for c in columns]
    compared = [row for row in rows
                if row is not ce and paired_gain(row, ce, 'clean') is not None]
    # Per row: the clean gain, and per shift the shifted gain and its change
    # either way.
    tests = max(len(compared) * (1 + 3 * len(shifted)), 1)
    level = ALPHA / tests
    lines = ['', 'ECE gained over CE (points, CE minus the row, paired by seed: > 0 '
             'is better calibrated than CE), and what becomes of an in-domain '
             'advantage under each shift (an advantage, or a change of it, counts '
             f'when a one-sided t-test paired by seed finds it at {ALPHA:g}/{tests}, '
             f'the {tests} tests of this table; seeds only):', '',
             '| method | ' + ' | '.join(headers) + ' | ' +
             ' | '.join(f'advantage, {column_name(c)}'
                        for c in shifted) + ' |',
             '| --- ' * (1 + len(columns) + len(shifted)) + '|']
    for row in compared:
        gains = {c: paired_gain(row, ce, c) for c in columns}
        fates = [survival(gains['clean'], gains[c], level) if gains[c] is not None
                 else '–' for c in shifted]
        lines.append(f'| {row.label} | ' +
                     ' | '.join(cell(gains[c]) for c in columns) + ' | ' +
                     ' | '.join(fates) + ' |')
    return lines


def multiplier_names(row: Row) -> List[str]:
    record = row.records[0]
    classes = record.get('classes') or []
    count = len(record['multipliers']['final'])
    grouping = 'region' if row.method == 'crac' else record['resolved_options'].get(
        'groups', 'logit')
    try:
        names = group_names(grouping, classes)
    except ValueError:
        names = []
    return names if len(names) == count else [f'group {k}' for k in range(count)]


def multiplier_lines(rows: List[Row]) -> List[str]:
    lines, seen = [], set()
    for row in rows:
        if row.output != RAW or 'multipliers' not in row.records[0] or row.runs in seen:
            continue  # a tuned row that chose the default: the same runs again
        seen.add(row.runs)
        final = np.array([r['multipliers']['final'] for r in row.records])
        names = multiplier_names(row)
        lines += ['', f'{row.label}: multipliers at the end (mean over seeds):', '',
                  '| ' + ' | '.join(names) + ' |', '| --- ' * len(names) + '|',
                  '| ' + ' | '.join(f'{v:.3g}' for v in final.mean(0)) + ' |']
    return lines
