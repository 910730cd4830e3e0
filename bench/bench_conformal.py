"""What conformal pixel sets cost beside the calibration statistics every
evaluation already streams: per image of 512 x 1024 pixels and 19 classes (a
Cityscapes crop), the calibration statistics (calibration_statistics), the
conformal calibration pass (softmax, scores, risk histograms) and the test-time
set statistics (sets and their counts), timed side by side in one process.
Printed as ratios to the calibration statistics; no target.

    python bench/bench_conformal.py [--score lac|aps] [--repeats 5]
"""
import argparse
import os.path as osp
import sys

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

from cals_seg.evaluation.conformal import ConformalCalibration, SetTotals  # noqa: E402
from cals_seg.functional.calibration import calibration_statistics  # noqa: E402
from cals_seg.functional.conformal import SCORES  # noqa: E402
from common import time_side_by_side  # noqa: E402

HEIGHT, WIDTH, CLASSES = 512, 1024, 19


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--score', choices=SCORES, default='lac')
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, CLASSES, HEIGHT, WIDTH, generator=generator) * 3
    labels = torch.randint(0, CLASSES, (1, HEIGHT, WIDTH), generator=generator)
    calibration = ConformalCalibration(CLASSES, args.score)
    calibration.update(logits, labels)
    totals = SetTotals(calibration.fit(0.5))
    seconds = time_side_by_side({
        'calibration statistics': lambda: calibration_statistics(logits[0], labels[0]),
        'conformal calibration': lambda: calibration.update(logits, labels),
        'set statistics': lambda: totals.update(logits, labels),
    }, args.repeats)
    base = seconds['calibration statistics']
    print(f'one {HEIGHT} x {WIDTH} image, {CLASSES} classes, score {args.score}, '
          f'{torch.get_num_threads()} threads')
    for name, value in seconds.items():
        print(f'{name:<24} {value * 1000:8.1f} ms  {value / base:5.2f} x')
    return seconds


if __name__ == '__main__':
    main()
