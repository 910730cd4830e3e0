"""Label proportions in each pixel's neighbourhood, the targets of NACL and SVLS.

``tau_k(i) = sum_j w(i - j) [y_j = k] / sum_j w(i - j)`` over the valid pixels
``j`` of the ``k x k`` window around ``i``: ignored pixels and pixels beyond the
border are not neighbours, so a valid pixel's proportions sum to 1 over the
classes (an ignored pixel's are all 0). For each of the ``k^2`` offsets the
window's labels are scattered into the class axis: ``k^2`` passes over the
``N x H x W`` labels and one write of the ``N x C x H x W`` result, never the
one-hot labels convolved, nor ``C k^2`` unfolded copies as in the authors' code.
"""
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
    for dy, row in enumerate(weights.tolist()):
        for dx, weight in enumerate(row):
            window = (slice(None), slice(dy, dy + height), slice(dx, dx + width))
            present = mass_map[window] * weight
            counts.scatter_add_(1, labels[window].unsqueeze(1), present.unsqueeze(1))
            mass += present
    # A valid pixel is its own neighbour, so its mass is > 0; dividing an
    # ignored pixel's counts by infinity zeroes them in the same pass.
    mass.masked_fill_(~valid, float('inf'))
    return counts.div_(mass.unsqueeze(1))
