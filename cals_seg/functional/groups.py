"""Which multiplier each (pixel, logit) constraint belongs to.

CALS learns one multiplier per logit ``k`` and applies it at every pixel. A
grouping makes the multiplier depend on where the pixel is:

- ``'logit'``: group ``k`` (CALS; ``C`` groups);
- ``'label'``: the pixel's ground-truth class ``y_i`` (``C`` groups);
- ``'label_logit'``: ``y_i * C + k`` (``C^2`` groups);
- ``'region'``: ``k`` for interior pixels, ``C + k`` for boundary pixels, a
  pixel being on a boundary when its ``(2 width + 1)^2`` window holds another
  label, the ignore label included
  (:func:`cals_seg.functional.neighbourhood.boundary_mask`; CRaC's class x
  {interior, boundary}; ``2C`` groups).
"""
from typing import List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from .neighbourhood import boundary_mask

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


class GroupLayout(NamedTuple):
    """Where each (pixel, logit) constraint's multiplier is: group ``base_i +
    logit_stride * k``. Kept in this form, a per-pixel map, because the
    ``(N, C, *S)`` index it stands for would be as large as the logits (twice
    as large in int64).

    With ``logit_stride`` 1, ``base_i`` is a multiple of ``C``: the groups are
    the rows of a ``[G / C, C]`` table (:meth:`table`) and a pixel's ``C``
    constraints read row ``base_i / C`` of it (:meth:`rows`); with
    ``logit_stride`` 0 the table is ``[G, 1]`` and every constraint of the
    pixel reads row ``base_i``.

    Attributes:
        base (Tensor): int64 ``(N, *S)``; 0 at invalid pixels (their
            constraints are masked out by the caller).
        logit_stride (int): 1 when the group depends on the logit, else 0.
        num_classes (int): ``C``.
    """
    base: Tensor
    logit_stride: int
    num_classes: int

    def rows(self) -> Tensor:
        """Each pixel's row of :meth:`table`, int64 ``(N, *S)``."""
        if self.logit_stride == 0:
            return self.base
        return torch.div(self.base, self.num_classes, rounding_mode='floor')

    def table(self, values: Tensor) -> Tensor:
        """Per-group values ``[G]`` as the table whose entry ``(rows()[i], k *
        logit_stride)`` belongs to constraint ``(i, k)``: ``[G / C, C]`` or
        ``[G, 1]``, a view of ``values``."""
        width = self.num_classes if self.logit_stride else 1
        if values.dim() != 1 or values.numel() % width:
            raise ValueError(f'per-group values must be a vector of a multiple of '
                             f'{width} groups here, got shape {tuple(values.shape)}')
        return values.view(-1, width)


def group_layout(grouping: str, label: Tensor, valid: Tensor, num_classes: int,
                 region_width: int = 1,
                 boundary: Optional[Tensor] = None) -> GroupLayout:
    """The groups of a batch's constraints.

    Args:
        label (Tensor): ``(N, *S)`` classes.
        valid (Tensor): ``(N, *S)`` bool.
        region_width (int): boundary half-width of the 'region' grouping.
        boundary (Tensor, optional): ``boundary_mask(label, region_width)``
            where the caller has it already (CRaC's targets read it too).

    Returns:
        GroupLayout
    """
    check_grouping(grouping)
    y = label.where(valid, 0).long()
    if grouping == 'logit':
        return GroupLayout(torch.zeros_like(y), 1, num_classes)
    if grouping == 'label':
        return GroupLayout(y, 0, num_classes)
    if grouping == 'label_logit':
        return GroupLayout(y * num_classes, 1, num_classes)
    if boundary is None:
        boundary = boundary_mask(label, region_width)
    return GroupLayout(boundary.long() * num_classes, 1, num_classes)
