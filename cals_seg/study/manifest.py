"""A study's manifest (``study.json``: its title, command, settings and rows,
each row with the keys of its runs' records) and the report written from the
manifest and the records alone."""
import json
import os
import os.path as osp
from typing import List

from ..utils.io import write_atomic
from .runs import load_records

STUDY_FILE = 'study.json'


def build_manifest(args, command: str, rows: List[dict], settings: dict) -> dict:
    """The manifest of a study whose ``rows`` carry their keys
    (:func:`cals_seg.study.rows.with_keys`)."""
    return dict(title=args.title, command=command.strip(), rows=rows,
                posthoc=list(args.posthoc), posthoc_on=list(args.posthoc_on),
                seeds=args.seeds, tuned=args.tune,
                tuning_seeds=args.tuning_seeds if args.tune else [],
                settings=settings)


def write_manifest(results_dir: str, manifest: dict) -> None:
    os.makedirs(results_dir, exist_ok=True)
    write_atomic(osp.join(results_dir, STUDY_FILE),
                 json.dumps(manifest, indent=1).encode('utf-8'))


def read_manifest(results_dir: str) -> dict:
    """Raises:
        FileNotFoundError: no study has written one there."""
    path = osp.join(results_dir, STUDY_FILE)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} not found: run the study first')
    with open(path) as f:
        return json.load(f)


def write_report(results_dir: str, out: str, manifest: dict) -> None:
    """The report of ``manifest`` from the records in ``results_dir``, written
    to ``out`` with its figures in ``figures/`` beside it.

    Raises:
        FileNotFoundError: a record the manifest names is not there.
    """
    from .report import build_report
    wanted = [key for row in manifest['rows'] for key in row['keys'] if key]
    wanted += [key for row in manifest['rows']
               for keys in row.get('tuning_keys', {}).values() for key in keys]
    # A study whose every run failed (or is running elsewhere) has no records.
    records = ({r['key']: r for r in load_records(results_dir)} if wanted else {})
    missing = [key for key in wanted if key not in records]
    if missing:
        raise FileNotFoundError(f'{len(missing)} run record(s) of {STUDY_FILE} are '
                                f'not in {results_dir}, e.g. {missing[0]}')
    out_dir = osp.dirname(osp.abspath(out))
    figures_dir = osp.join(out_dir, 'figures')
    text, figures = build_report(manifest, records, osp.relpath(figures_dir, out_dir))
    os.makedirs(figures_dir, exist_ok=True)
    for name, data in figures.items():
        write_atomic(osp.join(figures_dir, name), data)
    write_atomic(out, text.encode('utf-8'))
    print(f'wrote {out} and {len(figures)} figure(s) in {figures_dir}')
