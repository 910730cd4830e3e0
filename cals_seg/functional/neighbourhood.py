"""What a label map says about each pixel's neighbourhood: the label
proportions around it (the targets of NACL, SVLS and CRaC), where ignored pixels
are not neighbours, and whether it lies near a boundary (boundary ECE, CRaC's
regions), where the ignore label marks one.

Label proportions:

``tau_k(i) = sum_j w(i - j) [y_j = k] / sum_j w(i - j)`` over the valid pixels
``j`` of the ``k x k`` window around ``i``: ignored pixels and pixels beyond the
border are not neighbours, so a valid pixel's proportions sum to 1 over the
classes (an ignored pixel's are all 0). For each of the ``k^2`` offsets the
window's labels are scattered into the class axis: ``k^2`` passes over the
``N x H x W`` labels and one write of the ``N x C x H x W`` result, never the
one-hot labels convolved, nor ``C k^2`` unfolded copies as in the authors' code.
The CPU kernels (ops/csrc/neighbourhood_penalties.cpp) form the same proportions a
block of pixels at a time and never write them out: one-hot wherever a window
holds only the pixel's own label, the window scattered elsewhere.
"""
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

KERNELS = ('mean', 'gaussian', 'svls')


def gaussian_kernel(size: int, sigma: float) -> Tensor:
    """The normalised ``size x size`` gaussian (the authors'
    ``get_gaussian_kernel_2d``)."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-offsets.square() / (2 * sigma**2))
    kernel = torch.outer(taps, taps)
    return (kernel / kernel.sum()).float()


def svls_kernel(size: int, sigma: float) -> Tensor:
    """SVLS's kernel (Islam and Glocker, IPMI 2021; MarginLoss's
    ``get_svls_filter_2d``): a gaussian whose centre weight is replaced by the
    sum of the other weights, so the pixel's own label keeps half the mass."""
    kernel = gaussian_kernel(size, sigma)
    centre = size // 2
    kernel[centre, centre] = 1 - kernel[centre, centre]
    return kernel / kernel.sum()


def kernel_weights(kernel: str, size: int, sigma: float = 1.0) -> Tensor:
    """The ``size x size`` weights of a named kernel."""
    if not (isinstance(size, int) and size >= 1 and size % 2 == 1):
        raise ValueError(f'kernel_size must be an odd int >= 1, got {size!r}')
    if kernel == 'mean':
        return torch.full((size, size), 1 / size**2)
    if kernel == 'gaussian':
        return gaussian_kernel(size, sigma)
    if kernel == 'svls':
        return svls_kernel(size, sigma)
    raise ValueError(f'kernel must be one of {KERNELS}, got {kernel!r}')


@torch.no_grad()
def neighbourhood_proportions(label: Tensor, valid: Tensor, num_classes: int,
                              weights: Tensor) -> Tensor:
    """Weighted share of each class among a pixel's valid neighbours.

    Allocates the ``(N, C, H, W)`` result and ``(N, H + k - 1, W + k - 1)``
    padded labels and masks; reads nothing back from the device (the weights
    are a CPU tensor, read as numbers).

    Args:
        label (Tensor): ``(N, H, W)`` classes (any value where not valid).
        valid (Tensor): ``(N, H, W)`` bool.
        num_classes (int): ``C``.
        weights (Tensor): ``(k, k)`` from :func:`kernel_weights`.

    Returns:
        Tensor: ``(N, C, H, W)`` float32, no gradient.
    """
    n, height, width = label.shape
    half = weights.shape[0] // 2
    # Beyond the border: weight 0, label 0 (any class would do).
    mass_map = F.pad(valid.float(), (half, half, half, half))
    labels = F.pad(label.where(valid, 0).long(), (half, half, half, half))
    counts = torch.zeros(n, num_classes, height, width, device=label.device)
    mass = torch.zeros(n, height, width, device=label.device)
    for dy, row_weights in enumerate(weights.tolist()):
        for dx, weight in enumerate(row_weights):
            present = mass_map[:, dy:dy + height, dx:dx + width] * weight
            window = labels[:, dy:dy + height, dx:dx + width]
            counts.scatter_add_(1, window.unsqueeze(1), present.unsqueeze(1))
            mass += present
    # A valid pixel is its own neighbour, so its mass is > 0; dividing an
    # ignored pixel's counts by infinity zeroes them in the same pass.
    mass.masked_fill_(~valid, float('inf'))
    return counts.div_(mass.unsqueeze(1))


class ScaledProportions(NamedTuple):
    """Targets ``r_ik = scale_i * tau_ik``: the label proportions of
    :func:`neighbourhood_proportions` times a per-pixel scale (CRaC's; NACL's
    with scale 1). Described rather than formed, so that the CPU kernels can
    form them block by block instead of writing an ``(N, C, H, W)`` tensor.

    Attributes:
        label (Tensor): ``(N, H, W)`` classes.
        valid (Tensor): ``(N, H, W)`` bool.
        weights (Tensor): ``(k, k)`` window weights.
        scale (Tensor, optional): ``(N, H, W)`` float; None means 1.
    """
    label: Tensor
    valid: Tensor
    weights: Tensor
    scale: Optional[Tensor] = None

    def dense(self, num_classes: int) -> Tensor:
        """The targets as an ``(N, C, H, W)`` float32 tensor."""
        tau = neighbourhood_proportions(self.label, self.valid, num_classes,
                                        self.weights)
        return tau if self.scale is None else tau.mul_(self.scale.unsqueeze(1))

    def kernel_labels(self) -> Tensor:
        """Labels as the kernels read them: int32 ``(N, H * W)``, -1 where
        not valid."""
        return self.label.where(self.valid, -1).to(torch.int32).flatten(1)


def _replicate_pad(x: Tensor, width: int, dim: int) -> Tensor:
    """``x`` with its first and last slices along ``dim`` repeated ``width``
    times on either side (any dtype, unlike ``F.pad``)."""
    dim = dim % x.dim()
    sizes = [width if d == dim else -1 for d in range(x.dim())]
    first = x.narrow(dim, 0, 1).expand(*sizes)
    last = x.narrow(dim, x.shape[dim] - 1, 1).expand(*sizes)
    return torch.cat([first, x, last], dim)


def boundary_mask(labels: Tensor, width: int) -> Tensor:
    """Pixels within ``width`` pixels (a ``(2 width + 1)^2`` window) of a pixel
    with another label, the ignore label included; the border is not a
    boundary. The ignore label counts because in VOC and Cityscapes ignored
    pixels trace object outlines (VOC's ring is about 5 px wide): were they
    nobody's neighbours, a 3 x 3 window would find no boundary pixel there.

    A pixel is interior when every row segment of its window is constant and of
    its label: one pass along rows, one along columns, ``4 width`` comparisons
    in all. Nothing is read back to the host.

    Args:
        labels (Tensor): ``(*, H, W)`` label maps.
        width (int): ``k >= 1``.

    Returns:
        Tensor: bool, the shape of ``labels``.
    """
    if not (isinstance(width, int) and width >= 1):
        raise ValueError(f'boundary_width must be an int >= 1, got {width!r}')
    if labels.dim() < 2:
        raise ValueError('boundary pixels need label maps (H, W), got labels of '
                         f'shape {tuple(labels.shape)}')
    # Compared in their own dtype: narrowing them first needs their range, read
    # back from the device, and on CPU (8 x 512^2 int64 labels) gains under 10 %.
    height, wide = labels.shape[-2:]
    window = 2 * width + 1
    rows = _replicate_pad(labels, width, -1)
    row_constant = torch.ones_like(labels, dtype=torch.bool)
    for dx in range(window):
        if dx != width:
            row_constant &= rows[..., dx:dx + wide] == labels
    columns = _replicate_pad(labels, width, -2)
    column_constant = _replicate_pad(row_constant, width, -2)
    interior = row_constant
    for dy in range(window):
        if dy != width:
            interior &= column_constant[..., dy:dy + height, :]
            interior &= columns[..., dy:dy + height, :] == labels
    return ~interior


def kernel_inputs(logits: Tensor, targets: ScaledProportions) -> dict:
    """The keyword arguments the neighbourhood kernels share
    (:func:`cals_seg.ops.nacl_penalty`, :func:`cals_seg.ops.svls_shift`):
    float32 ``(N, C, H*W)`` logits, int32 labels, the map size, the window."""
    n, c, height, width = logits.shape
    return dict(logits=logits.float().reshape(n, c, -1).contiguous(),
                label=targets.kernel_labels().contiguous(), height=height, width=width,
                weights=targets.weights.float().contiguous())
