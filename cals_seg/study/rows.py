"""The rows of a study and the runs behind them: each method at its defaults
on every seed (per base config and start), and the tuned rows, whose knob's
grid is run on the tuning seeds and chosen on the selection part."""
from typing import Dict, List, NamedTuple, Optional

from . import tuning
from .finetune import Start, start_fields
from .free_rows import KINDS as FREE_KINDS
from .free_rows import free_specs
from .runs import RunSpec, row_spec


def default_rows(args) -> List[dict]:
    """The study's rows: per base config and start (trained in full, or
    fine-tuned from --from), each method at its defaults (and the user's
    --options) on every seed."""
    return [dict(kind='default', config=config, method=method,
                 options=args.method_options.get(method, {}), seeds=args.seeds,
                 **start_fields(start))
            for config in args.configs for start in args.starts[config]
            for method in args.methods]


def seed_major(rows: List[dict]) -> List[RunSpec]:
    """The runs of ``rows``, every row's first seed before any row's second: a
    study stopped part way has every method at the same number of seeds."""
    most = max((len(row['seeds']) for row in rows), default=0)
    return [row_spec(row, row['seeds'][k])
            for k in range(most) for row in rows if k < len(row['seeds'])]


def tune(study, args) -> List[dict]:
    """The tuned rows: each knob's grid on the tuning seeds, scored on the
    selection part; a choice at an end of the grid extends it one step and is
    made again; the chosen value then runs on every reported seed."""
    grids = tuning_grids(args)
    records = run_grid(study, args, grids)
    for knob_of in [k for k, grid in grids.items() if not all(
            spec.id in records for spec in all_grid_specs(args, {k: grid}))]:
        study.failures.append(f'{knob_of.config}: {knob_of.method} not tuned, a '
                              'run of its grid has no record')
        del grids[knob_of]
    extended = {}
    for knob_of, grid in grids.items():
        value = tuning.extension(tuning.KNOBS[knob_of.method], grid, tuning.choose(
            grid_scores(args, records, knob_of, grid)))
        if value is not None:
            extended[knob_of] = value
            grid.append(value)
    records.update(run_grid(study, args, {k: [v] for k, v in extended.items()}))
    rows = []
    for knob_of, grid in grids.items():
        if knob_of in extended and not all(spec.id in records for spec in grid_specs(
                args, knob_of, extended[knob_of])):
            study.failures.append(f'{knob_of.config}: {knob_of.method} not tuned, a '
                                  'run of its extended grid has no record')
            continue
        config, start, method = knob_of
        knob = tuning.KNOBS[method]
        scores = grid_scores(args, records, knob_of, grid)
        keys = {str(value): [records[spec.id]['key'] for spec in
                             grid_specs(args, knob_of, value)]
                for value in grid}
        rows.append(dict(kind='tuned', config=config, method=method,
                         options=dict(args.method_options.get(method, {}),
                                      **{knob.option: tuning.choose(scores)}),
                         seeds=args.seeds, **start_fields(start), knob=knob.option,
                         grid=grid, extended=extended.get(knob_of),
                         scores={str(v): s for v, s in scores.items()},
                         tuning_seeds=args.tuning_seeds, tuning_keys=keys))
    return rows


class TunedKnob(NamedTuple):
    """A knob tuned for one base config and start."""
    config: str
    start: Optional[Start]
    method: str


def tuning_grids(args) -> Dict[TunedKnob, List[float]]:
    """The grid of every knob the study tunes (not one the user fixed with
    --options), per base config and start."""
    return {TunedKnob(config, start, method): list(tuning.KNOBS[method].grid)
            for config in args.configs for start in args.starts[config]
            for method in tuning.tunable(args.methods)
            if tuning.KNOBS[method].option not in args.method_options.get(method, {})}


def grid_specs(args, knob_of: TunedKnob, value: float) -> List[RunSpec]:
    """The tuning runs of one grid value, one per tuning seed."""
    knob = tuning.KNOBS[knob_of.method]
    options = dict(args.method_options.get(knob_of.method, {}),
                   **{knob.option: value})
    return [RunSpec(knob_of.config, knob_of.method, options, seed, knob_of.start)
            for seed in args.tuning_seeds]


def run_grid(study, args,
             grids: Dict[TunedKnob, List[float]]) -> Dict[str, dict]:
    """Train and score (test, hold-out and selection parts only) the tuning
    runs of ``grids`` (values per knob), by spec id."""
    specs = all_grid_specs(args, grids)
    return study.run_all(specs, full=False) if specs else {}


def all_grid_specs(args, grids: Dict[TunedKnob, List[float]]) -> List[RunSpec]:
    return [spec for knob_of, values in grids.items()
            for value in values for spec in grid_specs(args, knob_of, value)]


def grid_scores(args, records: Dict[str, dict], knob_of: TunedKnob,
                grid: List[float]) -> Dict[float, List[float]]:
    """Per grid value, the selection part's score of each tuning seed's run.

    Raises:
        ValueError: a run's config has no selection part.
    """
    config, method = knob_of.config, knob_of.method
    scores = {}
    for value in grid:
        runs = [records[spec.id] for spec in grid_specs(args, knob_of, value)]
        if any(tuning.SPLIT not in run for run in runs):
            raise ValueError(f'{config}: the tuning runs of {method} have no '
                             f'{tuning.SPLIT} part to score on; give '
                             '--selection-fraction')
        scores[value] = [run[tuning.SPLIT][tuning.SCORE] for run in runs]
    return scores


def with_keys(study, rows: List[dict]) -> List[dict]:
    """The rows with their runs' keys, None where a run has no record yet
    (failed, or not finished)."""
    return [dict(row, keys=[study.stored_key(spec) for spec in (
        free_specs(row) if row['kind'] in FREE_KINDS else
        [row_spec(row, seed) for seed in row['seeds']])]) for row in rows]
