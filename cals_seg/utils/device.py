"""The ``--device`` option of the tools: a torch device this machine has."""
import argparse
from typing import Optional

import torch


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def resolve_device(spec: Optional[str]) -> torch.device:
    """``spec`` (``'cpu'``, ``'cuda'``, ``'cuda:1'``, ...) as a torch device,
    checked to exist here; None gives :func:`default_device`.

    Raises:
        ValueError: not a device name, or a device this machine does not have.
    """
    if spec is None:
        return default_device()
    try:
        device = torch.device(spec)
    except RuntimeError as error:
        raise ValueError(f'--device {spec!r} is not a device name (cpu, cuda, '
                         f'cuda:N, ...): {error}') from None
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:  # AssertionError: no CUDA build
        raise ValueError(f'--device {spec!r} is not available on this machine '
                         f'({error})') from None
    return device


def add_device_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--device``, checked when the arguments are parsed (a bad one is
    argparse's usage error, exit code 2)."""

    def device(spec: str) -> torch.device:
        try:
            return resolve_device(spec)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parser.add_argument('--device', type=device, default=default_device(),
                        help=f'device that {what} (default: cuda when available, '
                        'else cpu)')
