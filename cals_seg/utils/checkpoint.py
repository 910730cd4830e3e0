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

:func:`load_mmengine_checkpoint` is the load itself, with that list in force whatever
ran before it in the process (torch's ``safe_globals`` blocks, which onedl-mmengine
0.10.12 wraps around every load, take entries off the list on exit).
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


def load_mmengine_checkpoint(path, map_location='cpu') -> dict:
    """``torch.load(path, weights_only=True)`` of a checkpoint MMEngine's Runner wrote.

    The allow-list is applied again on every call (adding is idempotent): a
    ``torch.serialization.safe_globals`` block removes on exit every global it was
    given, also those allowed before it (torch 2.13), and onedl-mmengine 0.10.12 loads
    each checkpoint inside one naming ``HistoryBuffer`` and numpy's reconstruction.
    After MMEngine has loaded a checkpoint in a process, a plain
    ``torch.load(weights_only=True)`` of the next one is refused.

    Args:
        path (str | file-like): the checkpoint.
        map_location: as for ``torch.load``; the CPU by default.

    Returns:
        dict: the checkpoint (``state_dict``, ``message_hub``, ``meta``, ...).
    """
    allow_mmengine_checkpoints()
    return torch.load(path, map_location=map_location, weights_only=True)
