"""Streaming calibration statistics against plain loops and closed forms."""
import math

import numpy as np
import pytest
import torch

from cals_seg.evaluation.accumulator import CalibrationTotals
from cals_seg.functional.calibration import (CalibrationStatistics,
                                             calibration_errors,
                                             calibration_statistics)
from calibration_reference import reference_metrics, softmax

SCALARS = ('ECE', 'MCE', 'CECE', 'NLL', 'Brier')


def _image(seed, num_classes=5, shape=(12, 17), ignore_share=0.1):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (num_classes, ) + shape) * rng.uniform(0.5, 4)
    labels = rng.integers(0, num_classes, shape)
    labels[rng.random(shape) < ignore_share] = 255
    return logits.astype(np.float32), labels


def _errors(logits, labels, **kwargs):
    stats = calibration_statistics(torch.from_numpy(logits),
                                   torch.from_numpy(labels), **kwargs)
    return calibration_errors(stats), stats


@pytest.mark.parametrize('exclude', [(), (0, ), (1, 3)])
def test_dataset_reduction_matches_plain_loops(exclude):
    images = [_image(seed) for seed in range(3)]
    totals = CalibrationTotals(5, 15, 2**16, 'dataset')
    total = totals.zeros()
    for logits, labels in images:
        stats = calibration_statistics(torch.from_numpy(logits),
                                       torch.from_numpy(labels),
                                       exclude_classes=exclude)
        total += totals.encode(stats)
    result = totals.decode(total)
    pooled_logits = np.concatenate([lg.reshape(5, -1) for lg, _ in images], axis=1)
    pooled_labels = np.concatenate([lb.reshape(-1) for _, lb in images])
    expected = reference_metrics(pooled_logits, pooled_labels, exclude=exclude)
    for key in SCALARS:
        assert result[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
    np.testing.assert_allclose(result['CECE_per_class'], expected['CECE_per_class'],
                               rtol=1e-6, atol=1e-9)
    assert abs(result['AECE'] - expected['AECE']) <= result['aece_error_bound'] + 1e-6


def test_image_reduction_averages_per_image_loops():
    images = [_image(seed) for seed in range(4)]
    totals = CalibrationTotals(5, 10, 2**16, 'image')
    total = totals.zeros()
    for logits, labels in images:
        total += totals.encode(
            calibration_statistics(torch.from_numpy(logits),
                                   torch.from_numpy(labels), num_bins=10))
    result = totals.decode(total)
    expected = [
        reference_metrics(lg.reshape(5, -1), lb.reshape(-1), num_bins=10)
        for lg, lb in images
    ]
    for key in SCALARS:
        assert result[key] == pytest.approx(
            np.mean([e[key] for e in expected]), rel=1e-6, abs=1e-9), key
    assert result['num_images'] == 4


def test_ece_and_mce_match_torchmetrics():
    torchmetrics = pytest.importorskip('torchmetrics.classification')
    logits, labels = _image(11, shape=(40, 50), ignore_share=0.0)
    result, _ = _errors(logits, labels)
    probs = torch.from_numpy(softmax(logits.reshape(5, -1)).T).float()
    target = torch.from_numpy(labels.reshape(-1))
    for key, norm in (('ECE', 'l1'), ('MCE', 'max')):
        reference = torchmetrics.MulticlassCalibrationError(
            num_classes=5, n_bins=15, norm=norm)(probs, target)
        assert result[key] == pytest.approx(100 * reference.item(), abs=1e-3)


def test_perfectly_calibrated_data_has_ece_near_zero():
    rng = np.random.default_rng(0)
    num_classes, n = 4, 400_000
    logits = (rng.normal(0, 1, (num_classes, n)) * 2).astype(np.float32)
    prob = softmax(logits)
    labels = (rng.random(n)[None] > np.cumsum(prob, axis=0)).sum(axis=0)
    result, _ = _errors(logits, labels)
    # Sampling error of a bin with n_b pixels is about sqrt(p(1-p)/n_b); pooled
    # over bins it stays below sqrt(B / (4 n)), 0.3% here.
    assert result['ECE'] < 100 * math.sqrt(15 / (4 * n))
    assert result['CECE'] < 100 * math.sqrt(15 / (4 * n))


def test_constructed_miscalibration_has_closed_form_values():
    # Every pixel is 90% confident in class 0, which is right for 60% of them.
    n = 1000
    logits = np.tile(np.log([[0.9], [0.1]]), (1, n)).astype(np.float32)
    labels = np.array([0] * 600 + [1] * 400)
    result, _ = _errors(logits, labels)
    assert result['ECE'] == pytest.approx(30.0, abs=1e-4)
    assert result['MCE'] == pytest.approx(30.0, abs=1e-4)
    assert result['AECE'] == pytest.approx(30.0, abs=1e-4)
    assert result['CECE'] == pytest.approx(30.0, abs=1e-4)
    assert result['NLL'] == pytest.approx(-(0.6 * math.log(0.9) +
                                            0.4 * math.log(0.1)), rel=1e-5)
    assert result['Brier'] == pytest.approx(0.6 * 0.02 + 0.4 * 1.62, rel=1e-5)


@pytest.mark.parametrize('num_cells', [64, 1024, 2**16])
def test_aece_within_documented_bound_of_exact_sort(num_cells):
    logits, labels = _image(21, shape=(60, 70), ignore_share=0.05)
    result, _ = _errors(logits, labels, num_cells=num_cells)
    exact = reference_metrics(logits.reshape(5, -1), labels.reshape(-1))['AECE']
    assert abs(result['AECE'] - exact) <= result['aece_error_bound'] + 1e-6


def test_aece_bound_is_informative_on_few_pixels():
    # 2,000 pixels: the old bound (a pixel per boundary for rounding, plus whole
    # straddling cells) said "within 8.9"; whole-pixel edges make it ~0.
    logits, labels = _image(23, shape=(40, 50), ignore_share=0.0)
    result, _ = _errors(logits, labels)
    exact = reference_metrics(logits.reshape(5, -1), labels.reshape(-1))['AECE']
    assert result['aece_error_bound'] < 0.05
    assert abs(result['AECE'] - exact) <= result['aece_error_bound'] + 1e-6


def test_aece_bound_is_small_for_many_pixels():
    logits, labels = _image(22, shape=(400, 500), ignore_share=0.05)
    result, _ = _errors(logits, labels)
    assert result['aece_error_bound'] < 0.1  # percent


def test_ignored_and_excluded_pixels_change_nothing():
    logits, labels = _image(5)
    result, stats = _errors(logits, labels, exclude_classes=(2, ))
    changed = logits.copy()
    hidden = (labels == 255) | (labels == 2)
    changed[:, hidden] = np.random.default_rng(1).normal(0, 50, (5, hidden.sum()))
    again, _ = _errors(changed, labels, exclude_classes=(2, ))
    for key in SCALARS + ('AECE', ):
        assert again[key] == result[key]
    assert float(stats.num_pixels) == (~hidden).sum()


def test_statistics_flatten_round_trip():
    _, stats = _errors(*_image(3))
    flat = stats.flatten()
    back = CalibrationStatistics.unflatten(flat, 5, 15, 2**16)
    for a, b in zip(stats, back):
        assert torch.equal(a, b)


def test_bad_labels_are_named():
    logits, labels = _image(4)
    labels[0, 0] = 7
    with pytest.raises(ValueError, match=r'\[7\] outside \[0, 5\)'):
        _errors(logits, labels)
    with pytest.raises(ValueError, match='do not match'):
        _errors(logits, labels[:, :3])


def test_nonfinite_logits_are_named():
    logits, labels = _image(4)
    logits[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r'NaN or infinite values \(1 pixels\)'):
        _errors(logits, labels)


def test_no_pixel_gives_nan_not_a_crash():
    logits, labels = _image(4)
    labels[:] = 255
    result, _ = _errors(logits, labels)
    assert all(math.isnan(result[k]) for k in SCALARS)
