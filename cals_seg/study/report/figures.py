"""The report's figures, from the records: reliability diagrams and ECE and
mIoU against corruption severity."""
from typing import List

import numpy as np

from ...visualization.reliability import bins_grid
from ...visualization.shift import severity_figure
from .rows import RAW, Row, distinct_rows


def pooled_bins(records: List[dict], output: str):
    """Reliability bins pooled over seeds: counts add, means weigh by count."""
    bins = [r['reliability'][output] for r in records]
    count = np.sum([b['count'] for b in bins], axis=0)
    sums = {field: np.sum([np.nan_to_num(np.array(b[field], dtype=float)) *
                           np.array(b['count']) for b in bins], axis=0)
            for field in ('confidence', 'accuracy')}
    return count, sums['confidence'], sums['accuracy']


def report_figures(rows: List[Row], stem: str, shift_columns: List[str]):
    figures = {}
    # One panel per set of pixels, CE's included.
    panels = [(row.label, *pooled_bins(row.records, row.output))
              for row in distinct_rows(rows, ce=None)]
    if panels:  # none while every row misses seeds (a study under way)
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
