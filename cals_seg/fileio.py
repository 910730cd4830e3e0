"""Small file and label helpers shared by the loss, the metric and the tools."""
import os

import torch
from torch import Tensor


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` so that ``path`` is either absent, old, or complete: a
    reader, or an interrupted run, never sees half a file."""
    temporary = f'{path}.tmp{os.getpid()}'
    with open(temporary, 'wb') as f:
        f.write(data)
    os.replace(temporary, path)


def check_label_range(label: Tensor, num_classes: int, ignore_index: int) -> None:
    """Raise ValueError naming the label values outside ``[0, C)`` that are not
    ``ignore_index``."""
    bad = ((label < 0) | (label >= num_classes)) & (label != ignore_index)
    if bad.any():
        values = torch.unique(label[bad])[:10].tolist()
        raise ValueError(f'labels hold values {values} outside [0, {num_classes}) '
                         f'that are not ignore_index={ignore_index}')
