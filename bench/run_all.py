"""Every cost figure of CALS and of the calibration metric beside its target.

    make bench        # or: .venv/bin/python bench/run_all.py

Figures are ratios of timings measured side by side in one process, so they
hold on a noisy machine; absolute seconds are not targets.
"""
import sys

import cals_seg  # noqa: F401  (registers the plugin)

import bench_loss  # noqa: E402
import bench_memory  # noqa: E402
import bench_metric  # noqa: E402
import bench_train_iter  # noqa: E402


def main():
    results = [module.main() for module in (bench_loss, bench_memory, bench_metric,
                                            bench_train_iter)]
    print('all targets met' if all(results) else 'some targets missed')
    return 0


if __name__ == '__main__':
    sys.exit(main())
