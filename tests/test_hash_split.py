"""HashSplitDataset: a deterministic, disjoint and complete split."""
import pytest

from mmseg.registry import DATASETS
from mmseg.utils import register_all_modules

import cals_seg  # noqa: F401
from cals_seg.datasets import hash_fraction
from cals_seg.datasets.demo_data import VOC_CLASSES, make_demo_dataset


@pytest.fixture(scope='module')
def voc_dataset(tmp_path_factory):
    info = make_demo_dataset(str(tmp_path_factory.mktemp('split')), 'voc',
                             num_train=40, num_val=2, size=32, seed=3)
    return dict(type='PascalVOCDataset', data_root=info['data_root'],
                metainfo=dict(classes=VOC_CLASSES),
                data_prefix=dict(img_path='JPEGImages',
                                 seg_map_path='SegmentationClass'),
                ann_file='ImageSets/Segmentation/train.txt', pipeline=[])


def _names(dataset):
    return [dataset.get_data_info(i)['img_path'].rsplit('/', 1)[-1]
            for i in range(len(dataset))]


def test_split_is_disjoint_complete_and_by_name_hash(voc_dataset):
    parts = {
        split: DATASETS.build(dict(type='HashSplitDataset', dataset=voc_dataset,
                                   split=split, holdout_fraction=0.25))
        for split in ('train', 'holdout')
    }
    train, holdout = _names(parts['train']), _names(parts['holdout'])
    assert len(train) + len(holdout) == 40 and not set(train) & set(holdout)
    assert 2 <= len(holdout) <= 18
    assert all(hash_fraction(n[:-4]) < 0.25 for n in holdout)
    assert parts['holdout'].metainfo['classes'] == VOC_CLASSES
    again = DATASETS.build(dict(type='HashSplitDataset', dataset=voc_dataset,
                                split='holdout', holdout_fraction=0.25))
    assert _names(again) == holdout
    assert parts['holdout'][0]['img_path'].endswith(holdout[0])


def test_selection_part_is_the_next_share_of_the_hash(voc_dataset):
    parts = {split: _names(DATASETS.build(dict(
        type='HashSplitDataset', dataset=voc_dataset, split=split,
        holdout_fraction=0.25, selection_fraction=0.3)))
        for split in ('train', 'holdout', 'selection')}
    fractions = {part: [hash_fraction(n[:-4]) for n in names]
                 for part, names in parts.items()}
    assert all(f < 0.25 for f in fractions['holdout'])
    assert all(0.25 <= f < 0.55 for f in fractions['selection'])
    assert all(f >= 0.55 for f in fractions['train'])
    assert sum(map(len, parts.values())) == 40 and all(parts.values())
    # The hold-out part does not move when a selection part is added.
    assert parts['holdout'] == _names(DATASETS.build(dict(
        type='HashSplitDataset', dataset=voc_dataset, split='holdout',
        holdout_fraction=0.25)))


def test_pipeline_replaces_the_wrapped_datasets_pipelines(voc_dataset):
    """A hold-out loader reuses the training dataset's config, ConcatDataset
    included, with the test pipeline."""
    register_all_modules()  # ConcatDataset builds its children in mmseg's scope
    load = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')]
    concat = dict(type='ConcatDataset', datasets=[voc_dataset, voc_dataset])
    holdout = DATASETS.build(dict(type='HashSplitDataset', dataset=concat,
                                  split='holdout', holdout_fraction=0.25,
                                  pipeline=load))
    plain = DATASETS.build(dict(type='HashSplitDataset', dataset=voc_dataset,
                                split='holdout', holdout_fraction=0.25))
    assert len(holdout) == 2 * len(plain)
    sample = holdout[0]
    assert sample['gt_seg_map'].shape == sample['img'].shape[:2]
    assert voc_dataset['pipeline'] == []  # the caller's config is left alone
    with pytest.raises(ValueError, match='pipeline needs dataset as a config'):
        DATASETS.build(dict(type='HashSplitDataset', dataset=plain.dataset,
                            split='holdout', pipeline=load))


def test_hash_fraction_is_fixed():
    # A constant, so the split cannot change between machines or versions.
    assert hash_fraction('2007_000032') == pytest.approx(0.124809, abs=1e-6)


@pytest.mark.parametrize('kwargs, message', [
    (dict(split='val'), 'split'), (dict(holdout_fraction=1.0), 'holdout_fraction'),
    (dict(holdout_fraction=0.5, selection_fraction=0.5),
     'selection_fraction must be in'),
    (dict(selection_fraction=-0.1), 'selection_fraction must be in')])
def test_bad_arguments_are_named(voc_dataset, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DATASETS.build(dict(type='HashSplitDataset', dataset=voc_dataset,
                            **dict(dict(split='train'), **kwargs)))
