"""The study report's flag on post-hoc calibrators: a calibrator that lowers the
pooled NLL while it raises boundary ECE beyond noise is named; one that does not,
or whose rise is the luck of one image, is not; and the paired test behind it
keeps its level by simulation."""
import numpy as np
import pytest

from cals_seg.functional.image_sums import metrics_from_sums
from cals_seg.study.report.posthoc import one_model_flags, posthoc_flags
from cals_seg.study.report.rows import Row
from cals_seg.study.statistics import image_change, paired_change


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


def _one_model(gaps, images=10):
    """One model's raw and TS per-image sums (seed 0 of :func:`_rows`)."""
    return {'raw': np.array([_image(0.0, 0.0) for _ in range(images)]),
            'ts': np.array([_image(gap, 0.0) for gap in gaps])}


def test_one_model_flags_a_rise_on_every_image_not_one_images_luck():
    """calib_eval's rule: the images are the only noise. The same rise on every
    image is flagged (with fg ECE untouched, not flagged); the same total rise
    on one image is within the image resamples' noise."""
    gaps = 3.0 + np.random.default_rng(0).normal(0, 0.5, size=10)
    sums = _one_model(gaps)
    sums['ts'][:, 6] -= 10  # TS lowers the pooled NLL (sum over 1000 pixels)
    result = one_model_flags(sums, 'raw', (1, 2))['ts']
    assert result['improved'] == ['NLL']
    boundary = result['local']['ECE_boundary']
    assert boundary['flagged']
    assert boundary['change'] == pytest.approx(100 * gaps.sum() / 200)
    assert not result['local']['fg/ECE']['flagged']
    assert result['flags'] == [
        f'ts lowers the pooled NLL of raw but raises its boundary ECE by '
        f'{boundary["change"]:.2f} ± {boundary["standard_error"]:.2f} (paired '
        f'one-sided p = {boundary["p_value"]:.2g}, beyond noise at 0.05 / 2)']
    lucky = _one_model([30.0] + [0.0] * 9)
    lucky['ts'][:, 6] -= 10
    assert not one_model_flags(lucky, 'raw', (1, 2))['ts']['local'][
        'ECE_boundary']['flagged']
    # Nothing pooled improved: no flag however large the local rise.
    assert one_model_flags(_one_model([3.0] * 10), 'raw', (1, 2))['ts']['flags'] == []


def test_the_image_change_keeps_its_level_under_the_null():
    """Two outputs whose per-image values are exchangeable: the bootstrap
    test of a rise rejects at about its level (40 images, 1,000 simulated
    pairs, 300 resamples each), also at the small level of a Bonferroni
    correction over 18 tests with 15 images (where a normal reference on the
    plain bootstrap error rejects about 3 times too often), and finds a true
    rise of one standard error."""
    rng = np.random.default_rng(1)

    def simulate(images, rise, level, pairs):
        weights = rng.multinomial(images, np.full(images, 1 / images),
                                  size=300).astype(float)
        rejected = []
        for _ in range(pairs):
            shared = rng.normal(5.0, 1.0, size=images)  # the image's difficulty
            values = shared + rng.normal(0, 0.5, size=(2, images))
            values[1] += rise
            replicates = (weights @ values.T) / images  # [B, 2] resampled means
            change = image_change(values.mean(axis=1), replicates, images)
            rejected.append(change.p_value < level)
        return np.mean(rejected)

    assert simulate(40, 0.0, 0.05, 1000) == pytest.approx(0.05, abs=0.02)
    assert simulate(15, 0.0, 0.05 / 18, 4000) < 0.005
    assert simulate(40, 0.35, 0.05, 1000) > 0.8
    # One image: nothing to resample, no test.
    assert np.isnan(image_change(np.array([1.0, 2.0]), np.ones((10, 2)), 1).p_value)


def test_the_report_shows_each_calibrators_accuracy_change_and_names_argmax_changes():
    """A calibrator row carries its pixel accuracy less its model's, seed by
    seed; one that moved it is marked, one that kept it (0.00) is not."""
    from cals_seg.study.report import build_report
    settings = dict(posthoc=['ts', 'vs'], corruptions=[], severities=[],
                    domain_root=None)
    records = {}
    for seed, vs_gain in ((0, 1.0), (1, 1.5), (2, 2.0)):
        raw = dict(mIoU=50.0, ECE=5.0, ECE_image=5.0, ECE_boundary=9.0, NLL=0.5,
                   Brier=0.1, AURC=3.0, aAcc=80.0 + seed, **{'fg/ECE': 6.0})
        records[f'k{seed}'] = dict(
            key=f'k{seed}', seed=seed, method='ce', classes=['background', 'cat'],
            background=['background'], resolved_options={}, minutes=dict(train=1.0),
            fits=dict(ts=dict(kept=True), vs=dict(kept=True)),
            test=dict(raw=raw, ts=dict(raw, ECE=2.0, NLL=0.4),
                      vs=dict(raw, ECE=3.0, NLL=0.45, aAcc=raw['aAcc'] + vs_gain)),
            reliability={name: dict(count=[1.0], confidence=[0.5], accuracy=[0.5])
                         for name in ('raw', 'ts', 'vs')},
            code=dict(tree='t', commit='c', dirty=False), settings=settings)
    manifest = dict(title='t', command='c', posthoc=['ts', 'vs'], posthoc_on=['ce'],
                    settings=settings,
                    rows=[dict(kind='default', config='x/base_ce.py', method='ce',
                               options={}, seeds=[0, 1, 2],
                               keys=['k0', 'k1', 'k2'])])
    text = build_report(manifest, records)[0]
    header = next(line for line in text.splitlines() if line.startswith('| method'))
    assert header.endswith('| AURC | pixel acc change | train min | eval min |')
    lines = {line.split(' | ')[0]: line for line in text.splitlines()}
    assert lines['| CE + TS'].endswith('| 0.00 ± 0.00 |  |  |')
    assert lines['| CE + VS (changes the argmax)'].endswith('| 1.50 ± 0.50 |  |  |')
    assert lines['| CE'].endswith('|  | 1.0 | 0.0 |')
