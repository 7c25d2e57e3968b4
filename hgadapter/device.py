"""Where a fit runs: the device a name stands for, and the intra-op thread count while it runs.

Every method's fit goes through :meth:`hgadapter.methods.Method.fit`, which applies both (the
method says how many threads it wants on CPU: ``Method.threads``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from hgadapter.errors import UserError

__all__ = ["DeviceError", "resolve_device", "intra_op_threads"]


class DeviceError(UserError):
    """A device name that is not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, or one this machine lacks."""


_DEVICE = re.compile(r"(auto|cpu|cuda)(?::(\d{1,4}))?")
VALID = "auto, cpu, cuda or cuda:N (N a GPU index)"


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``None``/``auto`` -> the first CUDA device if present, else CPU; ``cpu``, ``cuda``, ``cuda:N`` as given.

    The one parser of device names (``--device``, ``device:`` in configs): anything else is a
    :class:`DeviceError` naming the valid forms, never a torch ``RuntimeError``.

    Raises:
        DeviceError: a malformed name, or a CUDA device this machine does not have.
    """
    if isinstance(name, torch.device):
        text = str(name)
    elif name is None:
        text = "auto"
    elif isinstance(name, str):
        text = name.strip()
    else:
        raise DeviceError(f"device must be a string, got {type(name).__name__}; valid: {VALID}")
    match = _DEVICE.fullmatch(text)
    if match is None or (match.group(1) in ("auto", "cpu") and match.group(2) is not None):
        raise DeviceError(f"unknown device {text[:40]!r}; valid: {VALID}")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {text!r} requested but CUDA is not available here; use device cpu or auto")
    if index is not None and int(index) >= torch.cuda.device_count():
        raise DeviceError(f"device {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0 ... cuda:{torch.cuda.device_count() - 1})")
    return torch.device(text)


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
