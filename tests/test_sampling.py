"""What calibrators are fitted on: pixels and crops sampled per image, checked
against the images they came from."""
import pytest
import torch

from cals_seg.evaluation.sampling import sample_crops, sample_pixels

IGNORE = 255


def _images(count=3, classes=4, shapes=((9, 9), ), seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = []
    for index in range(count):
        height, width = shapes[index % len(shapes)]
        logits = torch.randn(classes, height, width, generator=generator)
        labels = torch.randint(0, classes, (height, width), generator=generator)
        labels[0, :3] = IGNORE
        images.append((logits, labels))
    return images


def test_all_kept_pixels_when_under_the_limit():
    images = _images()
    z, y, ids = sample_pixels(images, 3, 4, IGNORE)
    expected = torch.cat([l.reshape(4, -1).T[(t != IGNORE).reshape(-1)]
                          for l, t in images])
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(y, torch.cat([t[t != IGNORE] for _, t in images]))
    assert ids.tolist() == sum([[i] * 78 for i in range(3)], [])


def test_capped_pixels_are_pixels_of_their_image_and_leave_excluded_classes_out():
    images = _images()
    z, y, ids = sample_pixels(images, 3, 4, IGNORE, exclude_classes=(0, ),
                              max_pixels=30)
    assert z.shape == (30, 4) and bool((y != 0).all())
    for row, label, image in zip(z, y, ids):
        logits, labels = images[int(image)]
        match = (logits.reshape(4, -1).T == row).all(dim=1)
        assert int(labels.reshape(-1)[match][0]) == int(label)
    again = sample_pixels(images, 3, 4, IGNORE, exclude_classes=(0, ), max_pixels=30)
    torch.testing.assert_close(again[0], z)  # seeded
    other = sample_pixels(images, 3, 4, IGNORE, exclude_classes=(0, ),
                          max_pixels=30, seed=1)
    assert not torch.equal(other[0], z)


def test_crops_are_windows_of_their_image_cut_to_the_smallest_side():
    images = [(l, t, l[:3] * 10) for l, t in
              _images(shapes=((12, 20), (10, 10), (16, 16)))]
    maps, labels, ids, crops = sample_crops(images, 3, max_pixels=10_000, crop=8)
    # 10,000 pixels over 3 images of 8 x 8 crops: 52 each, capped by covering:
    # 2 x 3, 2 x 2 and 2 x 2 crops.
    assert ids.tolist() == [0] * 6 + [1] * 4 + [2] * 4
    assert maps.shape == (14, 4, 8, 8) and crops.shape == (14, 3, 8, 8)
    for z, y, x, i in zip(maps, labels, crops, ids):
        logits, label, image = images[int(i)]
        height, width = label.shape
        assert any(torch.equal(z, logits[:, r:r + 8, c:c + 8])
                   and torch.equal(y, label[r:r + 8, c:c + 8])
                   and torch.equal(x, image[:, r:r + 8, c:c + 8])
                   for r in range(height - 7) for c in range(width - 7))
    small = [(l, t, None) for l, t in _images(shapes=((12, 12), (6, 9)))]
    maps, labels, ids, crops = sample_crops(small, 3, max_pixels=10, crop=8)
    assert maps.shape == (3, 4, 6, 6) and crops is None  # one crop an image


def test_no_image_is_an_error():
    with pytest.raises(ValueError, match='no image to sample'):
        sample_pixels([], 0, 4)
    with pytest.raises(ValueError, match='no image to crop'):
        sample_crops([], 0)


def test_crops_do_not_keep_their_images_alive():
    logits, labels = _images(count=1, shapes=((64, 64), ))[0]
    maps, crops, _, _ = sample_crops([(logits, labels, None)], 1, max_pixels=64,
                                     crop=8)
    # One 8 x 8 crop: its storage holds the crop, not the 64 x 64 image.
    assert maps.untyped_storage().nbytes() == maps.numel() * maps.element_size()
    assert maps.numel() == 4 * 8 * 8
