"""Label checks shared by the losses, the metric and the tools."""
import torch
from torch import Tensor


def check_label_range(label: Tensor, num_classes: int, ignore_index: int) -> None:
    """Raise ValueError naming the label values outside ``[0, C)`` that are not
    ``ignore_index``.

    Reads one value back to the host (whether any label is bad), so on a GPU
    it waits for the labels: the price of an error that names the values,
    where CUDA's cross-entropy would stop on a device-side assert that names
    none and leaves the device unusable.
    """
    bad = ((label < 0) | (label >= num_classes)) & (label != ignore_index)
    if bad.any():
        values = torch.unique(label[bad])[:10].tolist()
        raise ValueError(f'labels hold values {values} outside [0, {num_classes}) '
                         f'that are not ignore_index={ignore_index}')
