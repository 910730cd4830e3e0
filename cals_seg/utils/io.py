"""Atomic file writes: a reader, or an interrupted run, never sees half a file."""
import os


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` so that ``path`` is either absent, old, or complete: a
    reader, or an interrupted run, never sees half a file."""
    temporary = f'{path}.tmp{os.getpid()}'
    with open(temporary, 'wb') as f:
        f.write(data)
    os.replace(temporary, path)
