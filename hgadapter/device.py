"""Where a fit runs: the device a name stands for, and the intra-op thread count while it runs.

Every method's fit goes through :meth:`hgadapter.methods.Method.fit`, which applies both (the
method says how many threads it wants on CPU: ``Method.threads``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["resolve_device", "intra_op_threads"]


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``None``/``auto`` -> the first CUDA device if present, else CPU; ``cpu``, ``cuda``, ``cuda:N`` as given.

    Raises:
        ValueError: a CUDA device is requested where CUDA is not available.
    """
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(name)!r} requested but CUDA is not available here; use device=cpu or auto")
    return device


@contextlib.contextmanager
def intra_op_threads(count: int | None) -> Iterator[int]:
    """Run the block on ``count`` intra-op threads (``None``: as many as now); yields the count in force."""
    previous = torch.get_num_threads()
    if count is None or count == previous:
        yield previous
        return
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)
