"""LTS and selective scaling: what they learn from data made with a known local
temperature or a known misprediction pattern, and their file round trips; and
every calibrator's tensors following its inputs' device."""
import os.path as osp
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from cals_seg.calibrators import (SHORT_NAMES, CalibratorInputError,
                                  LocalTemperatureScaling, SelectiveScaling,
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
    record = calibrator.fit(logits, labels, torch.arange(12), max_iterations=60)
    assert record.kept and record.check_nll_after < record.check_nll_before
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
    # 30 iterations: at 100 the fits reach temperatures of 1e-3 on confident
    # pixels that were right on their images, and the out-of-fold NLL of the
    # 16 images rises from 1.05 to 4.35 (undone); at 30 it falls to 0.85.
    record = calibrator.fit(logits, labels, torch.arange(16), images=images,
                            max_iterations=30)
    with torch.no_grad():
        fitted = calibrator.temperature(logits, images)
    inner = fitted[:, 0, 4:-4]  # away from the seam the 5x5 dilated maps see
    assert float(inner[:, :, :10].median()) == pytest.approx(1.0, rel=0.25)
    assert float(inner[:, :, -10:].median()) == pytest.approx(3.0, rel=0.25)
    scaling = TemperatureScaling(C)
    pixels = logits.movedim(1, -1).reshape(-1, C)
    pixel_ids = torch.arange(16).repeat_interleave(32 * 32)
    global_record = scaling.fit(pixels, labels.reshape(-1), pixel_ids)
    # LTS fits what one temperature cannot.
    assert record.kept
    assert record.fit_nll_after < global_record.fit_nll_after - 0.05


def test_lts_needs_maps_and_named_images(tmp_path):
    logits, images, labels = _maps(lambda images: 1.0, count=2)
    with pytest.raises(ValueError, match='maps'):
        LocalTemperatureScaling(C).fit(logits.movedim(1, -1).reshape(-1, C),
                                       labels.reshape(-1),
                                       torch.arange(2).repeat_interleave(32 * 32))
    with pytest.raises(ValueError, match='needs the images'):
        LocalTemperatureScaling(C, use_image=True).fit(logits, labels,
                                                       torch.arange(2))
    calibrator = LocalTemperatureScaling(C, use_image=True)
    calibrator.fit(logits, labels, torch.arange(2), images=images, max_iterations=5)
    calibrator.save(tmp_path / 'lts.pth')
    loaded = load_calibrator(str(tmp_path / 'lts.pth'), num_classes=C)
    assert loaded.use_image and loaded.fit_record == calibrator.fit_record
    torch.testing.assert_close(loaded(logits, images), calibrator(logits, images))


def test_lts_takes_maps_down_to_what_reflect_padding_needs():
    """Each map reaches 4 pixels to each side, padded by reflection: 5 x 5
    maps work (fit and apply), 4 x 4 ones are a clear error."""
    logits, _, labels = _maps(lambda images: 2.0, count=4, size=5)
    calibrator = LocalTemperatureScaling(C)
    calibrator.fit(logits, labels, torch.arange(4), max_iterations=5)
    assert calibrator(logits).shape == logits.shape
    with pytest.raises(CalibratorInputError, match=r'at least 5 x 5 pixels .*'
                       r'got \(4, 9\)'):
        calibrator(torch.zeros(1, C, 4, 9))


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
    record = calibrator.fit(logits, labels, _ids(logits))
    test_logits, test_labels, test_confused = _mispredictions(seed=1)
    with torch.no_grad():
        flagged = calibrator.flagged(test_logits)
        calibrated = calibrator(test_logits)
    assert float((flagged == test_confused).float().mean()) > 0.97
    assert calibrator.wrong_temperature > 3
    scaling = TemperatureScaling(C)
    scaling.fit(logits, labels, _ids(logits))
    with torch.no_grad():
        selective_nll = F.cross_entropy(calibrated, test_labels)
        scaling_nll = F.cross_entropy(scaling(test_logits), test_labels)
    assert record.kept and float(selective_nll) < 0.75 * float(scaling_nll)


def test_selective_scaling_round_trip_and_identity(tmp_path):
    logits, labels, _ = _mispredictions(pixels=5000)
    calibrator = SelectiveScaling(C, iterations=50)
    calibrator.fit(logits, labels, _ids(logits))
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
    first.fit(logits, labels, _ids(logits))
    second.fit(logits, labels, _ids(logits))
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_selective_scaling_refits_from_the_start():
    """identity() resets the detector too: a second fit of the same
    calibrator (each fit starts from identity()) gives the first one's
    parameters, not a continuation of its training."""
    logits, labels, _ = _mispredictions(pixels=4000)
    calibrator = SelectiveScaling(C, iterations=200)
    fresh = {k: v.clone() for k, v in calibrator.state_dict().items()}
    calibrator.fit(logits, labels, _ids(logits))
    first = {k: v.clone() for k, v in calibrator.state_dict().items()}
    trained = [k for k in fresh if k.startswith('detector.')
               and not torch.equal(first[k], fresh[k])]
    assert trained  # the detector learned: a refit could start from it
    calibrator.identity()
    for key, value in calibrator.state_dict().items():
        torch.testing.assert_close(value, fresh[key])
    calibrator.fit(logits, labels, _ids(logits))
    for key, value in calibrator.state_dict().items():
        torch.testing.assert_close(value, first[key])


class _UnplacedTensorsOnMeta(TorchFunctionMode):
    """Puts every tensor that calibrator code creates without naming a device
    on the 'meta' device. Mixed with the CPU inputs, such a tensor breaks the
    fit, as one left on the CPU breaks a fit on CUDA inputs; tensors that
    follow their inputs' device are unaffected. Torch's own code is left alone."""
    FACTORIES = {torch.tensor, torch.as_tensor, torch.ones, torch.zeros,
                 torch.full, torch.empty, torch.eye, torch.arange, torch.rand,
                 torch.randn, torch.randint, torch.randperm, torch.linspace}
    PACKAGE = osp.join('cals_seg', 'calibrators') + osp.sep

    def __init__(self):
        super().__init__()
        self.placed = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if (func in self.FACTORIES and kwargs.get('device') is None
                and self.PACKAGE in sys._getframe(1).f_code.co_filename):
            kwargs['device'] = 'meta'
            self.placed += 1
        return func(*args, **kwargs)


def test_the_meta_check_sees_calibrator_code():
    """The check itself: a constructor in calibrator code makes its parameter
    without naming a device, and under the check it lands on 'meta'; tensors
    made here are untouched."""
    mode = _UnplacedTensorsOnMeta()
    with mode:
        scaling = TemperatureScaling(C)
        here = torch.zeros(1)
    assert scaling.log_temperature.device.type == 'meta' and mode.placed == 1
    assert here.device.type == 'cpu'


@pytest.mark.parametrize('name', sorted(SHORT_NAMES))
def test_every_tensor_follows_the_inputs_device(name):
    logits, images, labels = _maps(lambda images: 2.0, count=4, size=12)
    calibrator = SHORT_NAMES[name](C)
    if isinstance(calibrator, SelectiveScaling):
        calibrator = SelectiveScaling(C, iterations=3, batch_size=64)
    data = (logits, labels, torch.arange(4))
    if not calibrator.spatial:
        data = (logits.movedim(1, -1).reshape(-1, C), labels.reshape(-1),
                torch.arange(4).repeat_interleave(12 * 12))
    mode = _UnplacedTensorsOnMeta()
    with mode:
        calibrator.fit(*data, images=images, max_iterations=3)
        out = calibrator(logits, images)
    assert out.device == logits.device and out.shape == logits.shape


def _ids(pixels, images=8):
    """Image ids of interleaved pixels from ``images`` images."""
    return torch.arange(pixels.shape[0]) % images
