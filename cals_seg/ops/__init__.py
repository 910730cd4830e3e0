"""The compiled CPU kernels (``cals_seg/ops/csrc``), or None where they are not built.

``pip install --no-build-isolation -e .`` (``make setup``) builds them. Without
them every computation still runs, through PyTorch operations, only slower.
"""
try:
    from . import _kernels as kernels
except ImportError:
    kernels = None

BACKENDS = ('auto', 'kernel', 'torch', 'triton')


def use_kernel(backend: str, applicable: bool, requirement: str) -> bool:
    """Whether a computation with a kernel and a PyTorch path takes the kernel.

    Args:
        backend (str): 'kernel', 'torch', or 'auto' (the kernel where it applies);
            'triton' never takes it (:func:`cals_seg.ops.triton.use_triton`).
        applicable (bool): the inputs suit the kernel.
        requirement (str): what the kernel needs, for the error message.

    Raises:
        ValueError: an unknown backend, or 'kernel' where it does not apply.
    """
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    fits = applicable and kernels is not None
    if backend == 'kernel' and not fits:
        raise ValueError(f'the kernel backend needs {requirement} and the compiled '
                         'cals_seg.ops._kernels (pip install -e .)')
    return fits and backend in ('auto', 'kernel')
