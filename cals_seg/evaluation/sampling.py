"""What post-hoc calibrators are fitted on: pixels or crops sampled from held-out
images, one image in memory at a time.

One sampling path for every tool: ``tools/calib_eval.py`` feeds it saved logits
(:mod:`cals_seg.evaluation.offline`), the study and ``tools/regime_report.py``
a model's logits on the hold-out loader (:mod:`cals_seg.evaluation.split_report`),
so a calibrator fitted either way sees the same pixels of the same images.
"""
import math
from typing import Iterable, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..functional.calibration import keep_mask

# Pixels (or crop pixels) a calibrator is fitted on, spread evenly over images.
DEFAULT_MAX_FIT_PIXELS = 1_000_000
DEFAULT_CROP = 128


def _chosen(keep: Tensor, limit: int, generator: torch.Generator) -> Tensor:
    """Indices of the True entries of ``keep``, a seeded random ``limit`` of
    them when there are more."""
    index = keep.nonzero().squeeze(1)
    if index.numel() > limit:
        order = torch.randperm(index.numel(), generator=generator)[:limit]
        index = index[order.to(index.device)]
    return index


def sample_pixels(images: Iterable[Tuple[Tensor, Tensor]], num_images: int,
                  num_classes: int, ignore_index: int = 255,
                  exclude_classes: Sequence[int] = (),
                  max_pixels: int = DEFAULT_MAX_FIT_PIXELS, seed: int = 0):
    """Kept pixels of each image: all of them, or a seeded random
    ``max_pixels // num_images`` when an image has more.

    Args:
        images: ``(logits (C, H, W), labels (H, W))`` per image.
        num_images (int): how many ``images`` yields (sets the share per image).
        num_classes (int): ``C``.
        ignore_index (int): label of pixels to leave out.
        exclude_classes (sequence[int]): classes whose pixels are left out.
        max_pixels (int): pixels in all, at most.
        seed (int): seed of the random choice.

    Returns:
        tuple: logits ``(N, C)``, labels ``(N, )`` and image ids ``(N, )`` (each
        pixel's image, counted from 0 in the order given), on the logits' device.

    Raises:
        ValueError: no image.
    """
    generator = torch.Generator().manual_seed(seed)
    per_image = max(1, max_pixels // max(num_images, 1))
    logits_parts, label_parts, id_parts = [], [], []
    for image_id, (logits, labels) in enumerate(images):
        keep = keep_mask(labels.reshape(-1), num_classes, ignore_index,
                         exclude_classes)
        index = _chosen(keep, per_image, generator)
        logits_parts.append(logits.reshape(num_classes, -1)[:, index].T)
        label_parts.append(labels.reshape(-1)[index])
        id_parts.append(torch.full_like(index, image_id))
    if not logits_parts:
        raise ValueError('no image to sample pixels from')
    return torch.cat(logits_parts), torch.cat(label_parts), torch.cat(id_parts)


def sample_crops(images: Iterable[Tuple[Tensor, Tensor, Optional[Tensor]]],
                 num_images: int, max_pixels: int = DEFAULT_MAX_FIT_PIXELS,
                 crop: int = DEFAULT_CROP, seed: int = 0):
    """Square crops of the logit maps, for calibrators that see neighbourhoods.

    From each image, seeded random crops of ``s = min(crop, the image's
    shorter side)`` pixels a side: as many as ``max_pixels`` allows spread
    evenly over the images, and no more than it takes to cover the image once
    (more would repeat pixels). Crops are kept, not images; at the end every
    crop is cut to the smallest side among them, to make one batch.

    Args:
        images: ``(logits (C, H, W), labels (H, W), image (3, H, W) or None)``
            per image.
        num_images (int): how many ``images`` yields.
        max_pixels (int): crop pixels in all, at most (at least one crop an
            image).
        crop (int): side of the crops.
        seed (int): seed of the crop positions.

    Returns:
        tuple: logits ``(N, C, s, s)``, labels ``(N, s, s)`` (ignored pixels
        keep their label), image ids ``(N, )`` and image crops ``(N, 3, s, s)``
        (None when the images were None).

    Raises:
        ValueError: no image.
    """
    generator = torch.Generator().manual_seed(seed)
    crops, labels, image_ids, image_crops = [], [], [], []
    for image_id, (logits, label, image) in enumerate(images):
        height, width = label.shape
        side = min(crop, height, width)
        budget = max(1, max_pixels // (side * side * max(num_images, 1)))
        covering = math.ceil(height / side) * math.ceil(width / side)
        for _ in range(min(budget, covering)):
            top = int(torch.randint(height - side + 1, (1, ), generator=generator))
            left = int(torch.randint(width - side + 1, (1, ), generator=generator))
            window = (slice(top, top + side), slice(left, left + side))
            # Copies: a view would keep the whole image's logits alive.
            crops.append(logits[(slice(None), ) + window].clone())
            labels.append(label[window].clone())
            image_ids.append(image_id)
            if image is not None:
                image_crops.append(image[(slice(None), ) + window].clone())
    if not crops:
        raise ValueError('no image to crop')
    side = min(label.shape[0] for label in labels)
    window = (slice(0, side), slice(0, side))
    return (torch.stack([z[(slice(None), ) + window] for z in crops]),
            torch.stack([y[window] for y in labels]),
            torch.tensor(image_ids, device=crops[0].device),
            torch.stack([x[(slice(None), ) + window] for x in image_crops])
            if image_crops else None)
