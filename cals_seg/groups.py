"""Which multiplier each (pixel, logit) constraint belongs to.

CALS learns one multiplier per logit ``k`` and applies it at every pixel. A
grouping makes the multiplier depend on where the pixel is (issue 11):

- ``'logit'``: group ``k`` (CALS; ``C`` groups);
- ``'label'``: the pixel's ground-truth class ``y_i`` (``C`` groups);
- ``'label_logit'``: ``y_i * C + k`` (``C^2`` groups);
- ``'region'``: ``k`` for interior pixels, ``C + k`` for boundary pixels, a
  pixel being on a boundary when its ``(2 width + 1)^2`` window holds another
  label, the ignore label included (:func:`cals_seg.label_maps.boundary_mask`;
  CRaC's class x {interior, boundary}; ``2C`` groups).
"""
from typing import List, Sequence

import torch
from torch import Tensor

from .label_maps import boundary_mask

GROUPINGS = ('logit', 'label', 'label_logit', 'region')


def check_grouping(grouping: str) -> None:
    if grouping not in GROUPINGS:
        raise ValueError(f'groups must be one of {GROUPINGS}, got {grouping!r}')


def num_groups(grouping: str, num_classes: int) -> int:
    check_grouping(grouping)
    return dict(logit=num_classes, label=num_classes,
                label_logit=num_classes**2, region=2 * num_classes)[grouping]


def group_names(grouping: str, class_names: Sequence[str]) -> List[str]:
    """Readable names of the groups, in index order (for the logs)."""
    check_grouping(grouping)
    names = [str(name) for name in class_names]
    if grouping in ('logit', 'label'):
        return names if grouping == 'logit' else [f'label_{n}' for n in names]
    if grouping == 'label_logit':
        return [f'label_{y}/{k}' for y in names for k in names]
    return [f'{n}/interior' for n in names] + [f'{n}/boundary' for n in names]


def group_index(grouping: str, label: Tensor, valid: Tensor, num_classes: int,
                region_width: int = 1) -> Tensor:
    """Group of every (pixel, logit), broadcastable to ``(N, C, *S)``.

    Args:
        label (Tensor): ``(N, *S)`` classes.
        valid (Tensor): ``(N, *S)`` bool; invalid pixels get group 0 (their
            constraints are masked out by the caller).
        region_width (int): boundary half-width of the 'region' grouping.

    Returns:
        Tensor: int64, ``(1, C, 1, ...)``, ``(N, 1, *S)`` or ``(N, C, *S)``.
    """
    check_grouping(grouping)
    spatial = (1, ) * (label.dim() - 1)
    logit = torch.arange(num_classes, device=label.device).view(1, -1, *spatial)
    y = label.where(valid, 0).long().unsqueeze(1)
    if grouping == 'logit':
        return logit
    if grouping == 'label':
        return y
    if grouping == 'label_logit':
        return y * num_classes + logit
    near = boundary_mask(label, region_width).unsqueeze(1)
    return logit + num_classes * near.long()
