"""Rows that cost no training: an ensemble of a method's seeds (their
probabilities averaged) and test-time augmentation of each seed's model, both
evaluated from the kept checkpoints of runs the study has already trained.

A free run is keyed by what it averages (its members' training keys and, for
TTA, its pipeline), so it is evaluated again only when one of them changes or
its evaluation does; its record says which runs it was made of.
"""
import json
from typing import Dict, List, NamedTuple, Optional, Tuple

from .finetune import Start
from .runs import RECORD_VERSION, RunSpec, _canonical, _hash, row_spec

KINDS = ('ensemble', 'tta')


class FreeSpec(NamedTuple):
    """A free run: ``kind`` ('ensemble': the members' probabilities averaged;
    'tta': the one member under test-time augmentation) of trained runs.

    Attributes:
        kind (str): one of :data:`KINDS`.
        members (tuple[RunSpec]): the runs it reads, same config, method,
            options and start (one for 'tta').
    """
    kind: str
    members: Tuple[RunSpec, ...]

    @property
    def config(self) -> str:
        return self.members[0].config

    @property
    def method(self) -> str:
        return self.members[0].method

    @property
    def options(self) -> dict:
        return self.members[0].options

    @property
    def start(self) -> Optional[Start]:
        return self.members[0].start

    @property
    def seed(self) -> Optional[int]:
        """The member's seed for TTA; None for an ensemble (one model)."""
        return self.members[0].seed if self.kind == 'tta' else None

    @property
    def id(self) -> str:
        return json.dumps([self.kind, [m.id for m in self.members]])

    @property
    def name(self) -> str:
        """``<config stem>/<method...>/ensemble`` or ``.../seed<k>_tta``."""
        row = self.members[0].name.rsplit('/', 1)[0]
        if self.kind == 'ensemble':
            return f'{row}/ensemble'
        return f'{row}/seed{self.seed}_tta'


def free_key(spec: FreeSpec, member_keys: List[str],
             pipeline: Optional[list] = None) -> str:
    """16 hex digits over the kind, the members' training keys (in seed
    order) and, for TTA, its pipeline."""
    return _hash(dict(kind=spec.kind, members=member_keys,
                      pipeline=_canonical(pipeline), record_version=RECORD_VERSION))


def ensemble_rows(rows: List[dict]) -> List[dict]:
    """An ensemble row for each default row of two or more seeds."""
    return [dict(row, kind='ensemble', seeds=list(row['seeds']))
            for row in rows if row['kind'] == 'default' and len(row['seeds']) > 1]


def tta_rows(rows: List[dict], records: Dict[str, dict]) -> List[dict]:
    """TTA rows for CE and for the method whose default row has the lowest
    mean test ECE, per config and start, among rows whose every seed has a
    record (``records`` by key; a row's ``keys`` None where a run has none)."""
    sections: Dict[tuple, List[dict]] = {}
    for row in rows:
        if row['kind'] == 'default' and all(row['keys']):
            start = row.get('finetune') or {}
            sections.setdefault((row['config'], start.get('sha256'),
                                 start.get('iters')), []).append(row)
    chosen = []
    for section_rows in sections.values():
        ce = [r for r in section_rows if r['method'] == 'ce']
        others = [r for r in section_rows if r['method'] != 'ce']
        best = min(others, key=lambda r: sum(
            records[k]['test']['raw']['ECE'] for k in r['keys']) / len(r['keys']),
            default=None)
        chosen += ce + ([best] if best is not None else [])
    return [dict({k: v for k, v in row.items() if k != 'keys'}, kind='tta')
            for row in chosen]


def free_specs(row: dict) -> List[FreeSpec]:
    """The free runs of a free row: one ensemble, or one TTA per seed."""
    members = tuple(row_spec(row, seed) for seed in row['seeds'])
    if row['kind'] == 'ensemble':
        return [FreeSpec('ensemble', members)]
    return [FreeSpec('tta', (member, )) for member in members]
