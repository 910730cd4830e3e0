"""The study's tuning rules (cals_seg.study.tuning) and the report's tuning table:
the choice over tuning seeds, the grid's extension past an end, and the noise of
each value's score against a plain-loop reference."""
import math

import numpy as np
import pytest

from cals_seg.functional.image_sums import bootstrap_weights, layout
from cals_seg.study import tuning
from cals_seg.study.report import RESAMPLES
from cals_seg.study.report.tuning_table import tuning_table
from cals_seg.study.statistics import differences_from


def test_choice_is_the_lowest_mean_over_tuning_seeds():
    scores = {5.0: [0.30, 0.20], 10.0: [0.24, 0.24], 20.0: [0.25, 0.26]}
    # 5 is best on seed 2 alone, 10 on the mean (0.25 against 0.24).
    assert tuning.choose(scores) == 10.0
    assert tuning.per_seed_choices(scores) == [10.0, 5.0]
    assert tuning.choose({5.0: [0.2], 10.0: [0.2]}) == 5.0  # ties: the smaller
    with pytest.raises(ValueError, match='not finite'):
        tuning.choose({5.0: [0.2, float('nan')]})
    with pytest.raises(ValueError, match='no tuning runs'):
        tuning.choose({})


@pytest.mark.parametrize('method, chosen, expected', [
    ('cals', 5.0, 2.5), ('cals', 20.0, 40.0), ('cals', 10.0, None),
    ('fl', 1.0, 0.5), ('fl', 3.0, 4.5), ('nacl', 0.03, 0.009),
    ('ls', 0.05, 0.025), ('ls', 0.2, 0.4), ('ecp', 0.3, 0.9)])
def test_a_choice_at_an_end_extends_the_grid_one_step(method, chosen, expected):
    knob = tuning.KNOBS[method]
    assert tuning.extension(knob, knob.grid, chosen) == expected


def test_an_extension_stays_in_the_knob_s_valid_range():
    ls = tuning.KNOBS['ls']
    # ε 0.4 chosen at the end of the extended grid: ε 0.8 still smooths.
    assert tuning.extension(ls, (0.05, 0.1, 0.2, 0.4), 0.4) == 0.8
    # ε 0.6 chosen next to 0.4: 0.9 is valid, the step after (1.35) is not.
    assert tuning.extension(ls, (0.4, 0.6), 0.6) == 0.9
    assert tuning.extension(ls, (0.6, 0.9), 0.9) is None
    assert math.isinf(tuning.KNOBS['cals'].upper)


def test_differences_from_a_row_match_a_plain_loop():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 2))
    replicates = rng.normal(size=(50, 3, 2))
    difference, error = differences_from(values, 1, replicates)
    for row in range(3):
        gaps = [values[row, s] - values[1, s] for s in range(2)]
        mean = sum(gaps) / 2
        seed_part = sum((g - mean) ** 2 for g in gaps) / 1 / 2
        resampled = [(replicates[b, row].sum() - replicates[b, 1].sum()) / 2
                     for b in range(50)]
        centre = sum(resampled) / 50
        image_part = sum((r - centre) ** 2 for r in resampled) / 49
        assert difference[row] == pytest.approx(mean)
        assert error[row] == pytest.approx(math.sqrt(seed_part + image_part))
    assert error[1] == 0
    # One seed: the images' noise alone; neither: nothing to measure.
    assert differences_from(values[:, :1], 0, replicates[:, :, :1])[1][1] > 0
    assert np.isnan(differences_from(values[:, :1], 0)[1]).all()


def _selection_rows(nll_per_image):
    """Per-image rows whose only statistics are the NLL sums (one pixel each)."""
    at = layout(15, 2)
    rows = np.zeros((len(nll_per_image), at['labelled'].stop))
    rows[:, at['nll_sum']] = np.asarray(nll_per_image)[:, None]
    rows[:, at['num_pixels']] = 1
    for name in ('hits', 'predicted', 'labelled'):
        rows[:, at[name].start] = 1  # the pixel: class 0, right
    return rows


def test_tuning_table_reads_noise_from_seeds_and_images():
    rng = np.random.default_rng(1)
    images = 30
    base = rng.gamma(2.0, 0.1, images)  # each selection image's difficulty
    # margin 5: clearly worse; 10: the choice; 20: behind it by 0.001 on each
    # seed, with per-image differences of sd 0.02 (a standard error near 0.004).
    records, keys, per_image = {}, {}, {}
    for value in (5.0, 10.0, 20.0):
        keys[str(value)] = []
        for k, seed in enumerate((100, 101)):
            if value == 20.0:
                wobble = rng.normal(0, 0.02, images)
                nll = per_image[10.0][k] + 0.001 + wobble - wobble.mean()
            else:
                nll = base + (0.05 if value == 5.0 else 0) + rng.normal(0, 0.01,
                                                                        images)
            key = f'm{value}s{seed}'
            records[key] = dict(selection=dict(NLL=float(nll.mean())),
                                selection_images=dict(
                                    num_bins=15, num_classes=2, images=images,
                                    outputs=dict(raw=_selection_rows(nll).tolist())))
            keys[str(value)].append(key)
            per_image.setdefault(value, []).append(nll)
    scores = {v: [records[k]['selection']['NLL'] for k in ks]
              for v, ks in ((float(v), ks) for v, ks in keys.items())}
    row = dict(kind='tuned', config='c.py', method='cals',
               options=dict(margin=tuning.choose(scores)), seeds=[0, 1, 2],
               knob='margin', grid=[5.0, 10.0, 20.0], extended=None,
               scores={str(v): s for v, s in scores.items()},
               tuning_seeds=[100, 101], tuning_keys=keys)
    text = '\n'.join(tuning_table(dict(rows=[row]), records, ('c.py', None, None)))
    assert 'tuning seed(s) 100, 101' in text and '(30 images' in text
    lines = {line.split(' | ')[1]: line for line in text.splitlines()
             if line.startswith('| CALS |')}
    assert 'chosen; each tuning seed alone: 10, 10 (stable)' in lines['m 10']
    assert lines['m 20 (default)'].endswith('| noise |')
    assert lines['m 5'].endswith('| worse |')
    # m 5's difference and error against a plain loop over seeds and resamples.
    weights = bootstrap_weights(images, RESAMPLES)
    gaps = [per_image[5.0][s].mean() - per_image[10.0][s].mean() for s in (0, 1)]
    seed_part = np.var(gaps, ddof=1) / 2
    resampled = [np.mean([(w @ per_image[5.0][s] - w @ per_image[10.0][s]) / images
                          for s in (0, 1)]) for w in weights]
    error = math.sqrt(seed_part + np.var(resampled, ddof=1))
    assert f'| {np.mean(gaps):+.4f} ± {error:.4f} | worse |' in lines['m 5']
