"""ImageCorruption: the 15 ImageNet-C corruptions as a seeded, label-preserving
mmseg transform."""
import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from torch.utils.data import DataLoader

from mmseg.registry import DATASETS, TRANSFORMS
from mmseg.utils import register_all_modules

import cals_seg  # noqa: F401
from cals_seg.datasets.demo_data import _draw_sample, make_demo_dataset
from cals_seg.datasets.transforms import (CORRUPTIONS, ImageCorruption,
                                          corrupt_image)

# A fixed textured RGB image (stripes, blobs, shading, noise), not square.
IMAGE = _draw_sample(np.random.default_rng(0), 96)[0][:64]
# Steps at which ImageNet-C's severity tables (the library's constants) do not
# strengthen the corruption, so the distance to the clean image may fall; the
# distance is asserted to grow at every other step. Checked over 20 seeds:
# these are the only steps where it ever fell.
NOT_STRONGER = {
    # (sigma, max shift, shuffle passes): 2 passes -> 1, and 3 passes -> 2
    'glass_blur': {(1, 2), (3, 4)},
    # the flakes are drawn at another scale and threshold (zoom 2 -> 4,
    # threshold 0.5 -> 0.9): fewer, larger flakes
    'snow': {(2, 3)},
    # image weight and frost weight (1, 0.4) -> (0.8, 0.6): a dark frost picture
    # can end nearer; (0.7, 0.7) -> (0.65, 0.7): only the image dims
    'frost': {(1, 2), (3, 4)},
    # fog strength 2.5 at both 3 and 4 (only the fractal's roughness changes);
    # 2.5 -> 3 also rescales the image towards the fog's level
    'fog': {(3, 4), (4, 5)},
}


def _distance(a, b):
    return np.abs(a.astype(float) - b.astype(float)).mean()


@pytest.mark.parametrize('corruption', CORRUPTIONS)
def test_every_severity_changes_the_image_and_a_larger_one_moves_it_further(
        corruption):
    distances = []
    for severity in range(1, 6):
        out = corrupt_image(IMAGE, corruption, severity, seed=0)
        assert out.shape == IMAGE.shape and out.dtype == np.uint8
        distances.append(_distance(out, IMAGE))
    assert min(distances) > 0.5, distances
    assert distances[4] > distances[0], distances
    for low in range(1, 5):
        if (low, low + 1) not in NOT_STRONGER.get(corruption, ()):
            assert distances[low] > distances[low - 1], (low, distances)


@pytest.mark.parametrize('corruption', CORRUPTIONS)
def test_severity_zero_is_the_identity(corruption):
    results = dict(img=IMAGE.copy())
    out = ImageCorruption(corruption, severity=0)(results)
    assert out['img'] is results['img']
    np.testing.assert_array_equal(out['img'], IMAGE)


def test_same_inputs_same_output_and_the_global_random_state_is_untouched():
    np.random.seed(123)
    before = np.random.get_state()
    first = corrupt_image(IMAGE, 'gaussian_noise', 3, seed=5)
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1])
    assert before[2:] == after[2:]
    np.random.seed(999)  # another global state: no effect on the result
    np.testing.assert_array_equal(corrupt_image(IMAGE, 'gaussian_noise', 3, seed=5),
                                  first)
    assert not np.array_equal(corrupt_image(IMAGE, 'gaussian_noise', 3, seed=6),
                              first)
    # Another image gets other draws: the noise is not a fixed pattern.
    shifted = np.roll(IMAGE, 1, axis=1)
    noise_a = first.astype(int) - IMAGE
    noise_b = corrupt_image(shifted, 'gaussian_noise', 3, seed=5).astype(int) - shifted
    assert not np.array_equal(noise_a, noise_b)


@pytest.mark.parametrize('corruption', ['impulse_noise', 'glass_blur', 'frost',
                                        'motion_blur', 'fog', 'snow'])
def test_corruptions_with_their_own_random_state_are_seeded_too(corruption):
    # impulse_noise (scikit-image's generator) and glass_blur (numba's state) do
    # not draw from numpy's global state; the others do.
    a = corrupt_image(IMAGE, corruption, 2, seed=1)
    np.random.seed(7)
    np.testing.assert_array_equal(corrupt_image(IMAGE, corruption, 2, seed=1), a)
    assert not np.array_equal(corrupt_image(IMAGE, corruption, 2, seed=2), a)


def test_bgr_images_are_corrupted_as_rgb():
    bgr = np.ascontiguousarray(IMAGE[..., ::-1])
    out = ImageCorruption('frost', severity=4, seed=3)(dict(img=bgr.copy()))['img']
    expected = corrupt_image(IMAGE, 'frost', 4, seed=3)
    np.testing.assert_array_equal(out[..., ::-1], expected)
    # Frost is not symmetric in the channels: corrupting the BGR array as if it
    # were RGB (MMDetection's Corrupt does) gives another picture.
    as_if_rgb = ImageCorruption('frost', 4, 3, channel_order='rgb')(
        dict(img=bgr.copy()))['img']
    assert _distance(as_if_rgb, out) > 1


@pytest.mark.parametrize('kwargs, words', [
    (dict(corruption='gaussian_blur', severity=1), ['unknown corruption',
                                                    'gaussian_noise', 'frost']),
    (dict(corruption='fog', severity=6), ['severity', '(0, 1, 2, 3, 4, 5)']),
    (dict(corruption='fog', severity=-1), ['severity']),
    (dict(corruption='fog', severity=2.0), ['severity']),
    (dict(corruption='fog', severity=2, seed=-1), ['seed']),
    (dict(corruption='fog', severity=2, channel_order='hsv'), ['channel_order']),
])
def test_bad_arguments_name_the_valid_values(kwargs, words):
    with pytest.raises(ValueError) as error:
        TRANSFORMS.build(dict(type='ImageCorruption', **kwargs))
    for word in words:
        assert word in str(error.value)


def test_bad_images_are_refused_clearly():
    with pytest.raises(TypeError, match='uint8'):
        corrupt_image(IMAGE.astype(np.float32), 'fog', 2)
    with pytest.raises(ValueError, match='>= 32'):
        corrupt_image(IMAGE[:20], 'fog', 2)


def _pipeline_dataset(root, corruption=None):
    pipeline = [dict(type='LoadImageFromFile')]
    if corruption:
        pipeline.append(dict(type='ImageCorruption', corruption=corruption,
                             severity=3, seed=0))
    pipeline += [dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
    return DATASETS.build(dict(
        type='PascalVOCDataset', data_root=root,
        data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
        ann_file='ImageSets/Segmentation/val.txt', pipeline=pipeline))


def _load(dataset, workers):
    loader = DataLoader(dataset, batch_size=1, num_workers=workers,
                        collate_fn=pseudo_collate)
    return [(batch['inputs'][0], batch['data_samples'][0].gt_sem_seg.data)
            for batch in loader]


def test_a_real_pipeline_corrupts_images_only_and_workers_change_nothing(tmp_path):
    register_all_modules()
    info = make_demo_dataset(str(tmp_path), 'voc', 2, 4, 48, seed=3)
    clean = _load(_pipeline_dataset(info['data_root']), 0)
    corrupted = _pipeline_dataset(info['data_root'], 'shot_noise')
    in_process = _load(corrupted, 0)
    in_workers = _load(corrupted, 2)
    for (image, label), (noisy, noisy_label), (worker_image, worker_label) in zip(
            clean, in_process, in_workers):
        assert torch.equal(noisy_label, label)  # labels untouched
        assert (noisy != image).float().mean() > 0.3
        assert torch.equal(worker_image, noisy)  # the same in 2 workers as in 0
        assert torch.equal(worker_label, label)
    # Each image its own draws, even in a worker that loads several.
    noise = [(n.int() - c.int()) for (c, _), (n, _) in zip(clean, in_process)]
    assert not torch.equal(noise[0], noise[1])
