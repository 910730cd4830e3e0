"""Boundary ECE, thresholded CECE, selective risk and per-image ECE quantiles
against plain numpy loops, sklearn and closed forms."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cals_seg.evaluation.accumulator import (CalibrationTotals,
                                             image_ece_quantile)
from cals_seg.functional.calibration import (calibration_errors,
                                             calibration_statistics)
from cals_seg.functional.neighbourhood import boundary_mask
from calibration_reference import binned_gaps, reference_metrics, softmax


def _blocky_image(seed, num_classes=4, shape=(30, 36), block=3, scale=2.0):
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, num_classes, (shape[0] // block, shape[1] // block))
    labels = np.kron(blocks, np.ones((block, block), dtype=np.int64))
    logits = rng.normal(0, scale, (num_classes, ) + shape)
    logits += 2 * np.eye(num_classes)[labels].transpose(2, 0, 1)
    labels[rng.random(shape) < 0.05] = 255
    return logits.astype(np.float32), labels


def _errors(logits, labels, **kwargs):
    stats = calibration_statistics(torch.from_numpy(logits),
                                   torch.from_numpy(labels), **kwargs)
    return calibration_errors(stats)


def _loop_boundary(labels, width):
    height, wide = labels.shape
    result = np.zeros_like(labels, dtype=bool)
    for i in range(height):
        for j in range(wide):
            window = labels[max(0, i - width):i + width + 1,
                            max(0, j - width):j + width + 1]
            result[i, j] = bool((window != labels[i, j]).any())
    return result


@pytest.mark.parametrize('width', [1, 2, 4])
def test_boundary_mask_matches_a_window_loop(width):
    _, labels = _blocky_image(0)
    got = boundary_mask(torch.from_numpy(labels), width).numpy()
    np.testing.assert_array_equal(got, _loop_boundary(labels, width))


def test_boundary_and_interior_ece_are_the_ece_of_their_pixels():
    logits, labels = _blocky_image(1)
    result = _errors(logits, labels, boundary_width=2)
    near = _loop_boundary(labels, 2).reshape(-1)
    flat_logits, flat_labels = logits.reshape(4, -1), labels.reshape(-1)
    for key, members in (('ECE_boundary', near), ('ECE_interior', ~near)):
        expected = reference_metrics(flat_logits[:, members], flat_labels[members])
        assert result[key] == pytest.approx(expected['ECE'], rel=1e-6), key
    assert 0 < result['boundary_pixels'] < (labels != 255).sum()


def test_no_boundary_split_without_a_width():
    logits, labels = _blocky_image(2)
    result = _errors(logits, labels)
    assert np.isnan(result['ECE_boundary'])
    assert result['ECE_interior'] == pytest.approx(result['ECE'], rel=1e-9)
    with pytest.raises(ValueError, match='label maps'):
        calibration_statistics(torch.from_numpy(logits.reshape(4, -1)),
                               torch.from_numpy(labels.reshape(-1)),
                               boundary_width=1)


def _crac_thresholded_cece(logits, labels, threshold, num_bins=15):
    """Bala93/CRac's ThreshClasswiseECELoss, as a numpy loop over classes."""
    keep = labels != 255
    prob, y = softmax(logits[:, keep]), labels[keep]
    per_class = []
    for k in range(prob.shape[0]):
        above = prob[k] > threshold
        if not above.any():
            per_class.append(0.0)
            continue
        hits = (y[above] == k).astype(float)
        gaps = binned_gaps(prob[k][above], hits, num_bins)
        per_class.append(sum(count / above.sum() * gap for count, gap in gaps))
    return 100 * np.mean(per_class)


@pytest.mark.parametrize('threshold', [1e-3, 0.03])
def test_thresholded_cece_matches_crac_loop(threshold):
    logits, labels = _blocky_image(3, scale=4.0)
    result = _errors(logits, labels, class_threshold=threshold)
    expected = _crac_thresholded_cece(logits.reshape(4, -1), labels.reshape(-1),
                                      threshold)
    assert result['CECE_thresholded'] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match='class_threshold'):
        _errors(logits, labels, class_threshold=0.5)


def _sorted_risks(logits, labels):
    keep = labels != 255
    prob, y = softmax(logits[:, keep]), labels[keep]
    confidence = prob.max(axis=0)
    wrong = (prob.argmax(axis=0) != y).astype(float)
    order = np.argsort(-confidence, kind='stable')
    risk = np.cumsum(wrong[order]) / np.arange(1, len(order) + 1)
    return confidence, wrong, risk


@pytest.mark.parametrize('num_cells', [2**16, 16])
def test_selective_risk_and_auroc_within_their_bounds(num_cells):
    logits, labels = _blocky_image(4)
    result = _errors(logits.reshape(4, -1), labels.reshape(-1), num_cells=num_cells)
    confidence, wrong, risk = _sorted_risks(logits.reshape(4, -1), labels.reshape(-1))
    expected = {'AURC': 100 * risk.mean(),
                'AUROC': 100 * roc_auc_score(1 - wrong, confidence)}
    for q in (80, 90, 95):
        expected[f'risk@{q}'] = 100 * risk[int(np.ceil(q / 100 * len(risk))) - 1]
    for key, value in expected.items():
        bound = result[f'{key}_error_bound']
        assert abs(result[key] - value) <= bound + 1e-9, key
        if num_cells == 2**16:  # distinct confidences: essentially exact
            assert bound < 0.01, key
    if num_cells == 16:  # coarse cells: the bound is needed, and informative
        assert result['AURC_error_bound'] > 0.01
        assert result['AUROC_error_bound'] < 10


def test_selective_risk_closed_forms():
    # Confident pixels all right, unsure ones all wrong: AUROC 100, risk 0
    # up to their share; with one confidence for all, AUROC is 50 exactly.
    logits = np.zeros((2, 100), dtype=np.float32)
    logits[0, :60] = 5
    logits[0, 60:] = 0.5
    labels = np.array([0] * 60 + [1] * 40)
    result = _errors(logits, labels)
    assert result['AUROC'] == pytest.approx(100)
    assert result['risk@80'] == pytest.approx(100 * 20 / 80)
    flat = _errors(np.zeros((2, 100), np.float32), labels)
    assert flat['AUROC'] == pytest.approx(50)
    assert flat['AURC'] == pytest.approx(40, abs=flat['AURC_error_bound'] + 1e-9)
    all_right = _errors(logits, np.zeros(100, dtype=np.int64))
    assert np.isnan(all_right['AUROC']) and all_right['AURC'] == 0


def test_per_image_ece_quantiles_match_numpy():
    totals = CalibrationTotals(4, 15, 2**10, 'dataset')
    total, eces = totals.zeros(), []
    for seed in range(23):
        logits, labels = _blocky_image(seed, shape=(12, 12))
        stats = calibration_statistics(torch.from_numpy(logits),
                                       torch.from_numpy(labels), num_cells=2**10)
        total += totals.encode(stats)
        eces.append(calibration_errors(stats)['ECE'])
    result = totals.decode(total)
    assert result['num_images'] == 23
    for q, key in ((0.5, 'ECE_image_median'), (0.9, 'ECE_image_p90')):
        exact = np.sort(eces)[int(np.ceil(q * 23)) - 1]  # nearest rank
        assert abs(result[key] - exact) <= 0.005 + 1e-9, key
    assert np.isnan(image_ece_quantile(np.zeros(10), 0.5))
