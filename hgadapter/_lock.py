"""The project's one advisory lock: one writer per folder at a time, across processes.

:func:`folder_lock` takes an exclusive ``flock`` on a lock file inside a folder (``.hgadapter.lock``)
and holds it for the ``with`` block. A second process asking for the same folder gets
:class:`FolderBusy` at once (it never waits), naming the process that holds it, and decides for
itself what to do: ``hgadapter run`` stops with that message, a sweep leaves the run to the holder
and says so. The kernel drops the lock when its holder exits, however it exits (``kill -9``
included), so a stale lock cannot outlive a crash. Within one process the lock is re-entrant, so
a sweep can hold a run folder while the runner it calls takes it again.

``flock`` is advisory: it keeps hgadapter processes apart, not other programs. It works on local
file systems and, on Linux, on NFS (as a POSIX lock); where ``fcntl`` does not exist (Windows) the
lock is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from hgadapter._io import file_mode

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, one process per folder is up to the user
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "FolderBusy", "folder_lock", "lock_holder"]

LOCK_NAME = ".hgadapter.lock"  # inside the locked folder; left in place (removing it would race)

_HELD: dict[str, tuple[int, int]] = {}  # resolved folder -> (file descriptor, depth) held by this process


class FolderBusy(Exception):
    """Another process holds the folder's lock; ``holder`` is what it wrote there (its pid), if anything."""

    def __init__(self, folder: str, holder: str | None) -> None:
        super().__init__(folder, holder)
        self.folder = folder
        self.holder = holder

    def __str__(self) -> str:
        who = f"process {self.holder}" if self.holder else "another process"
        return f"{self.folder}: {who} is writing this folder"


def lock_holder(folder: str | os.PathLike) -> str | None:
    """What the lock file of ``folder`` says about its last holder (``pid N``), or ``None``."""
    try:
        text = (Path(folder) / LOCK_NAME).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text[:80] or None


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created with its parents) for the ``with`` block.

    Raises:
        FolderBusy: another process holds it (checked once, without waiting).
        OSError: the folder or its lock file cannot be created.
    """
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    if key in _HELD:  # re-entrant within this process
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield path
        finally:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth - 1)
        return
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        with contextlib.suppress(OSError):  # another user's lock file keeps its mode
            os.fchmod(fd, file_mode())
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FolderBusy(str(path), lock_holder(path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[key] = (fd, 1)
        try:
            yield path
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # closing the descriptor releases the lock
