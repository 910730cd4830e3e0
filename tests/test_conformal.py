"""Conformal pixel sets: guarantees by simulation with known probabilities,
MAPIE's split conformal on a flattened case, closed forms, bad input."""
import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from cals_seg.evaluation.conformal import (ConformalCalibration, ConformalSets,
                                           SetTotals)
from cals_seg.functional.conformal import (ConformalInputError, RiskHistograms,
                                           conformal_scores, crc_thresholds,
                                           grid_edges, minimum_images,
                                           prediction_sets, risk_histograms,
                                           set_statistics)


def simulated_images(generator, count, classes=4, side=8):
    """Images whose labels are drawn from known probabilities. Each image has its
    own sharpness, so pixels within an image share their luck (not
    exchangeable), while images are."""
    logits = torch.randn(count, classes, side, side, generator=generator,
                         dtype=torch.float64)
    sharpness = torch.rand(count, 1, 1, 1, generator=generator,
                           dtype=torch.float64) * 4 + 0.5
    probs = torch.softmax(logits * sharpness, dim=1)
    flat = probs.movedim(1, -1).reshape(-1, classes)
    labels = torch.multinomial(flat, 1, generator=generator).view(count, side, side)
    return probs, labels


@pytest.mark.parametrize('score', ['lac', 'aps'])
def test_coverage_and_class_risk_hold_over_many_calibrations(score):
    """E[share of a new image's pixels covered] >= 1 - alpha, and each class's
    expected false-negative rate <= alpha, within CRC's finite-sample band
    [alpha - 2 / (n + 1), alpha] = [0.08, 0.10], over 1,000 simulated
    calibrations."""
    generator = torch.Generator().manual_seed(0)
    alpha, calibration, repeats, classes = 0.1, 99, 1000, 4
    misses, class_misses, class_counts = [], torch.zeros(classes), torch.zeros(classes)
    for _ in range(repeats):
        probs, labels = simulated_images(generator, calibration + 1, classes)
        scores = conformal_scores(probs, score)
        risk = risk_histograms(scores[:-1], labels[:-1], num_cells=500)
        thresholds = crc_thresholds(risk, alpha)
        stats = set_statistics(prediction_sets(scores[-1:], thresholds[-1]),
                               labels[-1:])
        misses.append(1 - float(stats.image_coverage))
        class_sets = prediction_sets(scores[-1:], torch.nan_to_num(thresholds[:-1],
                                                                   nan=1.0))
        class_stats = set_statistics(class_sets, labels[-1:])
        class_misses += class_stats.class_image_fnr.float()
        class_counts += class_stats.class_images.float()
    misses = np.array(misses)
    standard_error = misses.std() / np.sqrt(repeats)
    assert misses.mean() <= alpha + 3 * standard_error
    assert misses.mean() >= alpha - 2 / (calibration + 1) - 3 * standard_error
    class_risk = class_misses / class_counts
    assert bool((class_risk <= alpha + 0.01).all()), class_risk
    assert bool((class_risk >= alpha - 2 / (calibration + 1) - 0.01).all()), class_risk


def test_crc_threshold_in_closed_form():
    """Ten images: nine whose pixels all score in cell 1, one in cell 9 (the
    last). The pixels pooled, a 90 % quantile would sit in cell 1 and leave the
    odd image bare; CRC counts images, and at alpha = 0.1 (n = 10) needs
    ``T_j + 1 <= 1.1``: only the last edge, every class. At alpha = 0.2,
    ``T_j <= 1.2`` holds from edge 2 on."""
    histograms = torch.zeros(2, 10, dtype=torch.float64)
    histograms[-1, 1] = 9
    histograms[-1, 9] = 1
    risk = RiskHistograms(histograms, torch.tensor([0, 10]))
    edges = grid_edges(10)
    assert crc_thresholds(risk, 0.1)[-1].item() == edges[10].item() == 1.0
    assert crc_thresholds(risk, 0.2)[-1].item() == edges[2].item()
    assert torch.isnan(crc_thresholds(risk, 0.2)[0])  # no image of that class


def test_the_grid_reaches_small_probabilities():
    """Edges even in -log(1 - s): a threshold can sit at p = 1e-6 (an even grid
    of [0, 1] would jump from p = 5e-4 to every class)."""
    edges = grid_edges(2000)
    assert edges[0] == 0 and edges[-1] == 1
    assert bool((edges[1:] > edges[:-1]).all())
    remaining = 1 - edges[1:-1]
    assert remaining.min() < 1e-12
    ratios = remaining[1:] / remaining[:-1]  # 1 - e_j rounds to 1e-3 near 1e-13
    torch.testing.assert_close(ratios, torch.full_like(ratios, ratios[0].item()),
                               rtol=2e-3, atol=0)
    assert 0.98 < ratios[0] < 0.99  # 1.5 % apart


class _Prefitted(ClassifierMixin, BaseEstimator):
    """A classifier whose probabilities are given (MAPIE needs an estimator)."""

    def __init__(self, classes):
        self.classes = classes

    def fit(self, x, y):
        self.classes_ = np.arange(self.classes)
        return self

    def predict_proba(self, x):
        return x

    def predict(self, x):
        return x.argmax(1)


def test_one_pixel_images_give_mapies_split_conformal_sets():
    """With one pixel per image, CRC on the miscoverage is split conformal:
    the sets equal MAPIE's LAC sets on the same probabilities."""
    from mapie.classification import SplitConformalClassifier
    generator = torch.Generator().manual_seed(3)
    classes, calibration, test = 5, 200, 300
    probs, labels = simulated_images(generator, calibration + test, classes, side=1)
    flat = probs[:, :, 0, 0].numpy()
    mapie = SplitConformalClassifier(_Prefitted(classes).fit(None, None),
                                     confidence_level=0.9, conformity_score='lac',
                                     prefit=True)
    mapie.conformalize(flat[:calibration], labels[:calibration, 0, 0].numpy())
    _, mapie_sets = mapie.predict_set(flat[calibration:])
    scores = conformal_scores(probs, 'lac')
    risk = risk_histograms(scores[:calibration], labels[:calibration],
                           num_cells=1_000_000)
    threshold = crc_thresholds(risk, 0.1)[-1]
    ours = prediction_sets(scores[calibration:], threshold)[:, :, 0, 0].numpy()
    np.testing.assert_array_equal(ours, mapie_sets[:, :, 0])
    assert 1.5 < ours.sum(1).mean() < classes  # not a trivial case


def test_aps_score_is_the_mass_at_least_as_probable_as_the_class():
    probs = torch.tensor([[0.5, 0.2, 0.2, 0.1]], dtype=torch.float64)[..., None, None]
    scores = conformal_scores(probs, 'aps')[0, :, 0, 0]
    expected = [sum(p for p in (0.5, 0.2, 0.2, 0.1) if p >= q)
                for q in (0.5, 0.2, 0.2, 0.1)]
    torch.testing.assert_close(scores, torch.tensor(expected, dtype=torch.float64))


def test_set_statistics_against_a_plain_loop():
    generator = torch.Generator().manual_seed(1)
    sets = torch.rand(3, 4, 5, 6, generator=generator) < 0.4
    labels = torch.randint(0, 4, (3, 5, 6), generator=generator)
    labels[0, 0, :3] = 255
    stats = set_statistics(sets, labels)
    covered = pixels = size = 0
    by_size = np.zeros(5)
    fnr, present = np.zeros(4), np.zeros(4)
    for n in range(3):
        hits = total = 0
        for k in range(4):
            mask = labels[n] == k
            if mask.any():
                present[k] += 1
                fnr[k] += 1 - sets[n, k][mask].float().mean().item()
        for i in range(5):
            for j in range(6):
                y = int(labels[n, i, j])
                if y == 255:
                    continue
                pixels += 1
                total += 1
                hit = bool(sets[n, y, i, j])
                covered += hit
                hits += hit
                size += int(sets[n, :, i, j].sum())
                by_size[int(sets[n, :, i, j].sum())] += 1
    assert stats.pixels.item() == pixels and stats.covered.item() == covered
    assert stats.set_size.item() == size
    np.testing.assert_array_equal(stats.size_pixels.numpy(), by_size)
    np.testing.assert_allclose(stats.class_image_fnr.numpy(), fnr)
    np.testing.assert_array_equal(stats.class_images.numpy(), present)


def test_calibration_file_round_trip_and_streaming(tmp_path):
    generator = torch.Generator().manual_seed(2)
    probs, labels = simulated_images(generator, 30, 4)
    logits = probs.log()
    calibration = ConformalCalibration(4)
    for start in range(0, 20, 7):  # batches of unequal size: streaming is exact
        calibration.update(logits[start:min(start + 7, 20)],
                           labels[start:min(start + 7, 20)])
    whole = ConformalCalibration(4)
    whole.update(logits[:20], labels[:20])
    torch.testing.assert_close(calibration.risk.histograms, whole.risk.histograms)
    sets = calibration.fit(0.1, ['a', 'b', 'c', 'd'])
    path = str(tmp_path / 'conformal.json')
    sets.save(path)
    loaded = ConformalSets.load(path, 4)
    assert loaded.to_dict() == sets.to_dict()
    totals = SetTotals(loaded)
    totals.update(logits[20:], labels[20:])
    metrics = totals.compute()
    assert set(metrics) == {'coverage', 'class_fnr'}
    assert 0 < metrics['coverage']['set_size'] <= 4
    with pytest.raises(ConformalInputError, match='fitted for 4 classes'):
        ConformalSets.load(path, 5)


@pytest.mark.parametrize('alpha', [0, 1, 1.5, -0.1, 'x'])
def test_alpha_outside_the_unit_interval_is_refused(alpha):
    with pytest.raises(ConformalInputError, match=r'alpha must be a number in \(0, 1\)'):
        ConformalCalibration(3).fit(alpha)


def test_too_few_calibration_images_are_refused_with_the_count():
    generator = torch.Generator().manual_seed(4)
    probs, labels = simulated_images(generator, 8, 3)
    calibration = ConformalCalibration(3)
    calibration.update(probs.log(), labels)
    # alpha (n + 1) > 1: at n = 9 and alpha = 0.1 the sets would hold every class
    assert minimum_images(0.1) == 10 and minimum_images(0.4) == 2
    with pytest.raises(ConformalInputError, match='at least 10 calibration images.*got 8'):
        calibration.fit(0.1)
    assert calibration.fit(0.2).images == 8  # 5 images suffice


def test_unknown_score_is_refused():
    with pytest.raises(ConformalInputError, match='score must be one of'):
        ConformalCalibration(3, score='raps')


def test_the_study_report_shows_sets_in_domain_and_under_shift():
    from cals_seg.study.report.rows import Row
    from cals_seg.study.report.tables import sets_table

    def record(seed, coverage, size, shifted):
        cells = dict(coverage=coverage, set_size=size)
        return dict(seed=seed, key=f'k{seed}', test=dict(raw=dict(cells)),
                    shift=dict(fog={'3': dict(raw=dict(coverage=shifted,
                                                      set_size=size + 1))}),
                    domain=dict(raw=dict(coverage=shifted - 1, set_size=size)))
    row = Row('CE', 'ce', 'raw', [record(0, 91.0, 1.2, 80.0),
                                  record(1, 93.0, 1.4, 82.0)], ('fog', ))
    old = Row('LS', 'ls', 'raw', [dict(seed=0, key='k', test=dict(raw=dict(ECE=1)),
                                       conformal_note='no conformal sets: the '
                                       'selection part holds 4 images, risk 0.1 '
                                       'needs 9')])
    lines = []
    sets_table([row, old], ['clean', '3', 'domain'], 0.1, lines)
    text = '\n'.join(lines)
    assert '### Conformal pixel sets' in text and 'target: 90 %' in text
    assert '| CE | 92.00 ± ' in text and '| 81.00 ± ' in text
    assert '| LS |' not in text  # a record without sets is no row of the table
    lines = []
    sets_table([old], ['clean'], None, lines)
    assert lines[-1] == ('- No conformal sets: the selection part holds 4 images, '
                         'risk 0.1 needs 9.')
