"""The 15 ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019) as a
seeded, label-preserving mmseg transform.

The corruptions themselves come from ``imagecorruptions-imaug`` (import name
``imagecorruptions``), a maintained fork of bethgelab's ``imagecorruptions``
with the same functions and severity tables. The original's last release
(1.1.2, 2020) fails under numpy 2 and scikit-image >= 0.19: ``fog`` uses
``np.float_`` and ``glass_blur`` passes ``multichannel`` to
``skimage.filters.gaussian``; its ``impulse_noise`` cannot be seeded at all
(scikit-image's ``random_noise`` draws from its own generator). The fork fixes
those and takes a ``seed`` for ``impulse_noise`` and ``glass_blur`` (whose
pixel shuffle runs under numba, with numba's own random state). It differs from
Hendrycks' original in one place: ``frost`` picks among all six bundled frost
pictures instead of the first five.

Where this differs from MMDetection's ``Corrupt`` transform (read by its
tools/analysis_tools/test_robustness.py, which inserts it right after
``LoadImageFromFile``): MMDetection hands the BGR image to ``imagecorruptions``
as it is, and the library's global random state is seeded once per run, so a
corrupted image depends on the order in which workers load images. Here the
image is converted to the RGB the library expects (``frost`` and ``snow`` are
not symmetric in the colour channels), and the random state of each call is
derived from the seed and the image's content, so the same image gets the same
corruption whatever the number of workers or the order, with the same draws at
every severity (:func:`corruption_rng`).
"""
import functools
import hashlib
import inspect
from typing import Optional

import numpy as np
from mmcv.transforms import BaseTransform

from mmseg.registry import TRANSFORMS

# In ImageNet-C's order: noise, blur, weather, digital.
CORRUPTIONS = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur',
               'glass_blur', 'motion_blur', 'zoom_blur', 'snow', 'frost', 'fog',
               'brightness', 'contrast', 'elastic_transform', 'pixelate',
               'jpeg_compression')
SEVERITIES = (0, 1, 2, 3, 4, 5)  # 0: the image unchanged
# Corruptions whose randomness the library does not draw from numpy's global
# state; they take a ``seed`` argument instead.
_SEEDED_BY_ARGUMENT = ('impulse_noise', 'glass_blur')
# The library refuses smaller images.
MIN_SIDE = 32
CHANNEL_ORDERS = ('bgr', 'rgb')


@functools.lru_cache(maxsize=None)
def _library():
    """``imagecorruptions.corrupt``, checked to be the fork this module needs."""
    try:
        import imagecorruptions
        from imagecorruptions import corruptions
    except ImportError as error:
        raise ImportError(
            'ImageCorruption needs the imagecorruptions-imaug package: pip '
            'install imagecorruptions-imaug==1.1.5 (requirements/common.txt)') from error
    if 'seed' not in inspect.signature(corruptions.glass_blur).parameters:
        raise ImportError(
            'the installed imagecorruptions package is bethgelab\'s original, '
            'whose fog and glass_blur fail under numpy 2 and current '
            'scikit-image and whose impulse_noise cannot be seeded; pip uninstall '
            'imagecorruptions && pip install imagecorruptions-imaug==1.1.5')
    return imagecorruptions.corrupt


def check_corruption(corruption: str, severity: int) -> None:
    """Raise ValueError naming the valid values when either is not one."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f'unknown corruption {corruption!r}; valid: '
                         f'{", ".join(CORRUPTIONS)}')
    if isinstance(severity, bool) or not isinstance(
            severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f'severity must be an integer in {SEVERITIES} (0: no '
                         f'corruption), got {severity!r}')


def corruption_rng(image: np.ndarray, corruption: str,
                   seed: int) -> np.random.Generator:
    """The generator of one (image, corruption, seed), the image by a hash of its
    pixels and shape, so it does not depend on where the image is stored, which
    worker loads it or in which order.

    The severity is left out on purpose: every severity of an image makes the
    same draws (noise field, frost picture and crop, blur angle, fog fractal),
    so the severity changes the corruption's strength only and a curve against
    severity is not blurred by new draws at each step (common random numbers).
    """
    digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16)
    digest.update(repr(image.shape).encode())
    words = np.frombuffer(digest.digest(), dtype=np.uint32).tolist()
    return np.random.default_rng(
        np.random.SeedSequence([seed, CORRUPTIONS.index(corruption), *words]))


def corrupt_image(image: np.ndarray, corruption: str, severity: int,
                  seed: int = 0) -> np.ndarray:
    """One ImageNet-C corruption of an RGB image, deterministic per
    (image, corruption, severity, seed), with the same random draws at every
    severity (:func:`corruption_rng`).

    The library draws from numpy's global random state; that state is seeded
    from :func:`corruption_rng` for the call and restored afterwards, so nothing
    outside changes (not thread-safe: use processes, as DataLoader workers are).

    Args:
        image (np.ndarray): ``(H, W, 3)`` uint8, RGB, both sides >= 32.
        corruption (str): one of :data:`CORRUPTIONS`.
        severity (int): 0 (returns ``image`` itself) to 5.
        seed (int): non-negative.

    Returns:
        np.ndarray: ``(H, W, 3)`` uint8, RGB.
    """
    check_corruption(corruption, severity)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f'seed must be a non-negative integer, got {seed!r}')
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or \
            image.ndim != 3 or image.shape[2] != 3:
        raise TypeError('ImageNet-C corruptions take (H, W, 3) uint8 images, got '
                        f'{type(image).__name__} {getattr(image, "dtype", "")} '
                        f'{getattr(image, "shape", "")}; put ImageCorruption '
                        'right after LoadImageFromFile')
    if min(image.shape[:2]) < MIN_SIDE:
        raise ValueError(f'ImageNet-C corruptions need both image sides >= '
                         f'{MIN_SIDE} pixels, got {image.shape[:2]}')
    if severity == 0:
        return image
    corrupt = _library()
    rng = corruption_rng(image, corruption, seed)
    global_seed, argument_seed = (int(s) for s in rng.integers(2**32, size=2))
    options = dict(seed=argument_seed) if corruption in _SEEDED_BY_ARGUMENT else {}
    saved = np.random.get_state()
    np.random.seed(global_seed)
    try:
        return corrupt(image, severity=severity, corruption_name=corruption,
                       **options)
    finally:
        np.random.set_state(saved)


@TRANSFORMS.register_module()
class ImageCorruption(BaseTransform):
    """Corrupt ``results['img']`` with an ImageNet-C corruption; labels
    (``gt_seg_map``) and every other key are left as they are.

    Put it right after ``LoadImageFromFile`` (on the uint8 image at its stored
    size, before any resize), as MMDetection's robustness benchmark does::

        dict(type='LoadImageFromFile'),
        dict(type='ImageCorruption', corruption='gaussian_noise', severity=3),
        dict(type='LoadAnnotations'), ...

    Required keys: ``img`` (``(H, W, 3)`` uint8). Modified keys: ``img``.

    Args:
        corruption (str): one of :data:`CORRUPTIONS`.
        severity (int): 1 (mild) to 5; 0 leaves the image unchanged.
        seed (int): with the image's content, fixes the random draws.
        channel_order (str): the order of ``results['img']``: 'bgr' (what
            ``LoadImageFromFile`` gives by default) or 'rgb'.
    """

    def __init__(self, corruption: str, severity: int = 3, seed: int = 0,
                 channel_order: str = 'bgr'):
        check_corruption(corruption, severity)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f'seed must be a non-negative integer, got {seed!r}')
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f'channel_order must be one of {CHANNEL_ORDERS}, got '
                             f'{channel_order!r}')
        if severity > 0:
            _library()  # fail when the pipeline is built, not in a worker
        self.corruption = corruption
        self.severity = severity
        self.seed = seed
        self.channel_order = channel_order

    def transform(self, results: dict) -> Optional[dict]:
        if self.severity == 0:
            return results
        image = results['img']
        flip = self.channel_order == 'bgr' and isinstance(image, np.ndarray) and \
            image.ndim == 3
        rgb = np.ascontiguousarray(image[..., ::-1]) if flip else image
        corrupted = corrupt_image(rgb, self.corruption, self.severity, self.seed)
        results['img'] = np.ascontiguousarray(corrupted[..., ::-1]) if flip \
            else corrupted
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(corruption={self.corruption!r}, '
                f'severity={self.severity}, seed={self.seed}, '
                f'channel_order={self.channel_order!r})')
