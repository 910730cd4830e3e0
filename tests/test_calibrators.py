"""Post-hoc calibrators: parameters recovered from labels drawn with them, the
no-silent-failure rules, files, and application to image-shaped logits."""
import pytest
import torch

from cals_seg.calibrators import (Calibrator, CalibratorFileError,
                                  ClassTemperatureScaling, DirichletScaling,
                                  TemperatureScaling, VectorScaling,
                                  load_calibrator)

C = 4


def _draw(calibrated_logits_of, pixels=60_000, seed=0):
    """Raw logits and labels drawn from ``softmax(calibrated_logits_of(z))``."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(pixels, C, generator=generator, dtype=torch.float64) * 3
    prob = torch.softmax(calibrated_logits_of(logits), dim=1)
    labels = torch.multinomial(prob, 1, generator=generator).squeeze(1)
    return logits, labels, prob


def test_temperature_is_recovered():
    logits, labels, _ = _draw(lambda z: z / 2.5)
    calibrator = TemperatureScaling(C)
    record = calibrator.fit(logits, labels)
    assert calibrator.temperature == pytest.approx(2.5, rel=0.03)
    assert record.kept and record.nll_after < record.nll_before


def test_class_temperatures_are_recovered():
    temperatures = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    logits, labels, _ = _draw(lambda z: z / temperatures)
    calibrator = ClassTemperatureScaling(C)
    calibrator.fit(logits, labels)
    fitted = calibrator.log_temperature.detach().exp()
    torch.testing.assert_close(fitted, temperatures, rtol=0.1, atol=0)


def test_vector_scaling_recovers_scales_and_bias_differences():
    scale = torch.tensor([0.4, 0.8, 1.5, 0.6], dtype=torch.float64)
    bias = torch.tensor([0.5, -0.5, 0.0, 1.0], dtype=torch.float64)
    logits, labels, _ = _draw(lambda z: z * scale + bias)
    calibrator = VectorScaling(C)
    calibrator.fit(logits, labels)
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
    logits, labels, prob = _draw(
        lambda z: torch.log_softmax(z, dim=1) @ weight.T + bias)
    calibrator = DirichletScaling(C, off_diagonal=0.0, intercept=0.0)
    record = calibrator.fit(logits, labels)
    with torch.no_grad():
        fitted = torch.softmax(calibrator.transform(logits), dim=1)
    assert (fitted - prob).abs().mean() < 0.01
    true_nll = float(torch.nn.functional.nll_loss(prob.log(), labels))
    assert record.nll_after == pytest.approx(true_nll, abs=0.01)


def test_fit_works_under_no_grad():
    logits, labels, _ = _draw(lambda z: z / 2.0, pixels=5000)
    with torch.no_grad():
        record = VectorScaling(C).fit(logits, labels)
    assert record.kept and record.nll_after < record.nll_before


def test_bounded_temperature_on_separable_pixels():
    logits = torch.eye(C, dtype=torch.float64).repeat(50, 1) * 5
    labels = logits.argmax(1)
    calibrator = TemperatureScaling(C)
    calibrator.fit(logits, labels)
    assert calibrator.temperature == pytest.approx(1e-3)


class _Broken(TemperatureScaling):
    """A fit that lands far from the minimum, as a diverged optimiser would."""

    def _minimise(self, logits, labels, images, max_iterations):
        with torch.no_grad():
            self.log_temperature.fill_(6.0)


def test_fit_that_raises_the_heldout_nll_is_undone_with_a_warning():
    logits, labels, _ = _draw(lambda z: z)
    calibrator = _Broken(C)
    with pytest.warns(UserWarning, match=r'did not lower the held-out NLL \('):
        record = calibrator.fit(logits, labels)
    assert not record.kept and calibrator.temperature == 1.0
    assert record.nll_after == record.nll_before


@pytest.mark.parametrize('logits, labels, message', [
    (torch.zeros(0, C), torch.zeros(0, dtype=torch.long), 'no pixels'),
    (torch.full((3, C), float('nan')), torch.zeros(3, dtype=torch.long), 'NaN'),
    (torch.zeros(3, C), torch.tensor([0, 1, C]), 'labels must be in'),
    (torch.zeros(3, C + 1), torch.zeros(3, dtype=torch.long), f'fitted for {C} classes'),
])
def test_bad_fit_input_is_named(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        VectorScaling(C).fit(logits, labels)


@pytest.mark.parametrize('kind', [TemperatureScaling, ClassTemperatureScaling,
                                  VectorScaling, DirichletScaling])
def test_save_load_apply_to_image_logits(kind, tmp_path):
    logits, labels, _ = _draw(lambda z: z / 2, pixels=4000)
    calibrator = kind(C)
    calibrator.fit(logits, labels)
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
    foreign = tmp_path / 'foreign.pth'
    torch.save(dict(version=1, type='CALSLoss', num_classes=C, state_dict={},
                    fit_record=None), str(foreign))
    with pytest.raises(CalibratorFileError, match="'CALSLoss' is not a calibrator"):
        load_calibrator(str(foreign))


def test_calibrators_are_registered_for_configs():
    from mmseg.registry import MODELS
    built = MODELS.build(dict(type='DirichletScaling', num_classes=3))
    assert isinstance(built, Calibrator)
