"""Loading MMEngine checkpoints under torch's ``weights_only=True`` default.

torch >= 2.6 unpickles checkpoints with ``weights_only=True``: only tensors,
containers and allow-listed globals. MMEngine 0.10.7 calls ``torch.load`` without
the argument, and its checkpoints also hold the message hub's ``HistoryBuffer``
objects: numpy arrays, and ``getattr(HistoryBuffer, 'min')`` for the statistics
methods each buffer keeps. So resuming fails. Instead of turning the check off for
every file, :func:`allow_mmengine_checkpoints` allows exactly those: the
``HistoryBuffer`` class, numpy's array reconstruction, and in place of
``getattr`` a function that only returns ``HistoryBuffer``'s registered
statistics methods. Anything else in a pickle is still refused.
"""
import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

BUILTIN_STATISTICS = frozenset({'min', 'max', 'current', 'mean'})


def _numpy_globals() -> list:
    """The numpy callables and types that pickled arrays and scalars name."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = {type(np.dtype(t)) for t in np.sctypeDict.values()}
    return [_reconstruct, scalar, np.ndarray, np.dtype] + sorted(dtype_classes,
                                                                 key=str)


def history_buffer_method(owner, name: str):
    """``getattr`` as checkpoints may use it: HistoryBuffer's statistics only.

    Raises:
        pickle.UnpicklingError: for any other object or attribute.
    """
    # The four built-in statistics are registered by the first HistoryBuffer's
    # __init__, which need not have run in this process yet.
    allowed = BUILTIN_STATISTICS.union(HistoryBuffer._statistics_methods)
    if owner is HistoryBuffer and name in allowed:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'refusing getattr({owner!r}, {name!r}) in a checkpoint: cals-seg only '
        'allows the statistics methods of mmengine HistoryBuffer')


def allow_mmengine_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read what MMEngine's Runner saves."""
    torch.serialization.add_safe_globals(
        [HistoryBuffer, (history_buffer_method, 'builtins.getattr')] +
        _numpy_globals())
