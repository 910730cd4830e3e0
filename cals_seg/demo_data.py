"""A generated segmentation dataset on which cross-entropy becomes over-confident.

Written in the real on-disk layouts, so mmseg's own datasets read it unchanged:

- 'voc': ``VOCdevkit/VOC2012/{JPEGImages, SegmentationClass (palette PNG),
  SegmentationClassAug (grey PNG), ImageSets/Segmentation/{train,val,aug}.txt}``;
- 'cityscapes': ``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` and
  ``gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png``.

What makes calibration visible (DESIGN.md section 5):

- long-tailed classes: background covers most pixels; each foreground class has
  its own object frequency and size, the rarest a few percent of the pixels;
- intrinsic ambiguity: classes come in look-alike pairs drawn with IDENTICAL
  appearance, and which of the pair an object is labelled is drawn at random
  (unequal odds), so no network can be sure and a memorising one is over-confident;
- noisy boundaries: each object's label is drawn from a slightly jittered copy of
  the shape in the image, and a thin ring around it is labelled ignore (255), as
  in VOC's own annotations.

Classes are subsets of VOC's and Cityscapes' class names at their original
indices, because mmseg's datasets map labels by class name.
"""
import os
import os.path as osp
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

LAYOUTS = ('voc', 'cityscapes')
VOC_CLASSES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle')
CITYSCAPES_CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole')
CITY = 'demoville'
IGNORE_INDEX = 255

# Per foreground class: mean objects per image, radius range in image fractions,
# probability of the class within its look-alike pair, and its pair's colour.
# Classes 1 and 2 look the same, as do 3 and 4; class 5 is distinct and rare.
FOREGROUND = {
    1: dict(objects=1.6, radius=(0.10, 0.20), odds=0.7, colour=(200, 60, 50)),
    2: dict(objects=0.7, radius=(0.08, 0.16), odds=0.3, colour=(200, 60, 50)),
    3: dict(objects=1.0, radius=(0.07, 0.14), odds=0.65, colour=(40, 150, 210)),
    4: dict(objects=0.8, radius=(0.06, 0.12), odds=0.35, colour=(40, 150, 210)),
    5: dict(objects=0.8, radius=(0.07, 0.12), odds=1.0, colour=(70, 190, 80)),
}


def voc_palette() -> List[int]:
    """The standard VOC colour map, flattened for ``PIL.Image.putpalette``."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def _draw_sample(rng: np.random.Generator,
                 size: int) -> Tuple[np.ndarray, np.ndarray]:
    """One image (H, W, 3) uint8 and its label map (H, W) uint8."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    smooth = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32),
                              (0, 0), size / 16)
    base = 110 + 25 * smooth / (np.abs(smooth).max() + 1e-6)
    image = np.repeat(base[..., None], 3, axis=2) + rng.normal(0, 12, (size, size, 3))
    label = np.zeros((size, size), np.uint8)
    ignore = np.zeros((size, size), bool)
    objects = []
    for cls, spec in FOREGROUND.items():
        objects += [cls] * rng.poisson(spec['objects'])
    for cls in rng.permutation(np.array(objects, dtype=int)):
        spec = FOREGROUND[int(cls)]
        cy, cx = rng.uniform(0.1, 0.9, 2) * size
        ry, rx = rng.uniform(*spec['radius'], 2) * size
        angle = rng.uniform(0, np.pi)
        shape = _ellipse(yy, xx, cy, cx, ry, rx, angle)
        jitter = rng.normal(0, 0.06, 4) * np.array([ry, rx, ry, rx])
        label_shape = _ellipse(yy, xx, cy + jitter[0], cx + jitter[1],
                               ry + jitter[2], rx + jitter[3], angle)
        partner = int(cls) + 1 if int(cls) in (1, 3) else int(cls) - 1
        drawn = int(cls)
        if spec['odds'] < 1 and rng.random() > spec['odds']:
            drawn = partner
        colour = np.array(spec['colour'], np.float32) + rng.normal(0, 10, 3)
        image[shape] = colour + rng.normal(0, 14, (int(shape.sum()), 3))
        label[label_shape] = drawn
        ring = cv2.dilate(label_shape.astype(np.uint8), np.ones((3, 3), np.uint8))
        ignore |= (ring > 0) & ~cv2.erode(label_shape.astype(np.uint8),
                                          np.ones((3, 3), np.uint8)).astype(bool)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, np.where(ignore, IGNORE_INDEX, label).astype(np.uint8)


def _ellipse(yy, xx, cy, cx, ry, rx, angle) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    u = (xx - cx) * cos + (yy - cy) * sin
    v = -(xx - cx) * sin + (yy - cy) * cos
    return (u / max(rx, 1.0))**2 + (v / max(ry, 1.0))**2 <= 1.0


def _write_voc(root: str, split_names: Dict[str, Sequence[str]], samples):
    voc = osp.join(root, 'VOCdevkit', 'VOC2012')
    for folder in ('JPEGImages', 'SegmentationClass', 'SegmentationClassAug',
                   osp.join('ImageSets', 'Segmentation')):
        os.makedirs(osp.join(voc, folder), exist_ok=True)
    palette = voc_palette()
    for name, (image, label) in samples.items():
        cv2.imwrite(osp.join(voc, 'JPEGImages', f'{name}.jpg'), image[..., ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        indexed = Image.fromarray(label, mode='P')
        indexed.putpalette(palette)
        indexed.save(osp.join(voc, 'SegmentationClass', f'{name}.png'))
        Image.fromarray(label, mode='L').save(
            osp.join(voc, 'SegmentationClassAug', f'{name}.png'))
    lists = dict(split_names, aug=split_names['train'])
    for split, names in lists.items():
        with open(osp.join(voc, 'ImageSets', 'Segmentation', f'{split}.txt'),
                  'w') as f:
            f.write(''.join(f'{n}\n' for n in names))
    return voc


def _write_cityscapes(root: str, split_names: Dict[str, Sequence[str]], samples):
    for split, names in split_names.items():
        image_dir = osp.join(root, 'leftImg8bit', split, CITY)
        label_dir = osp.join(root, 'gtFine', split, CITY)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        for name in names:
            image, label = samples[name]
            cv2.imwrite(osp.join(image_dir, f'{name}_leftImg8bit.png'),
                        image[..., ::-1])
            Image.fromarray(label, mode='L').save(
                osp.join(label_dir, f'{name}_gtFine_labelTrainIds.png'))
    return root


def make_demo_dataset(root: str,
                      layout: str = 'voc',
                      num_train: int = 60,
                      num_val: int = 30,
                      size: int = 128,
                      seed: int = 0) -> dict:
    """Write the demo dataset under ``root``; the same arguments give the same files.

    Args:
        root (str): output folder (created).
        layout (str): 'voc' or 'cityscapes'.
        num_train (int), num_val (int): images per split.
        size (int): image side in pixels.
        seed (int): random seed.

    Returns:
        dict: ``data_root`` to give mmseg's dataset, ``classes`` and the split
        names.
    """
    if layout not in LAYOUTS:
        raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')
    if num_train < 1 or num_val < 1 or size < 16:
        raise ValueError('need num_train >= 1, num_val >= 1 and size >= 16')
    rng = np.random.default_rng(seed)
    if layout == 'voc':
        split_names = {
            'train': [f'2007_{i:06d}' for i in range(num_train)],
            'val': [f'2008_{i:06d}' for i in range(num_val)]
        }
    else:
        split_names = {
            split: [f'{CITY}_{offset + i:06d}_000019' for i in range(count)]
            for split, offset, count in (('train', 0, num_train),
                                         ('val', num_train, num_val))
        }
    samples = {}
    for split in ('train', 'val'):
        for name in split_names[split]:
            samples[name] = _draw_sample(rng, size)
    if layout == 'voc':
        data_root = _write_voc(root, split_names, samples)
        classes = VOC_CLASSES
    else:
        data_root = _write_cityscapes(root, split_names, samples)
        classes = CITYSCAPES_CLASSES
    return dict(data_root=data_root, classes=classes, **split_names)
