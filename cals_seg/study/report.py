"""The study's report, from its manifest (``study.json``) and run records alone.

Deterministic: the same records give the same bytes of markdown. Every number
in it, the prose included, is computed here from the records; nothing is typed
in by hand. Every verdict is :func:`cals_seg.study.statistics.compare_with_best`
over the rows compared, paired by seed: a "best" beats every other row at
``ALPHA / k``; otherwise the report names the rows that tie. Rows whose every
number equals cross-entropy's on every seed are flagged (SVLS on data with an
ignore ring; a post-hoc fit undone on every seed).
"""
import os.path as osp
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..functional.groups import group_names
from ..visualization.reliability import bins_grid
from ..visualization.shift import severity_figure
from ..functional.image_sums import METRICS as IMAGE_METRICS
from ..functional.image_sums import bootstrap_weights, metrics_from_sums
from .statistics import (ALPHA, compare_with_best, describe_test, differences_from,
                         gain_p_value)
from .tuning import KNOBS, NOISE_ERRORS, SCORE, default_value, per_seed_choices

RAW = 'raw'
LABELS = dict(ce='CE', ls='LS', fl='FL', mbls='MbLS', ecp='ECP', nacl='NACL',
              svls='SVLS', cals='CALS', crac='CRaC')
CALIBRATOR_LABELS = dict(ts='TS', cts='class TS', vs='VS', dirichlet='Dirichlet',
                         lts='LTS', selective='selective')
# In-domain columns: (record key, header, higher is better).
COLUMNS = (('mIoU', 'mIoU', True), ('ECE', 'ECE', False),
           ('ECE_image', 'ECE per image', False), ('fg/ECE', 'fg ECE', False),
           ('ECE_boundary', 'boundary ECE', False), ('NLL', 'NLL', False),
           ('Brier', 'Brier', False), ('AURC', 'AURC', False))
VERDICT_METRICS = ('mIoU', 'ECE', 'fg/ECE', 'NLL')
SHIFT_METRICS = (('ECE', 'ECE', False), ('mIoU', 'mIoU', True))
# Relative: an undone Dirichlet fit (the identity on log-probabilities) gives
# CE's numbers to float rounding, not bit for bit.
EQUAL_TOLERANCE = 1e-6
# Image resamples per verdict: enough for the variance of a difference to a few %.
RESAMPLES = 1000
FREE_ROWS = ('Rows that trained nothing of their own, from the kept checkpoints: '
             'an ensemble averages its seeds\' probabilities (one model: in a '
             'verdict its value stands on each of its seeds, so a row is compared '
             'with it seed by seed); TTA averages each seed\'s model over flips '
             '(and scales, where the config has a tta_pipeline). Their training '
             'minutes are their members\'.')
ONE_SEED = ('One seed per row: no "best" is claimed, since a claim needs the '
            'spread over seeds.')


class Row(NamedTuple):
    """One line of a table: a label and, per seed, the numbers it shows."""
    label: str
    method: str
    output: str  # 'raw' or a calibrator's short name
    records: List[dict]
    corruptions: Tuple[str, ...] = ()  # the study's, for the shift columns
    tuned: bool = False
    fits_undone: int = 0
    missing: int = 0  # seeds whose run failed or is not finished: no verdict
    free: str = ''  # 'ensemble' (one model: its record on each member seed), 'tta'

    def cost(self) -> float:
        """Minutes to train and evaluate the row (an ensemble: all its members'
        training), the mean over its seeds."""
        return float(np.mean([r['minutes']['train'] + r['minutes'].get('evaluate', 0)
                              for r in self.records]))

    def shown(self, values: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """What a cell shows of per-seed values: one value for an ensemble."""
        return values[:1] if values is not None and self.free == 'ensemble' \
            else values

    @property
    def runs(self) -> Tuple[Tuple[str, ...], str]:
        """What the row shows: its runs' keys and the output read from them."""
        return tuple(r['key'] for r in self.records), self.output

    def test(self) -> List[dict]:
        return [r['test'][self.output] for r in self.records]

    @property
    def seeds(self) -> Tuple[int, ...]:
        return tuple(r['seed'] for r in self.records)

    def values(self, metric: str) -> np.ndarray:
        return np.array([t[metric] for t in self.test()], dtype=float)

    def image_sums(self) -> Tuple[Optional[np.ndarray], Tuple[int, int]]:
        """``(seeds, images, K)`` each test image's sums of the verdict metrics
        (raw's where this output's fit was undone on a seed) and (bins,
        classes); None where a record holds none (records made before them)."""
        sums = []
        for record in self.records:
            stored = record.get('test_images')
            if stored is None:
                return None, (0, 0)
            output = self.output if self.output in stored['outputs'] else RAW
            if output != self.output and record['fits'][self.output]['kept']:
                return None, (0, 0)  # a kept fit without its sums
            sums.append(stored['outputs'][output])
        shape = (stored['num_bins'], stored['num_classes'])
        return np.asarray(sums, dtype=np.float64), shape

    def shift(self, column: str, metric: str) -> Optional[np.ndarray]:
        """Per seed, ``metric`` at ``column``: 'clean', a severity ('3': the
        mean over the study's corruptions) or 'domain'; None when a record
        lacks any of it (a record may hold more than the study asked for)."""
        values = []
        for record in self.records:
            if column == 'clean':
                cells = [record['test'].get(self.output)]
            elif column == 'domain':
                cells = [(record.get('domain') or {}).get(self.output)]
            else:
                by_corruption = record.get('shift') or {}
                cells = [by_corruption.get(c, {}).get(column, {}).get(self.output)
                         for c in self.corruptions] or [None]
            if any(cell is None for cell in cells):
                return None
            values.append(float(np.mean([cell[metric] for cell in cells])))
        return np.array(values, dtype=float)


def _spread(values: np.ndarray) -> float:
    """Sample standard deviation over seeds (NaN with one seed)."""
    return float(np.std(values, ddof=1)) if values.size > 1 else float('nan')


def _cell(values: Optional[np.ndarray]) -> str:
    if values is None:
        return '–'
    if values.size == 1:
        return f'{values[0]:.2f}'
    return f'{values.mean():.2f} ± {_spread(values):.2f}'


def _number(value) -> str:
    return f'{value:g}'


def _options_text(options: dict) -> str:
    return ', '.join(f'{k} {_number(v) if isinstance(v, float) else v}'
                     for k, v in sorted(options.items()))


def _row_label(row: dict) -> str:
    label = LABELS.get(row['method'], row['method'])
    knob = KNOBS.get(row['method'])
    shown = dict(row['options'])
    if knob is not None:
        value = (row['records'][0]['resolved_options'][knob.option]
                 if row['records'] else shown.get(knob.option, default_value(row['method'])))
        shown.pop(knob.option, None)
        label += f' {knob.symbol} {_number(value)}'
    if shown:
        label += f' ({_options_text(shown)})'
    if row['kind'] == 'tuned':
        chose_default = (knob is not None and
                         row['options'][knob.option] == default_value(row['method']))
        label += ', tuned (chose the default)' if chose_default else ', tuned'
    if row.get('finetune'):
        label += f', fine-tuned {row["finetune"]["iters"]} it'
    return label


def _section(row: dict) -> Tuple[str, Optional[int], Optional[str]]:
    """The part of the report a manifest row belongs to: its base config and,
    for fine-tuned rows, their iterations and starting checkpoint."""
    start = row.get('finetune') or {}
    return row['config'], start.get('iters'), start.get('sha256')


def _settings(manifest: dict, records: Dict[str, dict]) -> dict:
    """What the study asked its runs to be evaluated on (a manifest written
    before the study stored it: its first run's settings)."""
    if 'settings' in manifest:
        return manifest['settings']
    return records[manifest['rows'][0]['keys'][0]]['settings']


def _rows(manifest: dict, records: Dict[str, dict],
          section: tuple) -> Tuple[List[Row], List[str]]:
    """The table rows of one section (:func:`_section`): trained rows
    (defaults, then tuned) and post-hoc rows after their method's default
    row; and the labels of rows without any finished run (a key of None: its
    run failed or has not finished), which no table shows."""
    corruptions = tuple(_settings(manifest, records)['corruptions'])
    rows, absent = [], []
    for entry in manifest['rows']:
        if _section(entry) != section:
            continue
        entry = dict(entry, records=[records[k] for k in entry['keys']
                                     if k is not None])
        label = _row_label(entry)
        missing = len(entry['keys']) - len(entry['records'])
        if not entry['records']:
            absent.append(label)
            continue
        if entry['kind'] == 'ensemble':
            (record, ) = entry['records']
            rows.append(Row(f'{label}, ensemble of {len(record["seeds"])} seeds',
                            entry['method'], RAW,
                            [dict(record, seed=seed) for seed in record['seeds']],
                            corruptions, free='ensemble'))
            continue
        if entry['kind'] == 'tta':
            rows.append(Row(f'{label} + {entry["records"][0]["tta"]} TTA',
                            entry['method'], RAW, entry['records'], corruptions,
                            missing=missing, free='tta'))
            continue
        tuned = entry['kind'] == 'tuned'
        rows.append(Row(label, entry['method'], RAW, entry['records'],
                        corruptions, tuned, missing=missing))
        if tuned or entry['method'] not in manifest['posthoc_on']:
            continue
        for name in manifest['posthoc']:
            fits = [r['fits'][name] for r in entry['records']]
            undone = sum(not f['kept'] for f in fits)
            rows.append(Row(f'{label} + {CALIBRATOR_LABELS.get(name, name)}',
                            entry['method'], name, entry['records'], corruptions,
                            fits_undone=undone, missing=missing))
    trained = [r for r in rows if r.output == RAW and not r.tuned and not r.free]
    return (trained + [r for r in rows if r.output != RAW] +
            [r for r in rows if r.free] + [r for r in rows if r.tuned]), absent


def _equals(row: Row, reference: Row) -> bool:
    """Every shown number of ``row`` equals ``reference``'s, seed by seed."""
    if row is reference or len(row.records) != len(reference.records):
        return False
    seeds = [r['seed'] for r in row.records]
    if seeds != [r['seed'] for r in reference.records]:
        return False
    for mine, theirs in zip(row.test(), reference.test()):
        for key, _, _ in COLUMNS:
            if abs(mine[key] - theirs[key]) > EQUAL_TOLERANCE * max(1, abs(theirs[key])):
                return False
    return True


def _distinct(rows: List[Row], ce: Optional[Row]) -> List[Row]:
    """The rows that say something of their own, each set of pixels once, and
    whole: not equal to CE, not a tuned row that chose its method's default
    (the same runs again), not a post-hoc fit undone on every seed (its
    method's row again), not a row with seeds missing."""
    seen, distinct = set(), []
    for row in rows:
        if (row.runs in seen or (ce is not None and _equals(row, ce)) or row.missing
                or (row.output != RAW and row.fits_undone == len(row.records))):
            continue
        seen.add(row.runs)
        distinct.append(row)
    return distinct


class Candidate(NamedTuple):
    """A row in a verdict: its label, seeds, value on each seed and, where its
    records hold them, each test image's sums of the metric (``(seeds, images,
    K)``, :mod:`cals_seg.functional.image_sums`) with their bins and classes."""
    label: str
    seeds: Tuple[int, ...]
    values: np.ndarray
    image_sums: Optional[np.ndarray] = None
    shape: Tuple[int, int] = (0, 0)
    one_model: bool = False  # an ensemble: the same value on every seed


def _replicates(candidates: Sequence[Candidate], seeds: List[int],
                metric: str) -> Optional[np.ndarray]:
    """``(RESAMPLES, rows, seeds)``: the metric on resamples of the test images,
    one resample for every row and seed; None unless every candidate has its
    images' sums for the same images, bins and classes."""
    if metric not in IMAGE_METRICS or any(c.image_sums is None for c in candidates):
        return None
    if len({(c.image_sums.shape[1:], c.shape) for c in candidates}) != 1:
        return None
    stack = np.stack([c.image_sums[[c.seeds.index(s) for s in seeds]]
                      for c in candidates])  # [rows, seeds, images, K]
    return _resampled(stack, candidates[0].shape, metric)


def _resampled(stack: np.ndarray, shape: Tuple[int, int], metric: str) -> np.ndarray:
    """``(RESAMPLES, rows, seeds)``: ``metric`` on resamples of the images of
    ``stack`` (``[rows, seeds, images, K]`` per-image sums, the same images in
    every row and seed), one resample shared by every row and seed."""
    weights = bootstrap_weights(stack.shape[2], RESAMPLES)
    summed = np.einsum('bi,rsik->brsk', weights, stack)
    return metrics_from_sums(summed, *shape)[metric]


def _leaders(candidates: Sequence[Candidate], higher: bool,
             metric: Optional[str] = None) -> Tuple[List[str], str]:
    """The labels in front and the sentence saying so, from
    :func:`compare_with_best` over the candidates, paired on the seeds they all
    have and, for an in-domain ``metric`` whose records hold per-image sums, on
    resamples of the test images: one label when the best mean beats every
    other row, else the rows that tie with it (none when nothing can be
    tested). A verdict that counts the seeds' noise alone says so."""
    if not candidates:
        return [], 'no rows to compare: no claim'
    seeds = sorted(set.intersection(*(set(c.seeds) for c in candidates)))
    cells = {c.label: _cell(c.values[:1] if c.one_model else c.values)
             for c in candidates}
    table = np.array([[dict(zip(c.seeds, c.values))[seed] for seed in seeds]
                      for c in candidates]).reshape(len(candidates), len(seeds))
    replicates = _replicates(candidates, seeds, metric)
    found = compare_with_best([c.label for c in candidates], table, higher,
                              replicates)
    notes = list(found.notes)
    if not all(len(c.seeds) == len(seeds) for c in candidates):
        notes.append(f'paired on the seeds all rows have: {", ".join(map(str, seeds))}')
    if replicates is None and found.kind in ('best', 'tie'):
        notes.append('seeds only')
    if found.kind == 'best':
        hardest = max(found.comparisons, key=lambda c: c.p_value)
        return found.leaders, '; '.join([
            f'best {found.best} ({cells[found.best]}), ahead of every other row; the '
            f'hardest to beat, {hardest.label} ({cells[hardest.label]}), by '
            f'{hardest.difference:.2f} (paired p = {hardest.p_value:.2g} <= '
            f'{found.level:.2g})'] + notes)
    if found.kind == 'tie':
        named = ', '.join(f'{label} ({cells[label]})' for label in found.leaders)
        return found.leaders, '; '.join(
            [f'tie, not told apart from the best mean: {named}'] + notes)
    return found.leaders, '; '.join([found.sentence] + notes[len(found.notes):])


def verdict(candidates: Sequence[Candidate], higher: bool,
            metric: Optional[str] = None) -> str:
    """The sentence of :func:`_leaders`: 'best ...', 'tie ...' or why no claim."""
    return _leaders(candidates, higher, metric)[1]


def _candidates(rows: Sequence['Row'], values: Callable,
                metric: Optional[str] = None) -> List[Candidate]:
    """The rows where ``values`` is not None; with an in-domain ``metric``, their
    images' sums too."""
    found = []
    for row in rows:
        v = values(row)
        if v is None:
            continue
        sums, shape = row.image_sums() if metric in IMAGE_METRICS else (None, (0, 0))
        found.append(Candidate(row.label, row.seeds, v, sums, shape,
                               row.free == 'ensemble'))
    return found


def _domain_table(rows: List[Row], ce: Optional[Row], lines: List[str]) -> List[str]:
    """The in-domain table; returns the notes it needs."""
    headers = [h for _, h, _ in COLUMNS]
    lines += ['| method | seeds | ' + ' | '.join(headers) + ' | train min | '
              'eval min |', '| --- ' * (len(COLUMNS) + 4) + '|']
    notes = []
    for row in rows:
        flags = []
        if ce is not None and _equals(row, ce):
            flags.append('= CE')
        if row.fits_undone:
            flags.append(f'fit undone on {row.fits_undone} of {len(row.records)} '
                         'seeds')
        if row.missing:
            flags.append(f'{row.missing} of {len(row.records) + row.missing} seeds '
                         'missing: in no verdict')
        label = row.label + (f' ({"; ".join(flags)})' if flags else '')
        minutes = ['' if row.output != RAW else
                   f'{np.mean([r["minutes"].get(part, 0) for r in row.records]):.1f}'
                   for part in ('train', 'evaluate')]
        seeds = (f'{len(row.records)} (one model)' if row.free == 'ensemble'
                 else len(row.records))
        lines.append(f'| {label} | {seeds} | ' +
                     ' | '.join(_cell(row.shown(row.values(k))) for k, _, _ in COLUMNS)
                     + f' | {" | ".join(minutes)} |')
        if flags and flags[0] == '= CE' and row.output == RAW:
            notes.append(f'{row.label} equals CE on every number and seed.')
    return notes


def _column_name(column: str) -> str:
    """A shift column's name in prose and headers: 'clean', 'severity 3',
    'shifted domain'."""
    return {'clean': 'clean', 'domain': 'shifted domain'}.get(
        column, f'severity {column}')


def _shift_table(rows: List[Row], columns: List[str], lines: List[str]) -> None:
    headers = [f'{h} {_column_name(c)}' for _, h, _ in SHIFT_METRICS
               for c in columns]
    lines += ['| method | ' + ' | '.join(headers) + ' |',
              '| --- ' * (len(headers) + 1) + '|']
    for row in rows:
        cells = [_cell(row.shown(row.shift(column, metric)))
                 for metric, _, _ in SHIFT_METRICS for column in columns]
        lines.append(f'| {row.label} | ' + ' | '.join(cells) + ' |')


def _shift_reading(rows: List[Row], columns: List[str]) -> List[str]:
    """Templated answers: which row is best where, and does a train-time
    method beat in-domain TS once the images change."""
    lines = []
    for column in columns:
        name = {'clean': 'clean test split', 'domain': 'shifted domain'}.get(
            column, f'corruptions at severity {column} (mean over corruptions)')
        candidates = _candidates(rows, lambda r: r.shift(column, 'ECE'),
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
        leaders, text = _leaders(_candidates(trained + [ts],
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
                     f'in-domain ({_cell(ts.shift(column, "ECE"))}), these '
                     f'{len(trained) + 1} rows compared the same way: {outcome}.')
    return lines


def _paired_gain(row: Row, ce: Row, column: str) -> Optional[np.ndarray]:
    """Per seed, CE's ECE minus the row's at ``column`` (> 0: the row is
    better calibrated than CE on that seed); None unless both have every seed."""
    mine, theirs = row.shift(column, 'ECE'), ce.shift(column, 'ECE')
    if mine is None or theirs is None or [r['seed'] for r in row.records] != [
            r['seed'] for r in ce.records]:
        return None
    return theirs - mine


def _survival(gain_clean: np.ndarray, gain_shifted: np.ndarray, level: float) -> str:
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


def _gain_table(rows: List[Row], ce: Row, columns: List[str]) -> List[str]:
    """ECE gained over CE per column, paired by seed, and what becomes of it."""
    shifted = [c for c in columns if c != 'clean']
    headers = [_column_name(c) for c in columns]
    compared = [row for row in rows
                if row is not ce and _paired_gain(row, ce, 'clean') is not None]
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
             ' | '.join(f'advantage, {_column_name(c)}'
                        for c in shifted) + ' |',
             '| --- ' * (1 + len(columns) + len(shifted)) + '|']
    for row in compared:
        gains = {c: _paired_gain(row, ce, c) for c in columns}
        fates = [_survival(gains['clean'], gains[c], level) if gains[c] is not None
                 else '–' for c in shifted]
        lines.append(f'| {row.label} | ' +
                     ' | '.join(_cell(gains[c]) for c in columns) + ' | ' +
                     ' | '.join(fates) + ' |')
    return lines


def _fair_rows(rows: List[Row]) -> List[Row]:
    """Each trained method once, at its fair setting: the tuned row where the
    study tuned its knob, its default row otherwise (CE, SVLS, a knob the user
    fixed); and CE + TS, whose one parameter is fitted on the same hold-out
    part the knobs were chosen on."""
    tuned = {r.method for r in rows if r.tuned}
    return [r for r in rows if not r.free and (
        (r.output == RAW and (r.tuned or r.method not in tuned))
        or (r.method == 'ce' and r.output == 'ts'))]


def _criteria(columns: List[str]) -> List[Tuple[str, bool, Callable, Optional[str]]]:
    """What a method can win: the in-domain verdict metrics and ECE under each
    shift, as (name, higher is better, the row's values per seed, the in-domain
    metric's key or None)."""
    criteria = [(header, higher, lambda row, key=key: row.values(key), key)
                for key, header, higher in COLUMNS if key in VERDICT_METRICS]
    for column in columns[1:]:  # after 'clean', the in-domain ECE again
        where = 'in the' if column == 'domain' else 'at'
        criteria.append((f'ECE {where} {_column_name(column)}', False,
                         lambda row, column=column: row.shift(column, 'ECE'), None))
    return criteria


def _fair_reading(rows: List[Row], ce: Optional[Row],
                  columns: List[str]) -> List[str]:
    """Templated answer to the study's question: which method wins at its fair
    setting, and does CALS with its held-out margin win anything."""
    fair = _distinct(_fair_rows(rows), ce)
    with_ts = (', beside CE + TS (its temperature fitted on the same hold-out '
               'part)' if any(r.output == 'ts' for r in fair) else '')
    lines = ['', '### Which method wins at its fair setting', '',
             'Each method once, at its knob\'s held-out choice where the study '
             f'tuned it and at its default otherwise{with_ts}; rows equal to CE '
             'are left out.', '']
    standing = {}
    for name, higher, values, key in _criteria(columns):
        leaders, text = _leaders(_candidates(fair, values, key), higher, key)
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
    gains = [(c, _paired_gain(cals, ce, c)) for c in columns] if ce else []
    gains = ', '.join(f'{_column_name(c)} {_cell(g)}' for c, g in gains
                      if g is not None)
    lines.append(f'- {cals.label}: {"; ".join(parts)}.' +
                 (f' ECE gained over CE, paired by seed: {gains}.' if gains else ''))
    return lines


def _tuning_table(manifest: dict, records: Dict[str, dict],
                  section: tuple) -> List[str]:
    """Each tuned method's grid: every value's selection score on each tuning
    seed, its paired difference from the chosen value with the standard error
    of seeds and selection images, and whether that is within noise."""
    tuned = [r for r in manifest['rows'] if _section(r) == section and
             r['kind'] == 'tuned']
    if not tuned:
        return []
    if 'tuning_keys' not in tuned[0]:
        return _first_seed_tuning_table(tuned)
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
        lines += _tuning_lines(row, records)
    return lines


def _first_seed_tuning_table(tuned: List[dict]) -> List[str]:
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
        scores = ', '.join(f'{_number(float(v))}: {s:.4f}'
                           for v, s in sorted(row['scores'].items(),
                                              key=lambda kv: float(kv[0])))
        lines.append(f'| {LABELS.get(row["method"], row["method"])} | '
                     f'{knob.option} ({knob.symbol}) | {scores} | '
                     f'{_number(row["options"][knob.option])} |')
    return lines


def _tuning_lines(row: dict, records: Dict[str, dict]) -> List[str]:
    knob = KNOBS[row['method']]
    grid = sorted(float(v) for v in row['scores'])
    chosen = row['options'][knob.option]
    runs = [[records[k] for k in row['tuning_keys'][str(v)]] for v in grid]
    values = np.array([[run['selection'][SCORE] for run in by_seed]
                       for by_seed in runs])  # [values, seeds]
    stored = runs[0][0]['selection_images']
    stack = np.array([[run['selection_images']['outputs'][RAW] for run in by_seed]
                      for by_seed in runs], dtype=np.float64)
    replicates = _resampled(stack, (stored['num_bins'], stored['num_classes']), SCORE)
    reference = grid.index(chosen)
    difference, error = differences_from(values, reference, replicates)
    choices = per_seed_choices({v: list(values[k]) for k, v in enumerate(grid)})
    label = LABELS.get(row['method'], row['method'])
    lines = []
    for k, value in enumerate(grid):
        scores = ', '.join(f'{x:.4f}' for x in values[k])
        name = f'{knob.symbol} {_number(value)}'
        if value == default_value(row['method']):
            name += ' (default)'
        if value == row.get('extended'):
            name += ' (extension)'
        if k == reference:
            stable = ('stable' if len(set(choices)) == 1 else 'not stable')
            reading = 'chosen'
            if len(choices) > 1:
                reading += (f'; each tuning seed alone: '
                            f'{", ".join(_number(c) for c in choices)} ({stable})')
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


def _cheapest(leaders: List[str], rows: List[Row]) -> str:
    """Where several rows tie for best: the one that costs least to train and
    evaluate, as a clause of the verdict."""
    if len(leaders) < 2:
        return ''
    cost = {r.label: r.cost() for r in rows}
    label = min(leaders, key=lambda name: cost[name])
    return f'; the cheapest of them: {label} ({cost[label]:.1f} min to train and evaluate)'


def _leaders_text(rows: List[Row], key: str, higher: bool) -> str:
    """The methods in front on ``key`` among ``rows``, by method name: 'X'
    (best), 'tie: X, Y' or 'no claim'."""
    leaders = _leaders(_candidates(rows, lambda r: r.values(key), key), higher,
                       key)[0]
    names = [LABELS.get(r.method, r.method) for r in rows if r.label in leaders]
    if not names:
        return 'no claim'
    return names[0] if len(names) == 1 else 'tie: ' + ', '.join(names)


def _rank_correlation(x: List[float], y: List[float]) -> float:
    """Spearman's ρ; NaN for fewer than 3 values or a side without an order
    (every value equal)."""
    from scipy.stats import spearmanr
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float('nan')
    return float(spearmanr(x, y)[0])


def _finetune_agreement(sections: Dict[tuple, List[Row]]) -> List[str]:
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
            rho = _rank_correlation([full[m].values(key).mean() for m in methods],
                                    [tuned[m].values(key).mean() for m in methods])
            rho_text = '–' if not np.isfinite(rho) else f'{rho:.2f}'
            lines.append(f'| {header} | {rho_text} | '
                         f'{_leaders_text([full[m] for m in methods], key, higher)} | '
                         f'{_leaders_text([tuned[m] for m in methods], key, higher)} |')
        cost = [np.mean([r['minutes']['train'] for m in methods
                         for r in side[m].records]) for side in (full, tuned)]
        lines += ['', f'Training per run, mean over these runs: {cost[0]:.1f} min in '
                  f'full, {cost[1]:.1f} min fine-tuned ({cost[1] / cost[0]:.2f} of '
                  'the cost; the checkpoint itself is not counted).', '']
    return lines


def _multiplier_names(row: Row) -> List[str]:
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


def _multiplier_lines(rows: List[Row]) -> List[str]:
    lines, seen = [], set()
    for row in rows:
        if row.output != RAW or 'multipliers' not in row.records[0] or row.runs in seen:
            continue  # a tuned row that chose the default: the same runs again
        seen.add(row.runs)
        final = np.array([r['multipliers']['final'] for r in row.records])
        names = _multiplier_names(row)
        lines += ['', f'{row.label}: multipliers at the end (mean over seeds):', '',
                  '| ' + ' | '.join(names) + ' |', '| --- ' * len(names) + '|',
                  '| ' + ' | '.join(f'{v:.3g}' for v in final.mean(0)) + ' |']
    return lines


def _pooled_bins(records: List[dict], output: str):
    """Reliability bins pooled over seeds: counts add, means weigh by count."""
    bins = [r['reliability'][output] for r in records]
    count = np.sum([b['count'] for b in bins], axis=0)
    sums = {field: np.sum([np.nan_to_num(np.array(b[field], dtype=float)) *
                           np.array(b['count']) for b in bins], axis=0)
            for field in ('confidence', 'accuracy')}
    return count, sums['confidence'], sums['accuracy']


def _figures(rows: List[Row], stem: str, shift_columns: List[str]):
    figures = {}
    # One panel per set of pixels, CE's included.
    panels = [(row.label, *_pooled_bins(row.records, row.output))
              for row in _distinct(rows, ce=None)]
    figures[f'reliability_{stem}.png'] = bins_grid(
        panels, title='test split, pixels pooled over seeds')
    severities = [c for c in shift_columns if c not in ('clean', 'domain')]
    series = {}
    if severities:
        for row in rows:
            if row.output not in (RAW, 'ts') or row.tuned:
                continue
            points = {}
            for column in ['clean'] + severities:
                ece, miou = row.shift(column, 'ECE'), row.shift(column, 'mIoU')
                if ece is not None and miou is not None:
                    points[0 if column == 'clean' else int(column)] = dict(
                        ECE=float(ece.mean()), mIoU=float(miou.mean()))
            if len(points) > 1:
                series[row.label] = points
    if series:
        figures[f'shift_{stem}.png'] = severity_figure(
            series, title='mean over corruptions and seeds (severity 0: clean)')
    return figures


def _foreground_text(records: List[dict]) -> str:
    """Which classes fg ECE leaves out, from the records: what their evaluation
    says, or label 0 for records made before it said (it always left that out)."""
    names = sorted({name for record in records for name in record.get(
        'background', (record.get('classes') or ['label 0'])[:1])})
    if not names:
        return 'no background class: equal to ECE'
    return ', '.join(names) + ' excluded'


def _code_line(records: List[dict]) -> str:
    versions = sorted({(r['code']['tree'], r['code']['commit'] or 'no git',
                        bool(r['code']['dirty'])) for r in records})
    return '; '.join(f'code tree {tree} (commit {commit[:12]}'
                     f'{", uncommitted changes" if dirty else ""})'
                     for tree, commit, dirty in versions)


def build_report(manifest: dict, records: Dict[str, dict],
                 figures_dir: str = 'figures') -> Tuple[str, Dict[str, bytes]]:
    """The markdown report and its figures (PNG bytes by file name).

    Args:
        manifest (dict): the study's ``study.json``: ``title``, ``command``,
            ``rows`` (per row ``kind``, ``config``, ``method``, ``options``,
            ``seeds``, ``keys``; tuned rows also ``knob``, ``grid``,
            ``extended``, ``scores``, ``tuning_seeds``, ``tuning_keys``),
            ``posthoc``, ``posthoc_on``.
        records (dict): run records by key.
        figures_dir (str): where the figures will be, relative to the report.
    """
    used = [records[k] for row in manifest['rows'] for k in row['keys']
            if k is not None]
    posthoc = ', '.join(CALIBRATOR_LABELS.get(c, c) for c in manifest['posthoc'])
    lines = [
        f'# {manifest["title"]}', '',
        f'Produced by `{manifest["command"]}`; rebuilt, byte for byte, from the run '
        'records by `python tools/calib_study.py --report` with the same '
        '`--results-dir`. Do not edit by hand. '
        f'{len({r["key"] for r in used})} runs; {_code_line(used)}.', '',
        'Each cell: mean ± sample standard deviation over seeds (test split unless '
        f'said). ECE, fg ECE ({_foreground_text(used)}) and boundary ECE in %, 15 '
        'bins; ECE per image: computed per image, then averaged (the CALS authors\' '
        'protocol); AURC in %. Every method trains on the same part of the '
        'training split; the held-out part updates CALS\'s and CRaC\'s '
        f'multipliers and is what the post-hoc calibrators ({posthoc}) are fitted '
        'on, checked out of fold: a fit that raises the out-of-fold NLL is '
        'undone (the row then equals its method\'s). ' + describe_test() +
        ' A verdict marked "seeds only" had no per-image sums to resample (records '
        'made before them, or under shift).', '']
    figures: Dict[str, bytes] = {}
    sections: Dict[tuple, List[Row]] = {}
    for section in dict.fromkeys(_section(row) for row in manifest['rows']):
        config, iters, _ = section
        stem = osp.splitext(osp.basename(config))[0]
        rows, absent = _rows(manifest, records, section)
        sections[section] = rows
        ce = next((r for r in rows if r.method == 'ce' and r.output == RAW
                   and not r.tuned and not r.missing), None)
        if iters is None:
            lines += [f'## {stem}', '', f'Base config `{config}`.', '']
        else:
            start = next(r['finetune'] for r in manifest['rows']
                         if _section(r) == section)
            stem += f'_ft{iters}'
            lines += [f'## {stem}', '', f'Base config `{config}`, every run '
                      f'fine-tuned for {iters} iterations from `{start["checkpoint"]}` '
                      f'(sha256 {start["sha256"]}), its schedule, warm-up and '
                      'multiplier rounds shrunk to match.', '']
        if not rows:
            lines += [f'No finished run (failed, or not run yet): '
                      f'{", ".join(absent)}.', '']
            continue
        lines += ['### In-domain (test split)', '']
        notes = _domain_table(rows, ce, lines)
        distinct = _distinct(rows, ce)
        several_seeds = max(len(r.records) for r in rows) > 1
        lines += ['']
        for key, header, higher in COLUMNS:
            if key in VERDICT_METRICS and several_seeds:
                candidates = _candidates(distinct, lambda r: r.values(key), key)
                leaders, text = _leaders(candidates, higher, key)
                lines.append(f'- {header}: {text}{_cheapest(leaders, distinct)}.')
        if not several_seeds:
            lines.append(f'- {ONE_SEED}')
        lines += [f'- {note}' for note in notes]
        if absent:
            lines.append(f'- Without a finished run (failed, or not run yet): '
                         f'{", ".join(absent)}.')
        if any(r.free for r in rows):
            lines.append(f'- {FREE_ROWS}')
        lines += _tuning_table(manifest, records, section)
        settings = _settings(manifest, records)
        shift_columns = ['clean'] + [str(s) for s in sorted(settings['severities'])
                                     if settings['corruptions']]
        if settings['domain_root']:
            shift_columns.append('domain')
        if len(shift_columns) > 1:
            shifts = []
            if len(shift_columns) > 2 or not settings['domain_root']:
                shifts.append(f'the test split under {len(settings["corruptions"])} '
                              'ImageNet-C corruptions (each severity column: the '
                              'mean over them)')
            if settings['domain_root']:
                shifts.append(f'the shifted domain `{settings["domain_root"]}`')
            text = ' and '.join(shifts)
            lines += ['', '### Under shift', '',
                      text[0].upper() + text[1:] + '; the calibrators are fitted '
                      'in-domain, on the held-out part.', '']
            _shift_table(rows, shift_columns, lines)
            lines += [''] + (_shift_reading(distinct, shift_columns)
                             if several_seeds else [f'- {ONE_SEED}'])
            if ce is not None and several_seeds:
                lines += _gain_table(distinct, ce, shift_columns)
        if several_seeds and any(r.tuned for r in rows):
            lines += _fair_reading(rows, ce, shift_columns)
        lines += _multiplier_lines(rows)
        config_figures = _figures(rows, stem, shift_columns)
        figures.update(config_figures)
        lines += ['']
        lines += [f'![{name}]({figures_dir}/{name})' for name in config_figures]
        lines += ['']
    lines += _finetune_agreement(sections)
    return '\n'.join(lines), figures
