"""The report's rows: what each table line shows (a label, the records of
its seeds, the output read from them) and which lines say something of their
own."""
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from ..tuning import KNOBS, default_value


RAW = 'raw'


LABELS = dict(ce='CE', ls='LS', fl='FL', mbls='MbLS', ecp='ECP', nacl='NACL',
              svls='SVLS', cals='CALS', crac='CRaC')


CALIBRATOR_LABELS = dict(ts='TS', ets='ETS', cts='class TS', vs='VS',
                         dirichlet='Dirichlet', cmsap='CMSap', cmsop='CMSop',
                         lts='LTS', selective='selective')


# In-domain columns: (record key, header, higher is better).
COLUMNS = (('mIoU', 'mIoU', True), ('ECE', 'ECE', False),
           ('ECE_image', 'ECE per image', False), ('fg/ECE', 'fg ECE', False),
           ('ECE_boundary', 'boundary ECE', False), ('NLL', 'NLL', False),
           ('Brier', 'Brier', False), ('AURC', 'AURC', False))


VERDICT_METRICS = ('mIoU', 'ECE', 'fg/ECE', 'NLL')


SHIFT_METRICS = (('ECE', 'ECE', False), ('mIoU', 'mIoU', True))


# Conformal sets' columns, in-domain and under shift: (record key, header).
SET_COLUMNS = (('coverage', 'coverage %'), ('set_size', 'set size'))


# Relative: an undone Dirichlet fit (the identity on log-probabilities) gives
# CE's numbers to float rounding, not bit for bit.
EQUAL_TOLERANCE = 1e-6


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

    def accuracy_change(self) -> Optional[np.ndarray]:
        """Per seed, the pixel accuracy (``aAcc``, percent) of a calibrator's
        output less its model's raw one: not 0 where the calibrator changed the
        argmax. None for a raw row, or records without ``aAcc``."""
        if self.output == RAW or any('aAcc' not in r['test'][RAW] or
                                     'aAcc' not in r['test'][self.output]
                                     for r in self.records):
            return None
        return np.array([r['test'][self.output]['aAcc'] - r['test'][RAW]['aAcc']
                         for r in self.records])

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
        lacks any of it (a record may hold more than the study asked for, or
        predate the metric)."""
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
            if any(cell is None or metric not in cell for cell in cells):
                return None
            values.append(float(np.mean([cell[metric] for cell in cells])))
        return np.array(values, dtype=float)


def spread(values: np.ndarray) -> float:
    """Sample standard deviation over seeds (NaN with one seed)."""
    return float(np.std(values, ddof=1)) if values.size > 1 else float('nan')


def cell(values: Optional[np.ndarray]) -> str:
    if values is None:
        return '–'
    if values.size == 1:
        return f'{values[0]:.2f}'
    return f'{values.mean():.2f} ± {spread(values):.2f}'


def number(value) -> str:
    return f'{value:g}'


def options_text(options: dict) -> str:
    return ', '.join(f'{k} {number(v) if isinstance(v, float) else v}'
                     for k, v in sorted(options.items()))


def row_label(row: dict) -> str:
    label = LABELS.get(row['method'], row['method'])
    knob = KNOBS.get(row['method'])
    shown = dict(row['options'])
    if knob is not None:
        value = (row['records'][0]['resolved_options'][knob.option]
                 if row['records'] else shown.get(knob.option, default_value(row['method'])))
        shown.pop(knob.option, None)
        label += f' {knob.symbol} {number(value)}'
    if shown:
        label += f' ({options_text(shown)})'
    if row['kind'] == 'tuned':
        chose_default = (knob is not None and
                         row['options'][knob.option] == default_value(row['method']))
        label += ', tuned (chose the default)' if chose_default else ', tuned'
    if row.get('finetune'):
        label += f', fine-tuned {row["finetune"]["iters"]} it'
    return label


def section_of(row: dict) -> Tuple[str, Optional[int], Optional[str]]:
    """The part of the report a manifest row belongs to: its base config and,
    for fine-tuned rows, their iterations and starting checkpoint."""
    start = row.get('finetune') or {}
    return row['config'], start.get('iters'), start.get('sha256')


def study_settings(manifest: dict, records: Dict[str, dict]) -> dict:
    """What the study asked its runs to be evaluated on (a manifest written
    before the study stored it: its first run's settings)."""
    if 'settings' in manifest:
        return manifest['settings']
    return records[manifest['rows'][0]['keys'][0]]['settings']


def table_rows(manifest: dict, records: Dict[str, dict],
          section: tuple) -> Tuple[List[Row], List[str]]:
    """The table rows of one section (:func:`section_of`): trained rows
    (defaults, then tuned) and post-hoc rows after their method's default
    row; and the labels of rows without any finished run (a key of None: its
    run failed or has not finished), which no table shows."""
    corruptions = tuple(study_settings(manifest, records)['corruptions'])
    rows, absent = [], []
    for entry in manifest['rows']:
        if section_of(entry) != section:
            continue
        entry = dict(entry, records=[records[k] for k in entry['keys']
                                     if k is not None])
        label = row_label(entry)
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


def equals(row: Row, reference: Row) -> bool:
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


def distinct_rows(rows: List[Row], ce: Optional[Row]) -> List[Row]:
    """The rows that say something of their own, each set of pixels once, and
    whole: not equal to CE, not a tuned row that chose its method's default
    (the same runs again), not a post-hoc fit undone on every seed (its
    method's row again), not a row with seeds missing."""
    seen, distinct = set(), []
    for row in rows:
        if (row.runs in seen or (ce is not None and equals(row, ce)) or row.missing
                or (row.output != RAW and row.fits_undone == len(row.records))):
            continue
        seen.add(row.runs)
        distinct.append(row)
    return distinct
