"""The generated demo data: real layouts, and the conditions that make CE
over-confident, checked on the written files."""
import glob
import hashlib
import os.path as osp

import cv2
import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

from mmseg.registry import DATASETS
from mmseg.utils import register_all_modules

import cals_seg  # noqa: F401
from cals_seg.datasets.demo_data import make_demo_dataset
from helpers import REPO, point_at


@pytest.fixture(scope='module')
def voc(tmp_path_factory):
    return make_demo_dataset(str(tmp_path_factory.mktemp('voc')), 'voc')


def _labels_and_images(info):
    root = info['data_root']
    for path in sorted(glob.glob(osp.join(root, 'SegmentationClass', '*.png'))):
        name = osp.splitext(osp.basename(path))[0]
        image = cv2.imread(osp.join(root, 'JPEGImages', f'{name}.jpg'))[..., ::-1]
        yield np.array(Image.open(path)), image.astype(float)


def _object_colours(info):
    """Mean colour of every object (eroded connected region) per class."""
    colours = {k: [] for k in range(1, 6)}
    for label, image in _labels_and_images(info):
        for k in colours:
            inside = cv2.erode((label == k).astype(np.uint8), np.ones((5, 5)))
            count, parts = cv2.connectedComponents(inside)
            for part in range(1, count):
                if (parts == part).sum() > 30:
                    colours[k].append(image[parts == part].mean(axis=0))
    return {k: np.array(v) for k, v in colours.items()}


def test_defaults_are_few_training_images(voc):
    assert (len(voc['train']), len(voc['val'])) == (60, 40)


def test_classes_are_imbalanced_and_background_does_not_swamp_them(voc):
    counts = np.zeros(256)
    for label, _ in _labels_and_images(voc):
        counts += np.bincount(label.ravel(), minlength=256)
    shares = counts[:6] / counts[:6].sum()
    assert 0.45 < shares[0] < 0.75  # background: about half, not 84 %
    assert 0.005 <= shares[1:].min() <= 0.05  # the rarest class: a few percent
    assert shares[1:].max() / shares[1:].min() > 4
    assert counts[6:255].sum() == 0


def test_pairs_overlap_in_appearance_without_being_identical(voc):
    colours = _object_colours(voc)
    mean = {k: v.mean(axis=0) for k, v in colours.items()}
    for a, b in ((1, 2), (3, 4)):
        gap = np.linalg.norm(mean[a] - mean[b])
        assert 15 < gap < 60, (a, b, gap)  # distinct means...
        # ...but a share of b's objects look more like a than like b.
        nearer_a = np.mean([np.linalg.norm(c - mean[a]) < np.linalg.norm(c - mean[b])
                            for c in colours[b]])
        assert 0.05 < nearer_a < 0.5, (a, b, nearer_a)
    # Each object draws its own colour: spread within a class.
    assert all(v.std(axis=0).mean() > 10 for v in colours.values())
    # Class 5 is distinct from every other class.
    assert min(np.linalg.norm(mean[5] - mean[k]) for k in range(1, 5)) > 60


def test_background_holds_textured_distractors(voc):
    textured, pixels = 0, 0
    for label, image in _labels_and_images(voc):
        inside = cv2.erode((label == 0).astype(np.uint8), np.ones((7, 7))) > 0
        grey = image.mean(axis=2)
        mean = cv2.blur(grey, (5, 5))
        local_std = np.sqrt(np.maximum(cv2.blur(grey**2, (5, 5)) - mean**2, 0))
        # Pixel noise alone gives a local std near 7; stripes copied from a
        # foreground class give more than 18.
        textured += (local_std[inside] > 18).sum()
        pixels += inside.sum()
    assert 0.005 < textured / pixels < 0.1


def test_object_scales_vary(voc):
    areas = []
    for label, _ in _labels_and_images(voc):
        for k in range(1, 6):
            count, _, stats, _ = cv2.connectedComponentsWithStats(
                (label == k).astype(np.uint8))
            areas += stats[1:, cv2.CC_STAT_AREA].tolist()
    areas = np.array(areas)
    assert np.percentile(areas, 90) / np.percentile(areas, 10) > 4


def test_boundaries_are_noisy(voc):
    ignored, total = 0, 0
    for label, _ in _labels_and_images(voc):
        ignored += (label == 255).sum()
        total += label.size
    assert 0.03 < ignored / total < 0.15


def _digest(root):
    digest = hashlib.sha1()
    for path in sorted(glob.glob(osp.join(root, '**', '*.*'), recursive=True)):
        digest.update(osp.relpath(path, root).encode())
        digest.update(open(path, 'rb').read())
    return digest.hexdigest()


def test_same_seed_same_files(tmp_path):
    a = make_demo_dataset(str(tmp_path / 'a'), 'cityscapes', 3, 2, 32, seed=7)
    b = make_demo_dataset(str(tmp_path / 'b'), 'cityscapes', 3, 2, 32, seed=7)
    c = make_demo_dataset(str(tmp_path / 'c'), 'cityscapes', 3, 2, 32, seed=8)
    assert _digest(str(tmp_path / 'a')) == _digest(str(tmp_path / 'b'))
    assert _digest(str(tmp_path / 'a')) != _digest(str(tmp_path / 'c'))
    assert a['train'] == b['train']


@pytest.mark.parametrize('layout', ['voc', 'cityscapes'])
def test_mmseg_datasets_read_both_layouts(layout, tmp_path):
    register_all_modules()  # the pipelines' transforms live in mmseg's scope
    info = make_demo_dataset(str(tmp_path), layout, 3, 2, 32, seed=1)
    data = Config.fromfile(
        osp.join(REPO, 'configs', '_base_', 'datasets', f'demo_{layout}.py'))
    datasets = {}
    for loader in ('train_dataloader', 'holdout_dataloader', 'val_dataloader'):
        point_at(data[loader], info['data_root'])
        datasets[loader] = DATASETS.build(data[loader].dataset)
    assert len(datasets['val_dataloader']) == len(info['val'])
    # The training split, cut in two by name hash.
    assert len(datasets['train_dataloader']) >= 1
    assert len(datasets['holdout_dataloader']) >= 1
    assert (len(datasets['train_dataloader']) +
            len(datasets['holdout_dataloader']) == len(info['train']))
    for dataset in datasets.values():
        sample = dataset[0]
        label = sample['data_samples'].gt_sem_seg.data
        assert label.shape == (1, 32, 32)
        values = set(label.unique().tolist())
        assert values <= set(range(6)) | {255} and values & set(range(6))


def _pixel_digest(root):
    """SHA-1 of every PNG's path and decoded pixels: lossless, so it does not
    depend on the encoder's version."""
    digest = hashlib.sha1()
    for path in sorted(glob.glob(osp.join(root, '**', '*.png'), recursive=True)):
        digest.update(osp.relpath(path, root).encode())
        digest.update(cv2.imread(path, cv2.IMREAD_UNCHANGED).tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize('args, expected', [
    ((3, 2, 32, 7), 'eb2ed44e4b45184c8b15fde0055a50b805b99153'),
    ((2, 2, 128, 0), '1b265bea2980107e670d5eb7e80acabdc71edb57'),
])
def test_source_domain_pixels_are_unchanged(tmp_path, args, expected):
    # Digests of the generator before the shifted domain was added (commit
    # 81e4286): the default domain's images and labels must stay identical, as
    # docs/results.md was measured on them.
    make_demo_dataset(str(tmp_path), 'cityscapes', *args)
    assert _pixel_digest(str(tmp_path)) == expected


@pytest.fixture(scope='module')
def shifted(tmp_path_factory):
    return make_demo_dataset(str(tmp_path_factory.mktemp('shifted')), 'voc',
                             domain='shifted')


def test_shifted_domain_is_the_test_scenes_under_other_conditions(voc, shifted):
    assert shifted['val'] == voc['val'] and shifted['train'] == []
    root = shifted['data_root']
    assert sorted(open(osp.join(root, 'ImageSets', 'Segmentation',
                                'val.txt')).read().split()) == sorted(voc['val'])
    assert not osp.exists(osp.join(root, 'ImageSets', 'Segmentation', 'train.txt'))
    value_source, value_shifted, saturation = [], [], []
    for name in voc['val']:
        label = np.array(Image.open(osp.join(voc['data_root'], 'SegmentationClass',
                                             f'{name}.png')))
        np.testing.assert_array_equal(  # same scene, same labels
            np.array(Image.open(osp.join(root, 'SegmentationClass', f'{name}.png'))),
            label)
        images = [cv2.imread(osp.join(r, 'JPEGImages', f'{name}.jpg'))
                  for r in (voc['data_root'], root)]
        hsv = [cv2.cvtColor(i, cv2.COLOR_BGR2HSV).astype(float) for i in images]
        value_source.append(hsv[0][..., 2].mean())
        value_shifted.append(hsv[1][..., 2].mean())
        saturation.append(hsv[1][..., 1].mean() / hsv[0][..., 1].mean())
    # Dimmer, and by a different factor per image (uneven light).
    ratio = np.array(value_shifted) / np.array(value_source)
    assert 0.75 < ratio.mean() < 0.95 and ratio.std() > 0.01
    assert np.mean(saturation) < 0.95  # faded colours


def test_mmseg_reads_the_shifted_domain_with_the_demo_config(shifted):
    register_all_modules()
    data = Config.fromfile(osp.join(REPO, 'configs', '_base_', 'datasets',
                                    'demo_voc.py'))
    point_at(data.test_dataloader, shifted['data_root'])
    dataset = DATASETS.build(data.test_dataloader.dataset)
    assert len(dataset) == len(shifted['val'])
    assert dataset[0]['inputs'].shape == (3, 128, 128)


def test_unknown_domain_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'source', 'shifted'"):
        make_demo_dataset(str(tmp_path), 'voc', domain='night')
