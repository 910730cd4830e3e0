"""The compiled CPU kernels (``cals_seg/ops/csrc``) and thin wrappers that
return their outputs as named tuples.

``pip install --no-build-isolation -e .`` (``make setup``) builds them. Without
them every computation still runs, through PyTorch operations, only slower; a
:class:`KernelsUnavailableWarning` says so once, at import.

Each kernel returns its outputs by name (a dict); the wrappers here build named
tuples from those names and fail on a missing or unexpected one, so that no
number is matched to its meaning by position. This package imports only torch.
"""
import importlib
import warnings
from typing import Mapping, NamedTuple, Optional, Sequence, Tuple, Type, TypeVar

from torch import Tensor

BACKENDS = ('auto', 'kernel', 'torch')
_MODULE = __name__ + '._kernels'
_BUILD = 'pip install --no-build-isolation -e . (or make setup)'


class KernelsUnavailableWarning(RuntimeWarning):
    """The compiled kernels are missing or fail to load: the PyTorch paths run,
    3-10x slower on CPU."""


def _load_kernels():
    """The compiled module, or None after a :class:`KernelsUnavailableWarning`
    that gives the reason and the fix."""
    try:
        return importlib.import_module(_MODULE)
    except ImportError as error:
        if isinstance(error, ModuleNotFoundError) and error.name == _MODULE:
            reason = f'{_MODULE} is not built'
        else:  # built, but for another torch or Python, or a library is missing
            reason = (f'{_MODULE} exists but fails to load ({error}); it was likely '
                      'built against another torch')
        warnings.warn(
            f'{reason}. CPU computations fall back to PyTorch operations, 3-10x '
            f'slower. Build the kernels with: {_BUILD}', KernelsUnavailableWarning,
            stacklevel=2)
        return None


kernels = _load_kernels()


def use_kernel(backend: str, applicable: bool, requirement: str) -> bool:
    """Whether a computation with a kernel and a PyTorch path takes the kernel.

    Args:
        backend (str): 'kernel', 'torch', or 'auto' (the kernel where it applies).
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
                         f'{_MODULE} ({_BUILD})')
    return fits and backend != 'torch'


Named = TypeVar('Named', bound=tuple)


def named_outputs(kind: Type[Named], outputs: Mapping[str, Tensor], kernel: str,
                  absent: Sequence[str] = ()) -> Named:
    """``kind`` (a NamedTuple) from a kernel's outputs, field by name.

    Args:
        kind (type): the named tuple; its fields are the names expected.
        outputs (Mapping[str, Tensor]): what the kernel returned.
        kernel (str): the kernel's name, for the error message.
        absent (Sequence[str]): fields the kernel was not asked for; they are
            None and must not be returned.

    Raises:
        RuntimeError: a name missing or unexpected (a kernel built from other
            sources than this wrapper).
    """
    expected = set(kind._fields) - set(absent)
    missing, unexpected = expected - set(outputs), set(outputs) - expected
    if missing or unexpected:
        raise RuntimeError(
            f'{kernel} returned {sorted(outputs)}; {kind.__name__} expects '
            f'{sorted(expected)} (missing {sorted(missing)}, unexpected '
            f'{sorted(unexpected)}). Rebuild the kernels: {_BUILD}')
    return kind(**outputs, **dict.fromkeys(absent))


class PHRPenaltySums(NamedTuple):
    """Outputs of :func:`phr_penalty` (float64 sums over valid pixels).

    Attributes:
        squares (Tensor): ``[C]`` sum of ``P'^2``.
        direction (Tensor | None): ``(N, C, P)`` float32, ``P' - [k wins] *
            sum_j P'_j / #winners``; None without ``need_grad``.
        clipped (Tensor | None): ``[C]`` sum of ``clip(P', lambd_min,
            lambd_max)`` over pixels whose logits are all finite.
        distance (Tensor | None): ``[C]`` sum of ``max_j z_j - z_k`` over them.
        num_finite (Tensor | None): scalar, those pixels.
        num_nonfinite (Tensor | None): scalar, the valid pixels with a
            non-finite logit. The last four are None without
            ``need_statistics``.
    """
    squares: Tensor
    direction: Optional[Tensor]
    clipped: Optional[Tensor]
    distance: Optional[Tensor]
    num_finite: Optional[Tensor]
    num_nonfinite: Optional[Tensor]


_PHR_STATISTICS = ('clipped', 'distance', 'num_finite', 'num_nonfinite')


def _absent(need_grad: bool, need_statistics: bool,
            statistics: Sequence[str]) -> Tuple[str, ...]:
    return (() if need_grad else ('direction', )) + (() if need_statistics else
                                                      tuple(statistics))


def phr_penalty(logits: Tensor, valid: Tensor, offset: Tensor, slope: Tensor,
                need_grad: bool, need_statistics: bool, lambd_min: float,
                lambd_max: float) -> PHRPenaltySums:
    """The CALS PHR penalty in one pass (csrc/phr_penalty.cpp):
    ``P' = max(0, offset_k + slope_k (max_j z_j - z_k))`` at valid pixels.

    Args:
        logits (Tensor): ``(N, C, P)`` float32, contiguous.
        valid (Tensor): ``(N, P)`` bool.
        offset (Tensor), slope (Tensor): ``[C]`` float32.
        need_grad (bool), need_statistics (bool): which outputs to compute.
        lambd_min (float), lambd_max (float): the clipping range of ``P'`` in
            the statistics.

    Returns:
        PHRPenaltySums
    """
    outputs = kernels.phr_penalty(logits, valid, offset, slope, need_grad,
                                  need_statistics, lambd_min, lambd_max)
    return named_outputs(PHRPenaltySums, outputs, 'phr_penalty',
                         _absent(need_grad, need_statistics, _PHR_STATISTICS))


class GroupedPenaltySums(NamedTuple):
    """Outputs of :func:`grouped_phr_penalty` (float64 sums over valid pixels).

    Attributes:
        value (Tensor): scalar, sum of ``P``.
        direction (Tensor | None): ``(N, C, P)`` float32 (``P' - [k wins] *
            share`` for distances, ``P' sign(z - r)`` for targets); None
            without ``need_grad``.
        clipped (Tensor | None): ``[G]`` sum of ``clip(P')`` over pixels whose
            logits are all finite.
        distance (Tensor | None): ``[G]`` sum of the distances ``d`` over them.
        count (Tensor | None): ``[G]`` (pixel, logit) pairs in those sums.
        num_nonfinite (Tensor | None): scalar, valid pixels with a non-finite
            logit. The last four are None without ``need_statistics``.
    """
    value: Tensor
    direction: Optional[Tensor]
    clipped: Optional[Tensor]
    distance: Optional[Tensor]
    count: Optional[Tensor]
    num_nonfinite: Optional[Tensor]


_GROUPED_STATISTICS = ('clipped', 'distance', 'count', 'num_nonfinite')


def grouped_phr_penalty(logits: Tensor, label: Tensor, height: int, width: int,
                        group_base: Tensor, logit_stride: int, offset: Tensor,
                        slope: Tensor, lambd: Tensor, rho: Tensor, weights: Tensor,
                        target_scale: Tensor, need_grad: bool, need_statistics: bool,
                        lambd_min: float, lambd_max: float) -> GroupedPenaltySums:
    """The PHR penalty with a multiplier per group of (pixel, logit)
    constraints, in one pass (csrc/neighbourhood_penalties.cpp).

    Args:
        logits (Tensor): ``(N, C, P)`` float32, contiguous, of ``height x
            width`` maps.
        label (Tensor): ``(N, P)`` int32 in ``[0, C)``, -1 where ignored.
        group_base (Tensor): ``(N, P)`` int32; the group of ``(i, k)`` is
            ``base_i + logit_stride * k``, which must be in ``[0, G)``.
        offset, slope, lambd, rho (Tensor): ``[G]`` float32.
        weights (Tensor): ``(k, k)`` float32, the window of the targets'
            label proportions, or empty for distance constraints.
        target_scale (Tensor): ``(N, P)`` float32 scale of the targets, or empty.
        need_grad, need_statistics, lambd_min, lambd_max: as :func:`phr_penalty`.

    Returns:
        GroupedPenaltySums
    """
    outputs = kernels.grouped_phr_penalty(logits, label, height, width, group_base,
                                          logit_stride, offset, slope, lambd, rho,
                                          weights, target_scale, need_grad,
                                          need_statistics, lambd_min, lambd_max)
    return named_outputs(GroupedPenaltySums, outputs, 'grouped_phr_penalty',
                         _absent(need_grad, need_statistics, _GROUPED_STATISTICS))


class ProportionTerm(NamedTuple):
    """Outputs of :func:`nacl_penalty` and :func:`svls_shift`.

    Attributes:
        value (Tensor): float64 scalar, the term summed over valid pixels.
        direction (Tensor): ``(N, C, P)`` float32, its gradient direction.
    """
    value: Tensor
    direction: Tensor


def nacl_penalty(logits: Tensor, label: Tensor, height: int, width: int,
                 weights: Tensor) -> ProportionTerm:
    """NACL's ``sum |z - tau|`` and ``sign(z - tau)``, ``tau`` the label
    proportions of a ``(k, k)`` window (csrc/neighbourhood_penalties.cpp).

    Args: as :func:`grouped_phr_penalty`; ``weights`` must be given.

    Returns:
        ProportionTerm
    """
    return named_outputs(ProportionTerm,
                         kernels.nacl_penalty(logits, label, height, width, weights),
                         'nacl_penalty')


def svls_shift(logits: Tensor, label: Tensor, height: int, width: int,
               weights: Tensor, pixel_weight: Tensor) -> ProportionTerm:
    """SVLS's correction to hard-label cross-entropy, ``sum w (onehot - tau)
    . z``, and its gradient ``w (onehot - tau)`` (csrc/neighbourhood_penalties.cpp).

    Args: as :func:`nacl_penalty`, and ``pixel_weight`` ``(N, P)`` float32 or
        empty (1).

    Returns:
        ProportionTerm
    """
    return named_outputs(
        ProportionTerm,
        kernels.svls_shift(logits, label, height, width, weights, pixel_weight),
        'svls_shift')


def calibration_statistics(kind: Type[Named], logits: Tensor, labels: Tensor,
                           keep: Tensor, boundary: Tensor, low_threshold: float,
                           num_bins: int, num_cells: int) -> Tuple[Named, Tensor]:
    """Per-bin calibration sums of one image in one pass
    (csrc/calibration_statistics.cpp).

    Args:
        kind (type): the named tuple of the sums,
            :class:`cals_seg.functional.calibration.CalibrationStatistics`,
            whose field names the kernel returns.
        logits (Tensor): ``(C, P)`` float32, contiguous.
        labels (Tensor): ``(P)`` int64 in ``[0, C)`` where ``keep``.
        keep (Tensor): ``(P)`` bool.
        boundary (Tensor): ``(P)`` bool, or empty for no boundary sums.
        low_threshold (float), num_bins (int), num_cells (int): as
            :func:`cals_seg.functional.calibration.calibration_statistics`.

    Returns:
        tuple: the sums as ``kind``, and the kept pixels whose softmax is not
        finite (float64 scalar, left out of the sums).
    """
    outputs = dict(
        kernels.calibration_statistics(logits, labels, keep, boundary, low_threshold,
                                       num_bins, num_cells))
    num_nonfinite = outputs.pop('num_nonfinite', None)
    sums = named_outputs(kind, outputs, 'calibration_statistics')
    if num_nonfinite is None:
        raise RuntimeError('calibration_statistics did not return num_nonfinite. '
                           f'Rebuild the kernels: {_BUILD}')
    return sums, num_nonfinite
