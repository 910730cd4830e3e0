"""Triton kernels: the compiled kernels of ``cals_seg.ops._kernels`` for GPUs.

Each function here takes the arguments of the CPU kernel of the same name
(``cals_seg/ops/csrc``), checks them as it does (ValueErrors naming the
argument), and returns the same outputs by name (a dict with the same keys,
those not asked for absent), so that the wrappers of :mod:`cals_seg.ops` read
both into the same named tuples. Files, one per kernel family as in ``csrc``:
``phr.py`` (phr_penalty.cpp), ``neighbourhood.py`` (neighbourhood_penalties.cpp),
``calibration.py`` (calibration_statistics.cpp).

Triton is imported only when a kernel runs: importing this package costs nothing
and works without triton (the CPU build of torch does not install it).

Backends (the ``backend`` argument of the functional API, decided by
:func:`cals_seg.ops.use_kernel`):

- ``'triton'`` runs these kernels, and fails with a ValueError where they do not
  apply: triton is not installed, the tensors are not on a CUDA device (or on the
  CPU under Triton's interpreter, ``TRITON_INTERPRET=1``, which the tests use),
  or the computation has no Triton kernel (e.g. a penalty other than PHR).
- ``'kernel'`` runs the compiled kernel for the tensors' device: these on CUDA,
  the C++ kernels on the CPU.
- ``'auto'`` keeps the PyTorch path on CUDA while :data:`AUTO_ON_CUDA` is False.
  The kernels are checked for correctness under the interpreter only; their speed
  on a GPU is unmeasured. ``bench/bench_gpu.py`` measures both paths side by side;
  flip the constant when it shows the kernels faster.
"""
import importlib
import importlib.util
import os
from typing import Optional, Sequence

import torch
from torch import Tensor

# Whether backend='auto' takes these kernels for CUDA tensors. False until
# bench/bench_gpu.py, run on a GPU, shows them faster than the PyTorch path.
AUTO_ON_CUDA = False


def available() -> bool:
    """Whether triton is installed (without importing it)."""
    return importlib.util.find_spec('triton') is not None


def interpreted() -> bool:
    """Whether Triton's interpreter runs the kernels (``TRITON_INTERPRET=1``):
    numpy on CPU tensors, for tests."""
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def runs_on(tensor: Tensor) -> bool:
    """Whether these kernels can run on ``tensor``'s device: CUDA, or the CPU
    under the interpreter."""
    device = tensor.device.type
    return device == 'cuda' or (device == 'cpu' and interpreted())


def _check_tensor(kernel: str, name: str, tensor: Tensor, dtype: torch.dtype,
                  shape: Sequence[Optional[int]], device: torch.device,
                  optional: bool = False) -> bool:
    """Checks an argument before a kernel takes its pointer, as the C++ kernels
    do (ops/csrc/checks.h): a contiguous ``dtype`` tensor of ``shape`` (None:
    any size) on ``device``; ``optional``: an empty tensor stands for "not
    given". Returns whether it is given.

    Raises:
        ValueError: naming the kernel, the argument, what it must be and what it is.
    """
    if optional and tensor.numel() == 0:
        return False
    fits = tensor.dim() == len(shape) and all(
        want is None or size == want for size, want in zip(tensor.shape, shape))
    if not (fits and tensor.dtype == dtype and tensor.is_contiguous()
            and tensor.device == device):
        wanted = ', '.join('*' if size is None else str(size) for size in shape)
        wanted = f'({wanted},)' if len(shape) == 1 else f'({wanted})'
        raise ValueError(
            f'{kernel}: {name} must be a contiguous {dtype} tensor of shape {wanted} '
            f'on {device}, got a {"" if tensor.is_contiguous() else "non-"}contiguous '
            f'{tensor.dtype} tensor of shape {tuple(tensor.shape)} on {tensor.device}')
    return True


def _check_label_values(kernel: str, name: str, labels: Tensor, num_classes: int,
                        ignore: Optional[int] = None) -> None:
    """Every value of ``labels`` in ``[0, C)`` or ``ignore``. Reads the range
    back to the host: the C++ kernels check each label as they read it; a
    Triton kernel reading a label out of range would read out of bounds."""
    if not labels.numel():
        return
    low, high = int(labels.min()), int(labels.max())
    lowest = 0 if ignore is None else min(0, ignore)
    if low < lowest or high >= num_classes:
        allowed = '' if ignore is None else f' or the ignore value {ignore}'
        raise ValueError(f'{kernel}: {name} must be in [0, C = {num_classes})'
                         f'{allowed}, got values in [{low}, {high}]')


def _check_map(kernel: str, logits: Tensor, label: Tensor, height: int,
               width: int) -> None:
    """The arguments the neighbourhood kernels share: ``(N, C, P)`` float32
    logits of ``height x width`` maps and their ``(N, P)`` int32 labels, each
    in ``[0, C)`` or the ignore value -1."""
    _check_tensor(kernel, 'logits (N, C, P)', logits, torch.float32,
                  (None, None, None), logits.device)
    if height < 0 or width < 0 or height * width != logits.shape[2]:
        raise ValueError(f'{kernel}: the map is {height} x {width} pixels but the '
                         f'logits have P = {logits.shape[2]}')
    _check_tensor(kernel, 'label (N, P)', label, torch.int32,
                  (logits.shape[0], logits.shape[2]), logits.device)
    _check_label_values(kernel, 'labels', label, logits.shape[1], ignore=-1)


def _kernels(name: str):
    # Imported here, not at the top: this is where triton itself is imported.
    return importlib.import_module(f'{__name__}.{name}')


def phr_penalty(logits, valid, offset, slope, need_grad, need_statistics, lambd_min,
                lambd_max):
    """As ``cals_seg.ops._kernels.phr_penalty`` (ops/csrc/phr_penalty.cpp)."""
    name, device = 'phr_penalty', logits.device
    _check_tensor(name, 'logits (N, C, P)', logits, torch.float32, (None, None, None),
                  device)
    _check_tensor(name, 'valid (N, P)', valid, torch.bool,
                  (logits.shape[0], logits.shape[2]), device)
    for argument, tensor in (('offset (C)', offset), ('slope (C)', slope)):
        _check_tensor(name, argument, tensor, torch.float32, (logits.shape[1], ),
                      device)
    return _kernels('phr').phr_penalty(logits, valid, offset, slope, need_grad,
                                       need_statistics, lambd_min, lambd_max)


def grouped_phr_penalty(logits, label, height, width, group_base, logit_stride,
                        offset, slope, lambd, rho, weights, target_scale, need_grad,
                        need_statistics, lambd_min, lambd_max):
    """As ``cals_seg.ops._kernels.grouped_phr_penalty``
    (ops/csrc/neighbourhood_penalties.cpp)."""
    name, device = 'grouped_phr_penalty', logits.device
    _check_map(name, logits, label, height, width)
    _check_tensor(name, 'group_base (N, P)', group_base, torch.int32,
                  tuple(label.shape), device)
    if logit_stride < 0:
        raise ValueError(f'{name}: logit_stride must be >= 0, got {logit_stride}')
    for argument, tensor in (('offset (G)', offset), ('slope (G)', slope),
                             ('lambd (G)', lambd), ('rho (G)', rho)):
        _check_tensor(name, argument, tensor, torch.float32, (offset.numel(), ),
                      device)
    _check_tensor(name, 'target_scale (N, P)', target_scale, torch.float32,
                  tuple(label.shape), device, optional=True)
    num_groups, last_logit = offset.numel(), logit_stride * (logits.shape[1] - 1)
    if group_base.numel() and (int(group_base.min()) < 0 or
                               int(group_base.max()) + last_logit >= num_groups):
        raise ValueError(f'{name}: a group index is outside [0, G), G = {num_groups}')
    return _kernels('neighbourhood').grouped_phr_penalty(
        logits, label, height, width, group_base, logit_stride, offset, slope, lambd,
        rho, weights, target_scale, need_grad, need_statistics, lambd_min, lambd_max)


def nacl_penalty(logits, label, height, width, weights):
    """As ``cals_seg.ops._kernels.nacl_penalty``
    (ops/csrc/neighbourhood_penalties.cpp)."""
    _check_map('nacl_penalty', logits, label, height, width)
    return _kernels('neighbourhood').nacl_penalty(logits, label, height, width, weights)


def svls_shift(logits, label, height, width, weights, pixel_weight):
    """As ``cals_seg.ops._kernels.svls_shift``
    (ops/csrc/neighbourhood_penalties.cpp)."""
    _check_map('svls_shift', logits, label, height, width)
    _check_tensor('svls_shift', 'pixel_weight (N, P)', pixel_weight, torch.float32,
                  tuple(label.shape), logits.device, optional=True)
    return _kernels('neighbourhood').svls_shift(logits, label, height, width, weights,
                                                pixel_weight)


def calibration_statistics(logits, labels, keep, boundary, low_threshold, num_bins,
                           num_cells):
    """As ``cals_seg.ops._kernels.calibration_statistics``
    (ops/csrc/calibration_statistics.cpp)."""
    name, device = 'calibration_statistics', logits.device
    _check_tensor(name, 'logits (C, P)', logits, torch.float32, (None, None), device)
    if logits.shape[0] == 0:
        raise ValueError(f'{name}: logits have no classes')
    if num_bins < 1 or num_cells < 1:
        raise ValueError(f'{name}: num_bins and num_cells must be >= 1, got '
                         f'{num_bins} and {num_cells}')
    pixels = (logits.shape[1], )
    _check_tensor(name, 'labels (P)', labels, torch.int64, pixels, device)
    _check_tensor(name, 'keep (P)', keep, torch.bool, pixels, device)
    _check_tensor(name, 'boundary (P)', boundary, torch.bool, pixels, device,
                  optional=True)
    _check_label_values(name, 'labels of kept pixels', labels[keep], logits.shape[0])
    return _kernels('calibration').calibration_statistics(
        logits, labels, keep, boundary, low_threshold, num_bins, num_cells)
