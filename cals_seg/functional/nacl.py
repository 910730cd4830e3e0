"""NACL's penalty (Murugesan et al., "Trust your neighbours: penalty-based
constraints for model calibration", MICCAI 2023): the L1 distance between the
logits and the label proportions of each pixel's neighbourhood, through the fused
CPU kernel (ops/csrc/neighbourhood_penalties.cpp) or PyTorch operations.

Shapes: logits ``(N, C, H, W)``; labels and masks ``(N, H, W)``.
"""
from typing import Tuple

import torch
from torch import Tensor

from .. import ops
from ..ops import use_kernel
from .neighbourhood import ScaledProportions, kernel_inputs


@torch.no_grad()
def neighbourhood_deviation(logits: Tensor, targets: ScaledProportions,
                            backend: str = 'auto') -> Tuple[Tensor, Tensor]:
    """NACL's penalty sum: ``sum_{i valid, k} |z_ik - r_ik|`` and its gradient
    ``sign(z - r)`` (0 at ignored pixels).

    Args:
        logits (Tensor): ``(N, C, H, W)``, any float dtype.
        targets (ScaledProportions): ``r``.
        backend (str): 'kernel' (CPU, fused: the proportions formed block by
            block), 'torch', or 'auto'. They differ only in float rounding and
            in the sign of a NaN.

    Returns:
        tuple[Tensor, Tensor]: the float64 sum and the ``(N, C, H, W)`` float32
        direction.
    """
    if use_kernel(backend, logits.device.type == 'cpu', 'CPU tensors'):
        term = ops.nacl_penalty(**kernel_inputs(logits, targets))
        return term.value, term.direction.view(logits.shape)
    target = targets.dense(logits.shape[1])
    # z - r, zero at ignored pixels (their r is 0: subtract z there).
    difference = torch.sub(logits.float(), target, out=target)
    difference.mul_(targets.valid.unsqueeze(1))
    total = torch.linalg.vector_norm(difference, ord=1).double()
    return total, difference.sign_()
