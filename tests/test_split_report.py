"""The benchmark's per-split numbers against plain numpy loops, and temperature
scaling recovering the temperature the data was made with."""
import numpy as np
import pytest
import torch

from cals_seg.calibrators import TemperatureScaling
from cals_seg.evaluation.sampling import sample_pixels
from cals_seg.evaluation.split_report import (RAW, evaluate_split,
                                              fit_calibrators, overconfident_bins,
                                              summarize)
from calibration_reference import reference_metrics, softmax
from helpers import FixedModel, Loader

IGNORE = 255


def _data(seed, images=3, classes=4, size=9, scale=6.0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(images, classes, size, size, generator=generator) * scale
    labels = torch.randint(0, classes, (images, size, size), generator=generator)
    labels[:, 0, :3] = IGNORE
    # A share of pixels labelled with their argmax, so accuracy is not chance.
    agree = torch.rand(images, size, size, generator=generator) < 0.5
    labels = torch.where(agree & (labels != IGNORE), logits.argmax(1), labels)
    return logits, labels, Loader([[(i, labels[i]) for i in range(images)]])


def test_split_numbers_match_plain_loops():
    logits, labels, loader = _data(0)
    images, classes = logits.shape[:2]
    temperature = 1.7
    scaling = TemperatureScaling(classes)
    with torch.no_grad():
        scaling.log_temperature.fill_(np.log(temperature))
    split = evaluate_split(FixedModel(logits), loader, classes,
                           calibrators=dict(ts=scaling), exclude_classes=(0, ),
                           distance_threshold=5.0)
    z = logits.permute(1, 0, 2, 3).reshape(classes, -1).numpy()
    y = labels.reshape(-1).numpy()

    confusion = np.zeros((classes, classes))
    over = pairs = 0
    for i in range(y.size):
        if y[i] == IGNORE:
            continue
        confusion[y[i], z[:, i].argmax()] += 1
        for k in range(classes):
            if k != z[:, i].argmax():
                pairs += 1
                over += (z[:, i].max() - z[k, i]) > 5.0
    np.testing.assert_array_equal(split['confusion'], confusion)
    assert split['distance_share'] == pytest.approx(over / pairs)
    assert split['images'] == ['img0.png', 'img1.png', 'img2.png']

    ious = [confusion[k, k] / (confusion[k].sum() + confusion[:, k].sum() -
                               confusion[k, k]) for k in range(classes)]
    for name, t in ((RAW, 1.0), ('ts', temperature)):
        summary = summarize(split, name)
        pooled = reference_metrics(z / t, y)
        foreground = reference_metrics(z / t, y, exclude=(0, ))
        per_image = [reference_metrics(
            logits[i].reshape(classes, -1).numpy() / t,
            labels[i].reshape(-1).numpy())['ECE'] for i in range(images)]
        assert summary['ECE'] == pytest.approx(pooled['ECE'], abs=1e-6)
        assert summary['NLL'] == pytest.approx(pooled['NLL'], rel=1e-5)
        assert summary['fg/ECE'] == pytest.approx(foreground['ECE'], abs=1e-6)
        assert summary['ECE_image'] == pytest.approx(np.mean(per_image), abs=1e-6)
        assert summary['mIoU'] == pytest.approx(100 * np.mean(ious))
        assert summary['aAcc'] == pytest.approx(
            100 * np.trace(confusion) / confusion.sum())


def test_overconfidence_check_reads_every_populous_bin_above_one_half():
    logits, labels, loader = _data(1, images=4, size=16)
    split = evaluate_split(FixedModel(logits), loader, logits.shape[1])
    check = overconfident_bins(split['outputs'][RAW]['pooled'])
    z = logits.permute(1, 0, 2, 3).reshape(logits.shape[1], -1).numpy()
    y = labels.reshape(-1).numpy()
    keep = y != IGNORE
    prob = softmax(z[:, keep])
    confidence, correct = prob.max(0), prob.argmax(0) == y[keep]
    expected = []
    for b in range(8, 15):  # bins (b/15, (b+1)/15] with lower edge >= 0.5
        members = (confidence > b / 15) & (confidence <= (b + 1) / 15)
        if members.mean() >= 0.005:
            expected.append(correct[members].mean() < confidence[members].mean())
    assert len(check['bins']) == len(expected) > 0
    assert check['all'] == all(expected)
    for entry, b in zip(check['bins'], range(8, 15)):
        assert entry['range'][0] >= 0.5


def test_temperature_fitted_on_holdout_recovers_the_one_the_labels_came_from():
    generator = torch.Generator().manual_seed(2)
    true_temperature = 2.5
    logits = torch.randn(2, 5, 64, 64, generator=generator) * 4
    prob = torch.softmax(logits / true_temperature, dim=1)
    labels = torch.multinomial(prob.permute(0, 2, 3, 1).reshape(-1, 5), 1,
                               generator=generator).reshape(2, 64, 64)
    loader = Loader([[(i, labels[i]) for i in range(2)]])
    fitted = fit_calibrators(FixedModel(logits), loader, ['ts', 'lts'], 5)
    for calibrator in fitted.values():  # two folds of one image each
        record = calibrator.fit_record
        assert record.kept and (record.check_images, record.check_folds) == (2, 2)
    assert fitted['ts'].temperature == pytest.approx(true_temperature, rel=0.05)
    with torch.no_grad():
        local = fitted['lts'].temperature(logits.double())
    assert float(local.median()) == pytest.approx(true_temperature, rel=0.1)


def test_fit_calibrators_samples_as_calib_eval_does():
    """The hold-out loader's pixels go through the same sampler as saved
    logits: a temperature fitted by fit_calibrators equals one fitted on
    sample_pixels of the same logits and labels."""
    logits, labels, loader = _data(4, images=3, size=12)
    fitted = fit_calibrators(FixedModel(logits), loader, ['ts'], 4, max_pixels=150)
    pixels = sample_pixels(zip(logits, labels), 3, 4, IGNORE, max_pixels=150)
    assert pixels[0].shape == (150, 4)
    reference = TemperatureScaling(4)
    reference.fit(*pixels)
    assert fitted['ts'].temperature == reference.temperature
    assert fitted['ts'].fit_record == reference.fit_record


def test_conformal_sets_from_a_split_match_a_plain_loop():
    """Sets calibrated on one split (raw and after TS) and measured on another:
    the coverage and set size :func:`summarize` reports are what the saved
    thresholds give, recomputed pixel by pixel."""
    from cals_seg.evaluation.split_report import calibrate_sets
    calibration_logits, _, calibration = _data(5, images=12, scale=2.0)
    logits, labels, loader = _data(6, images=4, scale=2.0)
    classes = logits.shape[1]
    scaling = TemperatureScaling(classes)
    with torch.no_grad():
        scaling.log_temperature.fill_(np.log(1.5))
    sets = calibrate_sets(FixedModel(calibration_logits), calibration,
                          dict(ts=scaling), classes, alpha=0.25)
    assert sets[RAW].images == 12 and sets[RAW].alpha == 0.25
    split = evaluate_split(FixedModel(logits), loader, classes,
                           calibrators=dict(ts=scaling), sets=sets)
    for name, temperature in ((RAW, 1.0), ('ts', 1.5)):
        threshold = sets[name].coverage
        per_image, sizes = [], []
        for i in range(len(logits)):
            probs = softmax(logits[i].reshape(classes, -1).double().numpy()
                            / temperature)
            y = labels[i].reshape(-1).numpy()
            kept = y != IGNORE
            members = 1 - probs[:, kept] <= threshold
            per_image.append(members[y[kept], np.arange(kept.sum())].mean())
            sizes.extend(members.sum(0))
        summary = summarize(split, name)
        assert summary['coverage'] == pytest.approx(100 * np.mean(per_image))
        assert summary['set_size'] == pytest.approx(np.mean(sizes))
