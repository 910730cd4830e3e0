"""A generated segmentation dataset on which cross-entropy becomes over-confident.

Written in the real on-disk layouts, so mmseg's own datasets read it unchanged:

- 'voc': ``VOCdevkit/VOC2012/{JPEGImages, SegmentationClass (palette PNG),
  SegmentationClassAug (grey PNG), ImageSets/Segmentation/{train,val,aug}.txt}``;
- 'cityscapes': ``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` and
  ``gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png``.

Real networks are over-confident because they fit their training set almost
perfectly and then meet test images that differ from it. The data reproduces the
causes that real segmentation data has (docs/results.md measures the
effect):

- few training images for the model's capacity (``num_train`` 60 by default, of
  which the demo configs train on 20 and hold out the rest for the multipliers,
  the calibrators and the study's selection), so a long schedule memorises them;
- overlapping, not identical, class appearance: classes come in pairs whose colour
  and texture distributions overlap (each object draws its own colour, stripe
  period and stripe angle), so test objects in the overlap are ambiguous while
  every training object can be memorised;
- background clutter: every image has a varying base colour, smooth shading and
  distractor blobs, some drawn with a foreground class's appearance but labelled
  background, as real scenes hold objects outside the label set;
- scale and pose variation: objects from small to a quarter of the image, at any
  angle, overlapping each other;
- class imbalance: background about half of the pixels, the rarest foreground
  class a few percent;
- noisy boundaries: an object's label is drawn from a slightly jittered copy of
  its shape, and a thin ring around it is labelled ignore (255), as in VOC.

Classes are subsets of VOC's and Cityscapes' class names at their original
indices, because mmseg's datasets map labels by class name.

``domain='shifted'`` writes a second test split for evaluating calibration under
distribution shift, as Cityscapes -> ACDC (the same classes seen at night, in fog
or rain): the same scenes and label maps as the source test split, so a change
in the numbers is the appearance's alone, seen under other conditions (see
:data:`SHIFT`): dimmer, uneven lighting; a colour cast with faded colours;
coarser stripes; a softer lens and more sensor noise.

Why it lives in the package rather than under tests/: it is the dataset of
``make demo``, of the benchmark in docs/results.md and of the study and shift
tools, which users run from an installed package, as well as of the tests. It
needs numpy, OpenCV and Pillow only, and ``import cals_seg`` does not load it.
"""
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

LAYOUTS = ('voc', 'cityscapes')
DOMAINS = ('source', 'shifted')
VOC_CLASSES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle')
CITYSCAPES_CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole')
CITY = 'demoville'
IGNORE_INDEX = 255

# Per foreground class: mean objects per image, radius range (image fractions),
# mean RGB colour, stripe period range in pixels (None: no stripes). Classes 1 and
# 2 overlap in colour and stripe period, as do 3 and 4; class 5 is distinct and
# rare. OBJECT_COLOUR_STD spreads each object's colour around its class mean.
FOREGROUND = {
    1: dict(objects=2.4, radius=(0.10, 0.28), colour=(185, 75, 60), period=(4, 9)),
    2: dict(objects=1.4, radius=(0.08, 0.24), colour=(165, 95, 75), period=(7, 12)),
    3: dict(objects=2.0, radius=(0.08, 0.24), colour=(60, 125, 190), period=(3, 7)),
    4: dict(objects=1.3, radius=(0.07, 0.20), colour=(75, 145, 170), period=(5, 10)),
    5: dict(objects=0.8, radius=(0.06, 0.14), colour=(90, 175, 80), period=None),
}
OBJECT_COLOUR_STD = 18.0
# Distractors: blobs labelled background; with this probability one copies a
# foreground class's appearance, otherwise its colour is drawn at random.
DISTRACTORS = dict(objects=2.0, radius=(0.05, 0.16), mimic=0.35)
PIXEL_NOISE_STD = 10.0
LABEL_JITTER = 0.05  # std of the label shape's offset, in object radii
# The shifted domain's conditions. Lighting: the scene's brightness times a
# smooth gain field that falls from ``gain[1]`` to ``gain[0]`` across the image
# in a random direction (dusk, one light source). Palette: colours move
# ``desaturation`` of the way to their grey level, then each channel is scaled
# by ``colour_cast`` (sodium street light). Texture: stripe periods times
# ``period_scale``. Sensor: a Gaussian blur of ``blur_sigma`` pixels, then pixel
# noise ``noise_scale`` times the source's.
# Chosen so that the cross-entropy model of configs/demo keeps a meaningful test
# mIoU (about two thirds of the source domain's) while its ECE doubles.
SHIFT = dict(gain=(0.8, 1.0), desaturation=0.2, colour_cast=(1.05, 1.0, 0.92),
             period_scale=1.15, blur_sigma=0.6, noise_scale=1.4)


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


def _ellipse(yy, xx, cy, cx, ry, rx, angle) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    u = (xx - cx) * cos + (yy - cy) * sin
    v = -(xx - cx) * sin + (yy - cy) * cos
    return (u / max(rx, 1.0))**2 + (v / max(ry, 1.0))**2 <= 1.0


def _appearance(rng: np.random.Generator, spec: dict, yy, xx,
                period_scale: float = 1.0) -> np.ndarray:
    """An object's texture (H, W, 3): its own colour drawn around the class mean,
    and stripes of its own period (times ``period_scale``) and angle when the
    class has them."""
    colour = np.array(spec['colour'], np.float32) + rng.normal(0, OBJECT_COLOUR_STD, 3)
    texture = np.broadcast_to(colour, yy.shape + (3, )).copy()
    if spec.get('period'):
        period = rng.uniform(*spec['period']) * period_scale
        angle = rng.uniform(0, np.pi)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period)
        texture += 28 * np.sin(phase)[..., None]
    return texture


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A varying base colour with smooth shading, (H, W, 3) float32."""
    base = rng.uniform(70, 170, 3).astype(np.float32)
    shading = cv2.GaussianBlur(rng.normal(0, 1, (size, size, 3)).astype(np.float32),
                               (0, 0), size / 10)
    shading /= np.abs(shading).max() + 1e-6
    return base + 35 * shading


def _shifted_conditions(image: np.ndarray, rng: np.random.Generator,
                        shift: dict) -> np.ndarray:
    """The scene ``image`` (H, W, 3) float32 under the shifted domain's lighting,
    palette and lens (:data:`SHIFT`); ``rng`` draws the light's direction."""
    size = image.shape[0]
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / max(size - 1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) / np.sqrt(2) + 0.5
    low, high = shift['gain']
    grey = image.mean(axis=2, keepdims=True)
    image = image + shift['desaturation'] * (grey - image)
    image = image * np.array(shift['colour_cast'], np.float32)
    image = image * (low + (high - low) * ramp)[..., None]
    return cv2.GaussianBlur(image, (0, 0), shift['blur_sigma'])


def _draw_sample(rng: np.random.Generator, size: int, shift: Optional[dict] = None,
                 shift_rng: Optional[np.random.Generator] = None
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """One image (H, W, 3) uint8 and its label map (H, W) uint8.

    With ``shift`` (:data:`SHIFT`), the scene and its labels are the ones the
    same ``rng`` state gives without it (the shift draws nothing from ``rng``:
    its own draws come from ``shift_rng``); only the appearance changes."""
    period_scale = 1.0 if shift is None else shift['period_scale']
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    image = _background(rng, size)
    label = np.zeros((size, size), np.uint8)
    ignore = np.zeros((size, size), bool)
    kernel = np.ones((3, 3), np.uint8)

    for _ in range(rng.poisson(DISTRACTORS['objects'])):
        if rng.random() < DISTRACTORS['mimic']:
            spec = FOREGROUND[int(rng.integers(1, len(FOREGROUND) + 1))]
        else:
            spec = dict(colour=rng.uniform(30, 230, 3), period=None)
        cy, cx = rng.uniform(0, 1, 2) * size
        ry, rx = rng.uniform(*DISTRACTORS['radius'], 2) * size
        # Distractors are thin or irregular: a union of two ellipses.
        shape = _ellipse(yy, xx, cy, cx, ry, rx * 0.5, rng.uniform(0, np.pi)) | \
            _ellipse(yy, xx, cy + rng.normal(0, ry / 2), cx + rng.normal(0, rx / 2),
                     ry * 0.5, rx, rng.uniform(0, np.pi))
        image[shape] = _appearance(rng, spec, yy, xx, period_scale)[shape]

    objects = []
    for cls, spec in FOREGROUND.items():
        objects += [cls] * rng.poisson(spec['objects'])
    for cls in rng.permutation(np.array(objects, dtype=int)):
        spec = FOREGROUND[int(cls)]
        cy, cx = rng.uniform(0.05, 0.95, 2) * size
        ry, rx = rng.uniform(*spec['radius'], 2) * size
        angle = rng.uniform(0, np.pi)
        shape = _ellipse(yy, xx, cy, cx, ry, rx, angle)
        jitter = rng.normal(0, LABEL_JITTER, 4) * np.array([ry, rx, ry, rx])
        label_shape = _ellipse(yy, xx, cy + jitter[0], cx + jitter[1],
                               ry + jitter[2], rx + jitter[3], angle)
        image[shape] = _appearance(rng, spec, yy, xx, period_scale)[shape]
        label[label_shape] = cls
        # A later object covers an earlier one's ring as well as its pixels.
        ignore &= ~label_shape
        outline = label_shape.astype(np.uint8)
        ignore |= (cv2.dilate(outline, kernel) > 0) & ~cv2.erode(outline,
                                                                  kernel).astype(bool)
    noise_std = PIXEL_NOISE_STD
    if shift is not None:
        image = _shifted_conditions(image, shift_rng, shift)
        noise_std = PIXEL_NOISE_STD * shift['noise_scale']
    image += rng.normal(0, noise_std, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, np.where(ignore, IGNORE_INDEX, label).astype(np.uint8)


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
    lists = dict(split_names)
    if 'train' in split_names:
        lists['aug'] = split_names['train']
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
                      num_val: int = 40,
                      size: int = 128,
                      seed: int = 0,
                      domain: str = 'source') -> dict:
    """Write the demo dataset under ``root``; the same arguments give the same files.

    Args:
        root (str): output folder (created).
        layout (str): 'voc' or 'cityscapes'.
        num_train (int), num_val (int): images per split; 'val' is the test split
            the benchmark reports on.
        size (int): image side in pixels.
        seed (int): random seed.
        domain (str): 'source' writes both splits; 'shifted' writes the 'val'
            split only, with the scenes and label maps of the source 'val' split
            of the same arguments, under the conditions of :data:`SHIFT`.

    Returns:
        dict: ``data_root`` to give mmseg's dataset, ``classes``, ``domain`` and
        the split names (``train`` is empty for the shifted domain).
    """
    if layout not in LAYOUTS:
        raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')
    if domain not in DOMAINS:
        raise ValueError(f'domain must be one of {DOMAINS}, got {domain!r}')
    if num_train < 1 or num_val < 1 or size < 16:
        raise ValueError('need num_train >= 1, num_val >= 1 and size >= 16, got '
                         f'num_train={num_train}, num_val={num_val}, size={size}')
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
    if domain == 'source':
        for split in ('train', 'val'):
            for name in split_names[split]:
                samples[name] = _draw_sample(rng, size)
    else:
        # Draw the training scenes too, unshifted and unwritten, so the test
        # scenes are the source test split's.
        for name in split_names['train']:
            _draw_sample(rng, size)
        shift_rng = np.random.default_rng([seed, DOMAINS.index(domain)])
        for name in split_names['val']:
            samples[name] = _draw_sample(rng, size, SHIFT, shift_rng)
        split_names = dict(train=[], val=split_names['val'])
    written = {k: v for k, v in split_names.items() if v}
    if layout == 'voc':
        data_root = _write_voc(root, written, samples)
        classes = VOC_CLASSES
    else:
        data_root = _write_cityscapes(root, written, samples)
        classes = CITYSCAPES_CLASSES
    return dict(data_root=data_root, classes=classes, domain=domain, **split_names)
