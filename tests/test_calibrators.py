"""Post-hoc calibrators: parameters recovered from labels drawn with them, the
no-silent-failure rules (a fit is checked on images it was not fitted on),
files, and application to image-shaped logits."""
import math

import pytest
import torch
import torch.nn.functional as F

from cals_seg.calibrators import (ArgmaxPreservingScaling, Calibrator,
                                  CalibratorFileError, CalibratorInputError,
                                  ClassTemperatureScaling, DirichletScaling,
                                  EnsembleTemperatureScaling,
                                  LocalTemperatureScaling, OrderPreservingScaling,
                                  TemperatureScaling, VectorScaling,
                                  image_folds, load_calibrator)

C = 4
IMAGES = 8


def _draw(calibrated_logits_of, pixels=60_000, seed=0):
    """Raw logits, labels drawn from ``softmax(calibrated_logits_of(z))``, the
    image ids of the pixels (``IMAGES`` images, interleaved) and the
    probabilities."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(pixels, C, generator=generator, dtype=torch.float64) * 3
    prob = torch.softmax(calibrated_logits_of(logits), dim=1)
    labels = torch.multinomial(prob, 1, generator=generator).squeeze(1)
    return logits, labels, torch.arange(pixels) % IMAGES, prob


def test_temperature_is_recovered():
    logits, labels, ids, _ = _draw(lambda z: z / 2.5)
    calibrator = TemperatureScaling(C)
    record = calibrator.fit(logits, labels, ids)
    assert calibrator.temperature == pytest.approx(2.5, rel=0.03)
    assert record.kept and record.check_nll_after < record.check_nll_before


def test_class_temperatures_are_recovered():
    temperatures = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    logits, labels, ids, _ = _draw(lambda z: z / temperatures)
    calibrator = ClassTemperatureScaling(C)
    calibrator.fit(logits, labels, ids)
    fitted = calibrator.log_temperature.detach().exp()
    torch.testing.assert_close(fitted, temperatures, rtol=0.1, atol=0)


def test_vector_scaling_recovers_scales_and_bias_differences():
    scale = torch.tensor([0.4, 0.8, 1.5, 0.6], dtype=torch.float64)
    bias = torch.tensor([0.5, -0.5, 0.0, 1.0], dtype=torch.float64)
    logits, labels, ids, _ = _draw(lambda z: z * scale + bias)
    calibrator = VectorScaling(C)
    calibrator.fit(logits, labels, ids)
    torch.testing.assert_close(calibrator.log_scale.detach().exp(), scale,
                               rtol=0.1, atol=0)
    # Softmax ignores a constant added to every bias: compare differences.
    fitted = calibrator.bias.detach()
    torch.testing.assert_close(fitted - fitted[0], bias - bias[0], rtol=0, atol=0.1)


def test_dirichlet_scaling_recovers_the_calibrated_probabilities():
    weight = torch.tensor([[1.2, 0.3, 0.0, 0.0], [0.0, 0.6, 0.2, 0.0],
                           [0.1, 0.0, 0.9, 0.0], [0.0, 0.0, 0.4, 0.5]],
                          dtype=torch.float64)
    bias = torch.tensor([0.2, -0.3, 0.0, 0.4], dtype=torch.float64)
    logits, labels, ids, prob = _draw(
        lambda z: torch.log_softmax(z, dim=1) @ weight.T + bias)
    calibrator = DirichletScaling(C, off_diagonal=0.0, intercept=0.0)
    record = calibrator.fit(logits, labels, ids)
    with torch.no_grad():
        fitted = torch.softmax(calibrator.transform(logits), dim=1)
    assert (fitted - prob).abs().mean() < 0.01
    # Every fold's fit lands near the truth, so out of fold NLL is the true one.
    true_nll = float(F.nll_loss(prob.log(), labels))
    assert record.check_nll_after == pytest.approx(true_nll, abs=0.01)


def test_fit_works_under_no_grad():
    logits, labels, ids, _ = _draw(lambda z: z / 2.0, pixels=5000)
    with torch.no_grad():
        record = VectorScaling(C).fit(logits, labels, ids)
    assert record.kept and record.check_nll_after < record.check_nll_before


def test_bounded_temperature_on_separable_pixels():
    logits = torch.eye(C, dtype=torch.float64).repeat(50, 1) * 5
    labels = logits.argmax(1)
    calibrator = TemperatureScaling(C)
    calibrator.fit(logits, labels, torch.arange(labels.numel()) % IMAGES)
    assert calibrator.temperature == pytest.approx(1e-3)


class _Broken(TemperatureScaling):
    """A fit that lands far from the minimum, as a diverged optimiser would."""

    def _minimise(self, logits, labels, images, max_iterations):
        with torch.no_grad():
            self.log_temperature.fill_(6.0)


def test_fit_that_raises_the_check_nll_is_undone_with_a_warning():
    logits, labels, ids, _ = _draw(lambda z: z)
    calibrator = _Broken(C)
    with pytest.warns(UserWarning, match=r'raised the out-of-fold NLL of the 8 '
                      r'held-out images \(\d\.\d+ before, \d\.\d+ after, 4 folds'):
        record = calibrator.fit(logits, labels, ids)
    assert not record.kept and calibrator.temperature == 1.0
    assert record.check_nll_after > record.check_nll_before


def test_image_folds_deal_whole_images_by_rank_and_are_deterministic():
    ids = torch.tensor([7, 0, 2, 5, 1, 6, 3, 4, 2, 6, 6, 0])
    # Rank r of the sorted distinct ids goes to fold r mod 4.
    torch.testing.assert_close(image_folds(ids, 4), ids % 4)
    # Ranks count, not the ids' values or positions.
    torch.testing.assert_close(image_folds(ids * 10 + 3, 4), ids % 4)
    # Fewer images than folds: one image a fold.
    assert image_folds(torch.tensor([4, 9, 9]), 4).tolist() == [0, 1, 1]


def test_a_check_split_without_an_image_is_refused():
    logits, labels, _, _ = _draw(lambda z: z, pixels=500)
    with pytest.raises(CalibratorInputError, match='come from 1 image.*two images'):
        TemperatureScaling(C).fit(logits, labels, torch.zeros(500, dtype=torch.long))
    with pytest.raises(CalibratorInputError, match='folds must be an int >= 2'):
        TemperatureScaling(C).fit(logits, labels, torch.arange(500) % 2, folds=1)
    # Two maps, the second (the check image) without a labelled pixel: a
    # pixel-wise calibrator sees one image, a spatial one an empty check part.
    maps = logits.reshape(2, 10, 25, C).permute(0, 3, 1, 2)
    unlabelled = labels.reshape(2, 10, 25).clone()
    unlabelled[1] = 255
    with pytest.raises(CalibratorInputError, match='labelled held-out pixels come '
                       'from 1 image'):
        TemperatureScaling(C).fit(maps, unlabelled, torch.tensor([0, 1]))
    with pytest.raises(CalibratorInputError,
                       match='check fold 1 of the held-out images holds no labelled'):
        LocalTemperatureScaling(C).fit(maps, unlabelled, torch.tensor([0, 1]))


def _grid_temperature(logits, labels):
    """The NLL-minimising temperature on a fine grid: a reference for L-BFGS."""
    grid = torch.exp(torch.linspace(-2.0, 2.5, 9001, dtype=torch.float64))
    nll = torch.stack([F.cross_entropy(logits / t, labels) for t in grid])
    return float(grid[nll.argmin()])


def test_well_specified_temperature_is_kept_and_recovered():
    """Logits three times the true ones, labels drawn from the true softmax:
    temperature scaling is the right model, every fold agrees, the fit is kept
    and finds T = 3; the out-of-fold NLL equals a fold-by-fold grid search's."""
    generator = torch.Generator().manual_seed(5)
    true_logits = torch.randn(6, C, 40, 40, generator=generator,
                              dtype=torch.float64) * 2
    labels = torch.multinomial(
        torch.softmax(true_logits, dim=1).movedim(1, -1).reshape(-1, C), 1,
        generator=generator).reshape(6, 40, 40)
    calibrator = TemperatureScaling(C)
    record = calibrator.fit(3 * true_logits, labels, torch.arange(6))
    assert record.kept and calibrator.temperature == pytest.approx(3.0, rel=0.05)
    assert (record.fit_images, record.check_images, record.check_folds) == (6, 6, 4)
    assert record.fit_pixels == record.check_pixels == 6 * 1600
    before = F.cross_entropy(3 * true_logits, labels)
    assert record.check_nll_before == pytest.approx(float(before), rel=1e-9)
    assert record.fit_nll_before == pytest.approx(float(before), rel=1e-9)
    # Images 0..5 in folds 0, 1, 2, 3, 0, 1: each fold scored at the temperature
    # a grid search finds on the other images.
    folds = torch.arange(6) % 4
    out_of_fold = 0.0
    for fold in range(4):
        held, rest = folds == fold, folds != fold
        temperature = _grid_temperature(3 * true_logits[rest], labels[rest])
        out_of_fold += float(F.cross_entropy(3 * true_logits[held] / temperature,
                                             labels[held], reduction='sum'))
    assert record.check_nll_after == pytest.approx(out_of_fold / labels.numel(),
                                                   rel=1e-5)
    assert record.check_nll_after < record.check_nll_before


def test_a_fit_that_overfits_its_images_is_undone():
    """Four images of 36 pixels, labels drawn from the logits' softmax (the
    identity is the truth), and an unregularised 12-class Dirichlet map: 156
    parameters for 108 pixels a fold. Each fold's fit memorises its images and
    fails the held-out one: the out-of-fold NLL rises, the fit is undone. (On
    the images it was fitted on, the NLL fell: checked there, it would have
    been kept.)"""
    classes = 12
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, classes, 6, 6, generator=generator,
                         dtype=torch.float64) * 2
    labels = torch.multinomial(
        torch.softmax(logits, 1).movedim(1, -1).reshape(-1, classes), 1,
        generator=generator).reshape(4, 6, 6)
    calibrator = DirichletScaling(classes, off_diagonal=0.0, intercept=0.0)
    with pytest.warns(UserWarning, match='raised the out-of-fold NLL of the 4 '
                      'held-out images'):
        record = calibrator.fit(logits, labels, torch.tensor([10, 11, 12, 13]))
    assert not record.kept and record.check_folds == 4
    assert record.fit_nll_after < record.fit_nll_before - 0.1
    assert record.check_nll_after > record.check_nll_before + 0.1
    assert math.isclose(record.check_nll_before,
                        float(F.cross_entropy(logits, labels)), rel_tol=1e-9)
    pixels = logits.movedim(1, -1).reshape(-1, classes)
    with torch.no_grad():  # the identity again
        torch.testing.assert_close(torch.softmax(calibrator.transform(pixels), 1),
                                   torch.softmax(pixels, 1))


@pytest.mark.parametrize('logits, labels, ids, message', [
    (torch.zeros(0, C), torch.zeros(0, dtype=torch.long),
     torch.zeros(0, dtype=torch.long), 'no pixels'),
    (torch.full((3, C), float('nan')), torch.zeros(3, dtype=torch.long),
     torch.arange(3), 'NaN'),
    (torch.zeros(3, C), torch.tensor([0, 1, C]), torch.arange(3),
     'labels must be in'),
    (torch.zeros(3, C + 1), torch.zeros(3, dtype=torch.long), torch.arange(3),
     f'fitted for {C} classes'),
    (torch.zeros(3, C), torch.zeros(3, dtype=torch.long), torch.zeros(3),
     r'image_ids must be integers of shape \(3, \), the image of each pixel'),
    (torch.zeros(3, C), torch.zeros(3, dtype=torch.long), torch.arange(2),
     r'image_ids must be integers of shape \(3, \)'),
])
def test_bad_fit_input_is_named(logits, labels, ids, message):
    with pytest.raises(CalibratorInputError, match=message):
        VectorScaling(C).fit(logits, labels, ids)


@pytest.mark.parametrize('kind', [TemperatureScaling, ClassTemperatureScaling,
                                  VectorScaling, DirichletScaling,
                                  EnsembleTemperatureScaling, ArgmaxPreservingScaling,
                                  OrderPreservingScaling])
def test_save_load_apply_to_image_logits(kind, tmp_path):
    logits, labels, ids, _ = _draw(lambda z: z / 2, pixels=4000)
    calibrator = kind(C)
    calibrator.fit(logits, labels, ids)
    path = str(tmp_path / 'calibrator.pth')
    calibrator.save(path)
    loaded = load_calibrator(path, num_classes=C)
    assert type(loaded) is kind and loaded.fit_record == calibrator.fit_record
    images = torch.randn(2, C, 5, 7)
    out = loaded(images)
    assert out.shape == images.shape and out.dtype == images.dtype
    pixels = images.permute(0, 2, 3, 1).reshape(-1, C).double()
    expected = calibrator.transform(pixels).reshape(2, 5, 7, C).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, expected.float())
    with pytest.raises(ValueError, match='fitted for 4 classes'):
        loaded(torch.randn(1, C + 1, 2, 2))


def _file(path, **content):
    entries = dict(version=3, type='DirichletScaling', num_classes=C, options={},
                   state_dict={}, fit_record=None)
    entries.update(content)
    torch.save(entries, str(path))
    return str(path)


def test_bad_files_are_named(tmp_path):
    calibrator = TemperatureScaling(C)
    path = str(tmp_path / 'ts.pth')
    calibrator.save(path)
    with pytest.raises(CalibratorFileError, match='fitted for 4 classes, the logits '
                       'have 19'):
        load_calibrator(path, num_classes=19)
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'not a torch file')
    with pytest.raises(CalibratorFileError, match='not a calibrator file'):
        load_calibrator(str(corrupt))
    with pytest.raises(CalibratorFileError, match='no such calibrator file'):
        load_calibrator(str(tmp_path / 'missing.pth'))
    foreign = _file(tmp_path / 'foreign.pth', type='CALSLoss')
    with pytest.raises(CalibratorFileError, match="'CALSLoss' is not a calibrator"):
        load_calibrator(foreign)


def test_unknown_type_and_bad_options_are_told_apart(tmp_path):
    unknown = _file(tmp_path / 'unknown.pth', type='NoSuchScaling')
    with pytest.raises(CalibratorFileError, match="unknown calibrator type "
                       "'NoSuchScaling'; known: .*TemperatureScaling"):
        load_calibrator(unknown)
    for options, reason in ((dict(bogus=1), 'unexpected keyword'),
                            (dict(off_diagonal=-1.0), 'off_diagonal')):
        path = _file(tmp_path / 'options.pth', options=options)
        with pytest.raises(CalibratorFileError,
                           match=r'DirichletScaling does not take the options the '
                           rf'file gives \(.*\): .*{reason}'):
            load_calibrator(path)


def test_version_1_files_load_without_their_fit_record(tmp_path):
    fitted = TemperatureScaling(C)
    with torch.no_grad():
        fitted.log_temperature.fill_(math.log(2.0))
    path = _file(tmp_path / 'old.pth', version=1, type='TemperatureScaling',
                 state_dict=fitted.state_dict(), fit_record=[0.9, 0.7, 1000, True])
    with pytest.warns(UserWarning, match='checked on the pixels it was fitted on'):
        loaded = load_calibrator(path, num_classes=C)
    assert loaded.temperature == pytest.approx(2.0) and loaded.fit_record is None


def test_version_2_files_load_with_one_check_fold(tmp_path):
    record = dict(fit_nll_before=0.9, fit_nll_after=0.7, check_nll_before=0.8,
                  check_nll_after=0.75, fit_pixels=300, check_pixels=100,
                  fit_images=3, check_images=1, kept=True)
    path = _file(tmp_path / 'v2.pth', version=2, type='TemperatureScaling',
                 state_dict=TemperatureScaling(C).state_dict(), fit_record=record)
    loaded = load_calibrator(path, num_classes=C)
    assert loaded.fit_record._asdict() == dict(record, check_folds=1)


def test_calibrators_are_registered_for_configs():
    from mmseg.registry import MODELS
    built = MODELS.build(dict(type='DirichletScaling', num_classes=3))
    assert isinstance(built, Calibrator)
    scaling = MODELS.build(dict(type='TemperatureScaling', num_classes=3))
    assert type(scaling).__module__ == 'cals_seg.calibrators.temperature'
