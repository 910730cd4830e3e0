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
from typing import Dict, List, Tuple

from ..statistics import describe_test
from .figures import report_figures
from .readings import fair_reading, finetune_agreement
from .rows import (CALIBRATOR_LABELS, COLUMNS, RAW, VERDICT_METRICS,
                   Row, distinct_rows, section_of, study_settings, table_rows)
from .tables import (domain_table, gain_table, multiplier_lines, sets_table,
                     shift_reading, shift_table)
from .posthoc import posthoc_flags
from .tuning_table import tuning_table
from .verdicts import RESAMPLES, Candidate, candidates_of, cheapest, find_leaders, verdict

__all__ = ['build_report', 'verdict', 'Candidate', 'Row', 'RESAMPLES']

FREE_ROWS = ('Rows that trained nothing of their own, from the kept checkpoints: '
             'an ensemble averages its seeds\' probabilities (one model: in a '
             'verdict its value stands on each of its seeds, so a row is compared '
             'with it seed by seed); TTA averages each seed\'s model over flips '
             '(and scales, where the config has a tta_pipeline). Their training '
             'minutes are their members\'.')


ONE_SEED = ('One seed per row: no "best" is claimed, since a claim needs the '
            'spread over seeds.')


def foreground_text(records: List[dict]) -> str:
    """Which classes fg ECE leaves out, from the records: what their evaluation
    says, or label 0 for records made before it said (it always left that out)."""
    names = sorted({name for record in records for name in record.get(
        'background', (record.get('classes') or ['label 0'])[:1])})
    if not names:
        return 'no background class: equal to ECE'
    return ', '.join(names) + ' excluded'


def code_line(records: List[dict]) -> str:
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
        f'{len({r["key"] for r in used})} runs; {code_line(used)}.', '',
        'Each cell: mean ± sample standard deviation over seeds (test split unless '
        f'said). ECE, fg ECE ({foreground_text(used)}) and boundary ECE in %, 15 '
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
    for section in dict.fromkeys(section_of(row) for row in manifest['rows']):
        config, iters, _ = section
        stem = osp.splitext(osp.basename(config))[0]
        rows, absent = table_rows(manifest, records, section)
        sections[section] = rows
        ce = next((r for r in rows if r.method == 'ce' and r.output == RAW
                   and not r.tuned and not r.missing), None)
        if iters is None:
            lines += [f'## {stem}', '', f'Base config `{config}`.', '']
        else:
            start = next(r['finetune'] for r in manifest['rows']
                         if section_of(r) == section)
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
        notes = domain_table(rows, ce, lines)
        distinct = distinct_rows(rows, ce)
        several_seeds = max(len(r.records) for r in rows) > 1
        lines += ['']
        for key, header, higher in COLUMNS:
            if key in VERDICT_METRICS and several_seeds:
                candidates = candidates_of(distinct, lambda r: r.values(key), key)
                leaders, text = find_leaders(candidates, higher, key)
                lines.append(f'- {header}: {text}{cheapest(leaders, distinct)}.')
        if not several_seeds:
            lines.append(f'- {ONE_SEED}')
        lines += [f'- {note}' for note in notes]
        lines += [f'- Flag: {flag}.' for flag in posthoc_flags(rows)]
        if absent:
            lines.append(f'- Without a finished run (failed, or not run yet): '
                         f'{", ".join(absent)}.')
        if any(r.free for r in rows):
            lines.append(f'- {FREE_ROWS}')
        lines += tuning_table(manifest, records, section)
        settings = study_settings(manifest, records)
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
            shift_table(rows, shift_columns, lines)
            lines += [''] + (shift_reading(distinct, shift_columns)
                             if several_seeds else [f'- {ONE_SEED}'])
            if ce is not None and several_seeds:
                lines += gain_table(distinct, ce, shift_columns)
        alpha = next((r['conformal'][RAW]['alpha'] for row in rows
                      for r in row.records if r.get('conformal')), None)
        sets_table(rows, shift_columns, alpha, lines)
        if several_seeds and any(r.tuned for r in rows):
            lines += fair_reading(rows, ce, shift_columns)
        lines += multiplier_lines(rows)
        config_figures = report_figures(rows, stem, shift_columns)
        figures.update(config_figures)
        lines += ['']
        lines += [f'![{name}]({figures_dir}/{name})' for name in config_figures]
        lines += ['']
    lines += finetune_agreement(sections)
    return '\n'.join(lines), figures
