"""The study report's flag on post-hoc calibrators: a calibrator that lowers the
pooled NLL while it raises boundary ECE beyond noise is named; one that does not,
or whose rise is the luck of one image, is not; and the paired test behind it
keeps its level by simulation."""
import numpy as np
import pytest

from cals_seg.functional.image_sums import metrics_from_sums
from cals_seg.study.report.posthoc import posthoc_flags
from cals_seg.study.report.rows import Row
from cals_seg.study.statistics import paired_change


def _image(boundary_gap, seed_noise):
    """One image's sums, one bin and two classes (layout of image_sums):
    calibrated in the pooled bins, with ``boundary_gap`` pixels of accuracy
    below confidence in the boundary bin."""
    accuracy = 80.0 + seed_noise
    return [100, 80, accuracy, 100, 80, accuracy, 30.0, 100, 40, 50, 60, 50, 50, 50,
            20, 16, 16 - boundary_gap + seed_noise / 5]


def _rows(gaps):
    """CE and CE + TS on 3 seeds of 10 images; ``gaps[i]``: the boundary gap
    TS leaves on image i (CE leaves none)."""
    records = []
    for seed in range(3):
        noise = 0.3 * seed
        raw = [_image(0.0, noise) for _ in range(10)]
        scaled = [_image(gap, noise) for gap in gaps]
        test = {}
        for name, rows, nll in (('raw', raw, 0.3), ('ts', scaled, 0.2)):
            metrics = metrics_from_sums(np.sum(rows, axis=0), 1, 2)
            test[name] = {'ECE': float(metrics['ECE']), 'NLL': nll,
                          'fg/ECE': float(metrics['fg/ECE']),
                          'ECE_boundary': float(metrics['ECE_boundary'])}
        records.append(dict(key=f'ce{seed}', seed=seed, test=test,
                            fits=dict(ts=dict(kept=True)),
                            test_images=dict(num_bins=1, num_classes=2, images=10,
                                             outputs=dict(raw=raw, ts=scaled))))
    return [Row('CE', 'ce', 'raw', records), Row('CE + TS', 'ce', 'ts', records)]


def test_a_calibrator_that_moves_the_error_to_the_boundaries_is_flagged():
    flags = posthoc_flags(_rows([3.0] * 10))
    assert len(flags) == 1
    # 3 of 20 boundary pixels' accuracy on each image (15 points), less the seed
    # noise that narrows TS's gap and widens CE's (0.6 point on the mean seed)
    assert flags[0].startswith('CE + TS lowers the pooled NLL of CE but raises its '
                               'boundary ECE by 14.40 ± ')
    assert 'beyond noise at 0.05 / 2' in flags[0]


def test_no_flag_without_a_rise_or_when_one_image_makes_it():
    assert posthoc_flags(_rows([0.0] * 10)) == []
    # the same total rise, all on one image: the image resamples see its luck
    assert posthoc_flags(_rows([30.0] + [0.0] * 9)) == []


def test_the_paired_change_keeps_its_level_under_the_null():
    """Identical rows up to seed noise: the one-sided test rejects at about its
    level (3 seeds, 2,000 simulated pairs), and finds a true rise."""
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 1.0, size=(2000, 1, 3))  # the seed's luck, shared
    null = shared + rng.normal(0, 0.2, size=(2000, 2, 3))
    p_values = np.array([paired_change(v).p_value for v in null])
    assert np.mean(p_values < 0.05) == pytest.approx(0.05, abs=0.015)
    risen = null.copy()
    risen[:, 1] += 0.8
    assert np.mean([paired_change(v).p_value < 0.05 for v in risen]) > 0.6
