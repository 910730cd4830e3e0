"""Side-by-side timing for the benchmarks: ratios, never absolute targets."""
import time
from typing import Callable, Dict


def time_side_by_side(functions: Dict[str, Callable[[], object]],
                      repeats: int = 5) -> Dict[str, float]:
    """Fastest of ``repeats`` runs of each function, in seconds, measured
    interleaved in one process so that slow phases of the machine hit all of them
    alike. The minimum, not the median: on a shared, noisy machine load only ever
    adds time, so the fastest run is the best estimate of what the code costs
    (the advice of Python's ``timeit``)."""
    for function in functions.values():
        function()  # warm-up: allocations, caches, lazy initialisation
    samples = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            samples[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in samples.items()}


def report(figure: str, measured: float, target: float, unit: str = '',
           lower_is_better: bool = True) -> bool:
    """Print one figure beside its target; return whether it meets it."""
    met = measured <= target if lower_is_better else measured >= target
    sign = '<=' if lower_is_better else '>='
    print(f'{figure:<62} {measured:8.3f}{unit:<2} target {sign} {target:g}{unit}  '
          f'{"OK" if met else "MISSED"}')
    return met
