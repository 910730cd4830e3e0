"""LTS and selective scaling: what they learn from data made with a known local
temperature or a known misprediction pattern, and their file round trips."""
import pytest
import torch
import torch.nn.functional as F

from cals_seg.calibrators import (LocalTemperatureScaling, SelectiveScaling,
                                  TemperatureScaling, load_calibrator)

C = 4


def _maps(temperature_of, count=12, size=32, seed=0):
    """Logit maps, images, and labels drawn from ``softmax(z / T(image))``."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(count, C, size, size, generator=generator,
                         dtype=torch.float64) * 3
    images = torch.zeros(count, 3, size, size, dtype=torch.float64)
    images[:, :, :, size // 2:] = 255  # the right half is bright
    temperature = temperature_of(images)
    prob = torch.softmax(logits / temperature, dim=1)
    labels = torch.multinomial(prob.movedim(1, -1).reshape(-1, C), 1,
                               generator=generator).reshape(count, size, size)
    return logits, images, labels


def test_lts_without_image_recovers_a_global_temperature():
    logits, _, labels = _maps(lambda images: 2.0)
    calibrator = LocalTemperatureScaling(C)
    record = calibrator.fit(logits, labels, max_iterations=60)
    assert record.kept and record.nll_after < record.nll_before
    with torch.no_grad():
        temperature = calibrator.temperature(logits)
    assert float(temperature.median()) == pytest.approx(2.0, rel=0.15)


def test_lts_with_image_learns_where_the_temperature_changes():
    # Left half: T = 1, right (bright) half: T = 3; only the image tells them
    # apart, so global temperature scaling cannot fit both.
    def temperature_of(images):
        return 1 + 2 * images[:, :1] / 255

    logits, images, labels = _maps(temperature_of, count=16)
    calibrator = LocalTemperatureScaling(C, use_image=True)
    record = calibrator.fit(logits, labels, images=images, max_iterations=100)
    with torch.no_grad():
        fitted = calibrator.temperature(logits, images)
    inner = fitted[:, 0, 4:-4]  # away from the seam the 5x5 dilated maps see
    assert float(inner[:, :, :10].median()) == pytest.approx(1.0, rel=0.25)
    assert float(inner[:, :, -10:].median()) == pytest.approx(3.0, rel=0.25)
    scaling = TemperatureScaling(C)
    pixels = logits.movedim(1, -1).reshape(-1, C)
    global_record = scaling.fit(pixels, labels.reshape(-1))
    assert record.nll_after < global_record.nll_after - 0.01


def test_lts_needs_maps_and_named_images(tmp_path):
    logits, images, labels = _maps(lambda images: 1.0, count=2)
    with pytest.raises(ValueError, match='maps'):
        LocalTemperatureScaling(C).fit(logits.movedim(1, -1).reshape(-1, C),
                                       labels.reshape(-1))
    with pytest.raises(ValueError, match='needs the images'):
        LocalTemperatureScaling(C, use_image=True).fit(logits, labels)
    calibrator = LocalTemperatureScaling(C, use_image=True)
    calibrator.fit(logits, labels, images=images, max_iterations=5)
    calibrator.save(tmp_path / 'lts.pth')
    loaded = load_calibrator(str(tmp_path / 'lts.pth'), num_classes=C)
    assert loaded.use_image and loaded.fit_record == calibrator.fit_record
    torch.testing.assert_close(loaded(logits, images), calibrator(logits, images))


def _mispredictions(pixels=40_000, seed=0):
    """Pixels whose prediction is wrong exactly when class 1 is the runner-up
    of class 0 (a pattern of the probabilities a detector can learn); those are
    as confident as the right ones, so one temperature cannot fix them."""
    generator = torch.Generator().manual_seed(seed)
    top = torch.randint(0, C, (pixels, ), generator=generator)
    logits = torch.randn(pixels, C, generator=generator, dtype=torch.float64)
    logits[torch.arange(pixels), top] += 6
    confused = (top == 0) & (torch.rand(pixels, generator=generator) < 0.5)
    logits[confused, 1] += 4
    labels = torch.where(confused, torch.ones_like(top), top)
    return logits, labels, confused


def test_selective_scaling_flags_the_learnable_mispredictions():
    logits, labels, confused = _mispredictions()
    calibrator = SelectiveScaling(C, iterations=600)
    record = calibrator.fit(logits, labels)
    test_logits, test_labels, test_confused = _mispredictions(seed=1)
    with torch.no_grad():
        flagged = calibrator.flagged(test_logits)
        calibrated = calibrator(test_logits)
    assert float((flagged == test_confused).float().mean()) > 0.97
    assert calibrator.wrong_temperature > 3
    scaling = TemperatureScaling(C)
    scaling.fit(logits, labels)
    with torch.no_grad():
        selective_nll = F.cross_entropy(calibrated, test_labels)
        scaling_nll = F.cross_entropy(scaling(test_logits), test_labels)
    assert record.kept and float(selective_nll) < 0.75 * float(scaling_nll)


def test_selective_scaling_round_trip_and_identity(tmp_path):
    logits, labels, _ = _mispredictions(pixels=5000)
    calibrator = SelectiveScaling(C, iterations=50)
    calibrator.fit(logits, labels)
    calibrator.save(tmp_path / 'selective.pth')
    loaded = load_calibrator(str(tmp_path / 'selective.pth'))
    maps = logits[:64].T.reshape(1, C, 8, 8)
    torch.testing.assert_close(loaded(maps), calibrator(maps))
    calibrator.identity()
    torch.testing.assert_close(calibrator(maps), maps)


def test_selective_scaling_fits_reproducibly():
    logits, labels, _ = _mispredictions(pixels=4000)
    first, second = SelectiveScaling(C, iterations=30), SelectiveScaling(C,
                                                                      iterations=30)
    torch.rand(7)  # the global random state differs between the two fits
    first.fit(logits, labels)
    second.fit(logits, labels)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(a, b)
