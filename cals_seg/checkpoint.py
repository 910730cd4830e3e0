"""Loading MMEngine checkpoints under torch's ``weights_only=True`` default.

torch >= 2.6 unpickles checkpoints with ``weights_only=True``: only tensors,
containers and allow-listed classes. MMEngine 0.10.7 calls ``torch.load`` without
the argument, and its checkpoints also hold the message hub's ``HistoryBuffer``
objects and the numpy arrays inside them, so resuming fails. Instead of turning
the check off for every file, :func:`allow_mmengine_checkpoints` adds exactly
those classes to torch's allow-list; anything else in a pickle is still refused.
"""
import numpy as np
import torch
from mmengine.logging import HistoryBuffer


def _numpy_globals() -> list:
    """The numpy callables and types that pickled arrays and scalars name."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = [type(np.dtype(t)) for t in np.sctypeDict.values()
                     if isinstance(t, type)]
    return [_reconstruct, scalar, np.ndarray, np.dtype] + sorted(
        set(dtype_classes), key=str)


def allow_mmengine_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read what MMEngine's Runner saves."""
    torch.serialization.add_safe_globals([HistoryBuffer] + _numpy_globals())
