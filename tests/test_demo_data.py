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
from cals_seg.demo_data import make_demo_dataset
from helpers import REPO


@pytest.fixture(scope='module')
def voc(tmp_path_factory):
    return make_demo_dataset(str(tmp_path_factory.mktemp('voc')), 'voc')


def _labels_and_images(info):
    root = info['data_root']
    for path in sorted(glob.glob(osp.join(root, 'SegmentationClass', '*.png'))):
        name = osp.splitext(osp.basename(path))[0]
        image = cv2.imread(osp.join(root, 'JPEGImages', f'{name}.jpg'))[..., ::-1]
        yield np.array(Image.open(path)), image.astype(float)


def test_classes_are_long_tailed(voc):
    counts = np.zeros(256)
    for label, _ in _labels_and_images(voc):
        counts += np.bincount(label.ravel(), minlength=256)
    shares = counts[:6] / counts[:6].sum()
    assert shares[0] > 0.7  # background is the majority
    assert 0.01 <= shares[1:].min() <= 0.05  # the rarest class: a few percent
    assert shares[1:].max() / shares[1:].min() > 4
    assert counts[6:255].sum() == 0


def test_look_alike_pairs_share_their_appearance(voc):
    colours = {k: [] for k in range(1, 6)}
    for label, image in _labels_and_images(voc):
        for k in colours:
            inside = cv2.erode((label == k).astype(np.uint8), np.ones((7, 7)))
            if inside.any():
                colours[k].append(image[inside.astype(bool)].mean(axis=0))
    mean = {k: np.mean(v, axis=0) for k, v in colours.items()}
    assert np.abs(mean[1] - mean[2]).max() < 8 and np.abs(mean[3] - mean[4]).max() < 8
    assert np.abs(mean[1] - mean[3]).max() > 60 and np.abs(mean[1] - mean[5]).max() > 60


def test_boundaries_are_noisy(voc):
    ignored, mislabelled, foreground = 0, 0, 0
    for label, image in _labels_and_images(voc):
        ignored += (label == 255).sum()
        # Labelled foreground whose pixel shows the background's grey: the label
        # was drawn from a jittered copy of the shape.
        grey = image.std(axis=2) < 25
        fg = (label > 0) & (label < 255)
        foreground += fg.sum()
        mislabelled += (fg & grey).sum()
    assert 0.02 < ignored / (128 * 128 * 90) < 0.15
    assert 0.005 < mislabelled / foreground < 0.2


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
    for loader, split in (('train_dataloader', 'train'), ('val_dataloader', 'val')):
        cfg = data[loader].dataset
        cfg.data_root = info['data_root']
        dataset = DATASETS.build(cfg)
        assert len(dataset) == len(info[split])
        sample = dataset[0]
        label = sample['data_samples'].gt_sem_seg.data
        assert label.shape == (1, 32, 32)
        values = set(label.unique().tolist())
        assert values <= set(range(6)) | {255} and values & set(range(6))
