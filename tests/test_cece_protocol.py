"""Class-wise ECE averaged over 'all' classes or the 'present' ones (0..max label),
the CRaC and NACL authors' protocol, against the loop reference."""
import numpy as np
import pytest
import torch

from cals_seg.evaluation.accumulator import CalibrationTotals
from cals_seg.functional.calibration import (calibration_errors,
                                             calibration_statistics)

from calibration_reference import reference_metrics


def _images(seed=0, num_classes=6):
    rng = np.random.default_rng(seed)
    # Labels only up to class 3 in the first image and up to 1 in the second:
    # classes 4 and 5 (and 2, 3 in the second) are absent.
    images = []
    for top in (3, 1):
        logits = rng.normal(scale=3, size=(num_classes, 12, 10)).astype(np.float32)
        labels = rng.integers(0, top + 1, size=(12, 10))
        labels[0, :3] = 255
        images.append((logits, labels))
    return images


@pytest.mark.parametrize('backend', ['kernel', 'torch'])
def test_present_classes_average_over_zero_to_max_label(backend):
    logits, labels = _images()[0]
    stats = calibration_statistics(torch.from_numpy(logits), torch.from_numpy(labels),
                                   backend=backend)
    reference = reference_metrics(logits.reshape(6, -1), labels.reshape(-1))
    per_class = reference['CECE_per_class']
    every = calibration_errors(stats)
    present = calibration_errors(stats, cece_classes='present')
    assert every['CECE'] == pytest.approx(per_class.mean(), rel=1e-6)
    assert present['CECE'] == pytest.approx(per_class[:4].mean(), rel=1e-6)
    assert present['CECE'] > every['CECE']  # the absent classes' columns are small
    np.testing.assert_allclose(present['CECE_per_class'], per_class, rtol=1e-6)


def test_present_classes_are_per_image_under_the_image_reduction():
    images = _images()
    totals = CalibrationTotals(6, 15, 2**10, 'image', cece_classes='present')
    total = totals.zeros()
    expected = []
    for logits, labels in images:
        stats = calibration_statistics(torch.from_numpy(logits),
                                       torch.from_numpy(labels), num_cells=2**10)
        total += totals.encode(stats)
        per_class = reference_metrics(logits.reshape(6, -1),
                                      labels.reshape(-1))['CECE_per_class']
        top = int(labels[labels != 255].max())
        expected.append(per_class[:top + 1].mean())
    assert totals.decode(total)['CECE'] == pytest.approx(np.mean(expected), rel=1e-6)


def test_unknown_cece_classes_is_a_clear_error():
    logits, labels = _images()[0]
    stats = calibration_statistics(torch.from_numpy(logits), torch.from_numpy(labels))
    with pytest.raises(ValueError, match="cece_classes must be one of"):
        calibration_errors(stats, cece_classes='seen')
    with pytest.raises(ValueError, match="cece_classes must be one of"):
        CalibrationTotals(6, 15, 2**10, cece_classes='seen')
