"""Per-image sums of the verdict metrics (cals_seg.functional.image_sums): summed
over every image they give the evaluation's own numbers, and the report resamples
them so that the luck of the test images counts."""
import numpy as np
import pytest
import torch

from cals_seg.evaluation.split_report import evaluate_split, summarize
from cals_seg.functional.image_sums import bootstrap_weights, metrics_from_sums
from helpers import FixedModel, Loader


def test_summed_image_rows_give_the_evaluation_s_numbers():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 4, 12, 10, generator=generator) * 2
    labels = torch.randint(0, 4, (5, 12, 10), generator=generator)
    labels[:, 0, :3] = 255  # ignored pixels
    loader = Loader([[(i, labels[i])] for i in range(5)])
    split = evaluate_split(FixedModel(logits), loader, 4, exclude_classes=[0])
    rows = split['outputs']['raw']['image_rows']
    assert rows.shape == (5, 2 + 9 * 15 + 3 * 4)
    from_rows = metrics_from_sums(rows.sum(0), 15, 4)
    reference = summarize(split)
    for key in ('ECE', 'fg/ECE', 'NLL', 'mIoU', 'ECE_boundary'):
        assert from_rows[key] == pytest.approx(reference[key], rel=1e-9), key
    # Rows of records made before the boundary bins are their prefix.
    older = metrics_from_sums(rows[:, :2 + 6 * 15 + 3 * 4].sum(0), 15, 4)
    assert 'ECE_boundary' not in older and older['ECE'] == from_rows['ECE']
    # A resample is a weighting: the evaluation of a loader that shows image 0
    # twice and image 3 not at all is what weights (2, 1, 1, 0, 1) give.
    resampled = Loader([[(i, labels[i])] for i in (0, 0, 1, 2, 4)])
    again = summarize(evaluate_split(FixedModel(logits), resampled, 4,
                                     exclude_classes=[0]))
    weighted = metrics_from_sums(np.array([2.0, 1, 1, 0, 1]) @ rows, 15, 4)
    for key in ('ECE', 'fg/ECE', 'NLL', 'mIoU', 'ECE_boundary'):
        assert weighted[key] == pytest.approx(again[key], rel=1e-9), key


def test_bootstrap_weights_draw_as_many_images_as_there_are_and_repeat():
    weights = bootstrap_weights(40, 200, seed=1)
    assert weights.shape == (200, 40) and np.all(weights.sum(1) == 40)
    assert np.array_equal(weights, bootstrap_weights(40, 200, seed=1))
    assert (weights == 0).mean() == pytest.approx((1 - 1 / 40)**40, abs=0.02)


def _images(gap_on_first: float, seed_noise: float) -> list:
    """10 images of 100 pixels, one bin, two classes: calibrated except for a
    gap (accuracy below confidence) on the first image."""
    rows = []
    for index in range(10):
        gap = gap_on_first if index == 0 else 0.0
        accuracy = 80.0 - gap + seed_noise
        rows.append([100, 80, accuracy, 100, 80, accuracy, 30.0, 100,
                     40, 50, 60, 50, 50, 50])
    return rows


def _record(key, method, seed, gap, seed_noise, with_images):
    rows = _images(gap, seed_noise)
    sums = np.sum(rows, axis=0)
    ece = float(metrics_from_sums(sums, 1, 2)['ECE'])
    metrics = dict(mIoU=50.0, ECE=ece, ECE_image=ece, ECE_boundary=ece, NLL=0.3,
                   Brier=0.1, AURC=3.0, **{'fg/ECE': ece})
    record = dict(key=key, seed=seed, method=method, test=dict(raw=metrics),
                  reliability=dict(raw=dict(count=[1.0], confidence=[0.5],
                                            accuracy=[0.5])),
                  fits={}, classes=['background', 'thing'],
                  resolved_options=dict(smoothing=0.05) if method == 'ls' else {},
                  minutes=dict(train=1.0), code=dict(tree='t', commit='c', dirty=False),
                  settings=dict(posthoc=[], corruptions=[], severities=[],
                                domain_root=None))
    if with_images:
        record['test_images'] = dict(num_bins=1, num_classes=2, images=10,
                                     outputs=dict(raw=rows))
    return record


@pytest.mark.parametrize('with_images', [False, True])
def test_a_gain_made_on_one_image_is_no_best_once_images_are_resampled(with_images):
    """B is worse than A only on the first of 10 test images, on every seed alike:
    the seeds see a sure difference, the image resamples see the luck of one image."""
    from cals_seg.study.report import build_report
    records, rows = {}, []
    for method, gap in (('ce', 0.0), ('ls', 30.0)):
        keys = [f'{method}{seed}' for seed in range(3)]
        for seed, key in enumerate(keys):
            records[key] = _record(key, method, seed, gap, 0.01 * seed, with_images)
        rows.append(dict(kind='default', config='x/base_ce.py', method=method,
                         options={}, seeds=[0, 1, 2], keys=keys))
    manifest = dict(title='t', command='c', posthoc=[], posthoc_on=[], rows=rows,
                    settings=dict(posthoc=[], corruptions=[], severities=[],
                                  domain_root=None))
    text = build_report(manifest, records)[0]
    line = next(line for line in text.splitlines() if line.startswith('- ECE:'))
    if with_images:
        assert line.startswith('- ECE: tie, not told apart from the best mean: CE')
        assert 'seeds only' not in line
    else:
        assert line.startswith('- ECE: best CE') and line.endswith('; seeds only.')


def test_a_report_of_a_study_under_way_draws_no_empty_figure():
    """Every row misses a seed (its runs not finished): no row is distinct, and
    the report is written without its reliability figure."""
    from cals_seg.study.report import build_report
    records = {f'ce{seed}': _record(f'ce{seed}', 'ce', seed, 0.0, 0.0, True)
               for seed in range(2)}
    manifest = dict(title='t', command='c', posthoc=[], posthoc_on=[],
                    rows=[dict(kind='default', config='x/base_ce.py', method='ce',
                               options={}, seeds=[0, 1, 2],
                               keys=['ce0', 'ce1', None])],
                    settings=dict(posthoc=[], corruptions=[], severities=[],
                                  domain_root=None))
    text, figures = build_report(manifest, records)
    assert '1 of 3 seeds missing: in no verdict' in text
    assert not any(name.startswith('reliability_') for name in figures)
