"""The compiled CPU kernels (``cals_seg/csrc``), or None where they are not built.

``pip install --no-build-isolation -e .`` (``make setup``) builds them. Without
them every computation still runs, through PyTorch operations, only slower.
"""
try:
    from . import _kernels as kernels
except ImportError:
    kernels = None
