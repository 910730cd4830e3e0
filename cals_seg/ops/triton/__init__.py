"""Triton kernels: the compiled kernels of ``cals_seg.ops._kernels`` for GPUs.

Each function here takes the arguments of the CPU kernel of the same name
(``cals_seg/ops/csrc``) and returns what it returns, so that the callers in
``cals_seg.functional`` assemble both the same way. Files, one per kernel family
as in ``csrc``: ``phr.py`` (phr_penalty.cpp), ``neighbourhood.py``
(neighbourhood_penalties.cpp), ``calibration.py`` (calibration_statistics.cpp).

Triton is imported only when a kernel runs: importing this package costs nothing
and works without triton (the CPU build of torch does not install it).

Backends (the ``backend`` argument of the functional API):

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

from torch import Tensor

from .. import BACKENDS

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


def _runs_on(tensor: Tensor) -> bool:
    device = tensor.device.type
    return device == 'cuda' or (device == 'cpu' and interpreted())


def use_triton(backend: str, tensor: Tensor, applicable: bool,
               requirement: str) -> bool:
    """Whether a computation takes the Triton kernel (see the module docstring).

    Args:
        backend (str): 'auto', 'kernel', 'torch' or 'triton'.
        tensor (Tensor): the input whose device decides.
        applicable (bool): the computation has a Triton kernel for these inputs.
        requirement (str): what the kernel needs besides triton and the device,
            for the error message ('' for nothing).

    Raises:
        ValueError: an unknown backend, or 'triton' where it does not apply.
    """
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    if backend == 'triton':
        if not (applicable and available() and _runs_on(tensor)):
            needs = f'{requirement}, ' if requirement else ''
            raise ValueError(
                f'the triton backend needs {needs}triton installed and CUDA tensors '
                '(CPU tensors only under TRITON_INTERPRET=1); got '
                f'{tensor.device.type} tensors, triton '
                f'{"installed" if available() else "not installed"}')
        return True
    if tensor.device.type != 'cuda' or not (applicable and available()):
        return False
    return backend == 'kernel' or (backend == 'auto' and AUTO_ON_CUDA)


def _kernels(name: str):
    # Imported here, not at the top: this is where triton itself is imported.
    return importlib.import_module(f'{__name__}.{name}')


def phr_penalty(logits, valid, offset, slope, need_grad, need_statistics, lambd_min,
                lambd_max):
    """As ``cals_seg.ops._kernels.phr_penalty`` (ops/csrc/phr_penalty.cpp)."""
    return _kernels('phr').phr_penalty(logits, valid, offset, slope, need_grad,
                                       need_statistics, lambd_min, lambd_max)


def grouped_phr_penalty(logits, label, height, width, group_base, logit_stride,
                        offset, slope, lambd, rho, weights, target_scale, need_grad,
                        need_statistics, lambd_min, lambd_max):
    """As ``cals_seg.ops._kernels.grouped_phr_penalty``
    (ops/csrc/neighbourhood_penalties.cpp)."""
    return _kernels('neighbourhood').grouped_phr_penalty(
        logits, label, height, width, group_base, logit_stride, offset, slope, lambd,
        rho, weights, target_scale, need_grad, need_statistics, lambd_min, lambd_max)


def nacl_penalty(logits, label, height, width, weights):
    """As ``cals_seg.ops._kernels.nacl_penalty`` (ops/csrc/neighbourhood_penalties.cpp)."""
    return _kernels('neighbourhood').nacl_penalty(logits, label, height, width, weights)


def svls_shift(logits, label, height, width, weights, pixel_weight):
    """As ``cals_seg.ops._kernels.svls_shift`` (ops/csrc/neighbourhood_penalties.cpp)."""
    return _kernels('neighbourhood').svls_shift(logits, label, height, width, weights,
                                                pixel_weight)


def calibration_statistics(logits, labels, keep, boundary, low_threshold, num_bins,
                           num_cells):
    """As ``cals_seg.ops._kernels.calibration_statistics``
    (ops/csrc/calibration_statistics.cpp)."""
    return _kernels('calibration').calibration_statistics(
        logits, labels, keep, boundary, low_threshold, num_bins, num_cells)
