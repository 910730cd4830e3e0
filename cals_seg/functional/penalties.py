"""Penalty-Lagrangian functions of the Augmented Lagrangian method used by CALS.

Each function maps a normalised constraint value ``h`` (``h <= 0`` means satisfied),
a multiplier ``lambd > 0`` and a penalty parameter ``rho > 0`` to the pair
``(P, dP)`` where ``P = P(h; lambd, rho)`` and ``dP = dP/dh``. Both are returned at
once because CALS needs both every time: ``P`` is the loss term, ``dP`` is the
factor of its gradient and the statistic the multiplier update averages.

``lambd`` and ``rho`` broadcast against ``h`` (per-class values are shaped so that
they line up with the class axis of ``h``). Formulas: docs/methods.md and
Liu et al., "Class Adaptive Network Calibration", CVPR 2023.
"""
from typing import Callable, Dict, Tuple

import torch
from torch import Tensor

PenaltyFunction = Callable[[Tensor, Tensor, Tensor], Tuple[Tensor, Tensor]]


def phr(h: Tensor, lambd: Tensor, rho: Tensor) -> Tuple[Tensor, Tensor]:
    """Powell-Hestenes-Rockafellar penalty.

    With ``x = lambd + rho * h``: ``P = (x^2 - lambd^2) / (2 rho)`` and ``dP = x``
    where ``x >= 0``; ``P = -lambd^2 / (2 rho)`` and ``dP = 0`` elsewhere.

    Args:
        h (Tensor): constraint values, any shape.
        lambd (Tensor): multipliers, broadcastable to ``h``.
        rho (Tensor): penalty parameters, broadcastable to ``h``.

    Returns:
        tuple[Tensor, Tensor]: ``P`` and ``dP/dh``, each shaped like ``h``.
    """
    x = (lambd + rho * h).clamp_min(0)
    value = (x * x - lambd * lambd) / (2 * rho)
    return value, x


def _negative_side(h: Tensor, lambd: Tensor, rho: Tensor) -> Tuple[Tensor, Tensor]:
    """P2 and P3 for ``h < 0``: ``lambd h / (1 - rho h)`` and its derivative.

    ``h`` is clamped to ``<= 0`` so that the branch that ``torch.where`` discards
    stays finite (``1 - rho h`` would cross zero for ``h = 1 / rho``).
    """
    h_neg = h.clamp_max(0)
    inverse = 1 / (1 - rho * h_neg)
    value = lambd * h_neg * inverse
    return value, lambd * inverse * inverse


def p2(h: Tensor, lambd: Tensor, rho: Tensor) -> Tuple[Tensor, Tensor]:
    """P2 penalty: cubic for ``h >= 0``, rational for ``h < 0``.

    ``h >= 0``: ``P = lambd h + lambd rho h^2 + rho^2 h^3 / 6``,
    ``dP = lambd + 2 lambd rho h + rho^2 h^2 / 2``.
    ``h < 0``: ``P = lambd h / (1 - rho h)``, ``dP = lambd / (1 - rho h)^2``.

    Args and Returns: as :func:`phr`.
    """
    neg_value, neg_grad = _negative_side(h, lambd, rho)
    rho_h = rho * h
    pos_value = h * (lambd + lambd * rho_h + rho_h * rho_h / 6)
    pos_grad = lambd + 2 * lambd * rho_h + rho_h * rho_h / 2
    positive = h >= 0
    return (torch.where(positive, pos_value, neg_value),
            torch.where(positive, pos_grad, neg_grad))


def p3(h: Tensor, lambd: Tensor, rho: Tensor) -> Tuple[Tensor, Tensor]:
    """P3 penalty: quadratic for ``h >= 0``, the P2 rational branch for ``h < 0``.

    ``h >= 0``: ``P = lambd h + lambd rho h^2``, ``dP = lambd + 2 lambd rho h``.

    Args and Returns: as :func:`phr`.
    """
    neg_value, neg_grad = _negative_side(h, lambd, rho)
    lambd_rho_h = lambd * rho * h
    positive = h >= 0
    return (torch.where(positive, h * (lambd + lambd_rho_h), neg_value),
            torch.where(positive, lambd + 2 * lambd_rho_h, neg_grad))


PENALTIES: Dict[str, PenaltyFunction] = {'phr': phr, 'p2': p2, 'p3': p3}


def get_penalty(name: str) -> PenaltyFunction:
    """Return the penalty function called ``name`` ('phr', 'p2' or 'p3')."""
    if name not in PENALTIES:
        raise ValueError(f'unknown penalty {name!r}; expected one of '
                         f'{sorted(PENALTIES)}')
    return PENALTIES[name]
