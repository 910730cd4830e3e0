"""The study's defects a review found, each held to what it should do: foreground
classes from the dataset, cascade heads, records of another version, the
minutes of a resumed run, the report's shift wording."""
import json
import os
import time

import numpy as np
import pytest
import torch
from mmengine.config import Config

import cals_seg  # noqa: F401
from cals_seg.evaluation.split_report import background_classes, prediction_head
from cals_seg.study.runs import (RECORD_VERSION, covers, load_records,
                                 training_minutes, union)
from helpers import FixedModel, Loader


@pytest.mark.parametrize('classes, background, expected', [
    (['background', 'cat', 'dog'], None, [0]),
    (['wall', 'building', 'sky'], None, []),  # ADE20K: class 0 is wall
    (['person', 'Background'], None, [1]),  # by name, any case, anywhere
    (['wall', 'building', 'sky'], ['wall', 'sky'], [0, 2]),
])
def test_foreground_leaves_out_the_background_the_dataset_names(classes, background,
                                                                expected):
    assert background_classes(classes, background) == expected


def test_an_unknown_background_class_is_named():
    with pytest.raises(ValueError, match=r"\['floor'\] are not among"):
        background_classes(['wall', 'sky'], ['floor'])


def test_the_prediction_head_of_a_cascade_is_its_last():
    """mmseg's OCRNet is a CascadeEncoderDecoder: FCNHead, then OCRHead."""
    from mmseg.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmseg')
    import mmseg
    base = os.path.join(os.path.dirname(mmseg.__file__), '.mim', 'configs', '_base_',
                        'models', 'ocrnet_r50-d8.py')
    cfg = Config.fromfile(base)
    cfg.model.pretrained = None
    cfg.model.backbone.update(depth=18, norm_cfg=dict(type='BN'))
    for head, channels in zip(cfg.model.decode_head, (256, 512)):
        classes = 5 if head.type == 'OCRHead' else 4
        head.update(in_channels=channels, num_classes=classes, norm_cfg=dict(type='BN'))
    model = MODELS.build(cfg.model)
    assert isinstance(model.decode_head, torch.nn.ModuleList)
    assert prediction_head(model).num_classes == 5


def _write(path, record):
    with open(path, 'w') as f:
        json.dump(record, f)


def test_records_of_another_version_are_named_and_skipped(tmp_path):
    folder = tmp_path / 'runs'
    folder.mkdir()
    _write(folder / 'a.json', dict(key='a', record_version=RECORD_VERSION))
    _write(folder / 'b.json', dict(key='b', record_version=RECORD_VERSION + 1))
    with pytest.warns(UserWarning, match=r'b\.json is a run record of version 2, '
                      r'not 1: skipped'):
        records = load_records(str(tmp_path))
    assert [r['key'] for r in records] == ['a']
    _write(folder / 'c.json', dict(something='else'))
    with pytest.raises(ValueError, match=r'c\.json is not a study run record'):
        load_records(str(tmp_path))


def test_a_resumed_run_s_minutes_add_up_over_its_starts(tmp_path):
    """Two starts of 120 s and 30 s (the first killed, the second resumed)."""
    for start, seconds in (('20261207_100000', 120), ('20261207_110000', 30)):
        folder = tmp_path / start
        folder.mkdir()
        log = folder / f'{start}.log'
        log.write_text('...')
        began = time.mktime(time.strptime(start, '%Y%m%d_%H%M%S'))
        os.utime(log, (began + seconds, began + seconds))
    (tmp_path / 'vis_data').mkdir()  # not a start
    assert training_minutes(str(tmp_path)) == pytest.approx(2.5)
    assert training_minutes(str(tmp_path / 'missing')) == 0


def test_background_is_part_of_what_a_record_covers():
    done = dict(posthoc=['ts'], corruptions=['fog'], severities=[3],
                domain_root=None)  # a record made before the option
    assert covers(done, dict(done, background=None))
    assert not covers(done, dict(done, background=['wall']))
    assert union(done, dict(done, background=['wall']))['background'] == ['wall']


def _record(key, seed, ece, background):
    metrics = dict(mIoU=50.0, ECE=ece, ECE_image=ece, ECE_boundary=ece, NLL=1.0,
                   Brier=0.1, AURC=3.0, **{'fg/ECE': ece})
    return dict(key=key, seed=seed, method='ce', test=dict(raw=metrics),
                reliability=dict(raw=dict(count=[1.0], confidence=[0.5],
                                          accuracy=[0.5])),
                fits={}, classes=['wall', 'sky'], background=background,
                resolved_options={}, minutes=dict(train=1.0),
                code=dict(tree='t', commit='c', dirty=False),
                settings=dict(posthoc=[], corruptions=[], severities=[],
                              domain_root='d'),
                domain=dict(raw=dict(metrics, ECE=ece + 1)))


def test_report_of_a_domain_without_corruptions_and_a_dataset_without_background():
    from cals_seg.study.report import build_report
    records = {f'k{s}': _record(f'k{s}', s, 5.0 + s, []) for s in (0, 1)}
    manifest = dict(title='t', command='c', posthoc=[], posthoc_on=[],
                    settings=dict(posthoc=[], corruptions=[], severities=[],
                                  domain_root='d'),
                    rows=[dict(kind='default', config='x/base_ce.py', method='ce',
                               options={}, seeds=[0, 1], keys=['k0', 'k1'])])
    text = build_report(manifest, records)[0]
    assert 'fg ECE (no background class: equal to ECE)' in text
    assert 'The shifted domain `d`; the calibrators are fitted in-domain' in text
    assert 'ImageNet-C' not in text
    records = {k: dict(r, background=['wall']) for k, r in records.items()}
    assert 'fg ECE (wall excluded)' in build_report(manifest, records)[0]


def test_foreground_figures_follow_the_dataset_classes_end_to_end(tmp_path):
    """The evaluation leaves out the classes named background, and none where
    the dataset has none: fg/ECE is then ECE."""
    from cals_seg.evaluation.split_report import evaluate_split, summarize

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 3, 8, 8, generator=generator) * 3
    labels = torch.randint(0, 3, (3, 8, 8), generator=generator)

    def batches():
        return Loader([[(i, labels[i])] for i in range(3)])

    none = summarize(evaluate_split(FixedModel(logits), batches(), 3,
                                    exclude_classes=[]))
    assert none['fg/ECE'] == pytest.approx(none['ECE'])
    some = summarize(evaluate_split(FixedModel(logits), batches(), 3,
                                    exclude_classes=background_classes(
                                        ['background', 'a', 'b'])))
    assert some['fg/ECE'] != pytest.approx(some['ECE'])
    assert np.isfinite(some['fg/ECE'])
