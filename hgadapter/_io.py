"""The project's one atomic file writer, its one staging writer for whole folders, and the small
file helpers around them.

:func:`atomic_write` is the only way hgadapter writes a result file (run directories, feature
caches, extraction shards, reports, figures): a reader never sees a half-written file, and after
it returns a crash loses nothing (the data and the rename are fsynced). :func:`write_folder` does
the same for a folder that is written as one piece (a classifier folder): it is built beside its
target and renamed into place, so a kill leaves the old folder or the new one, never a mix.
:func:`read_regular_file` is the reading side of user input: only a regular file, of bounded
size (a FIFO would block forever, ``/dev/zero`` would never end). Files get the permissions
``open()`` would give under the process's umask, not the 0600 of ``tempfile.mkstemp`` or of
safetensors' own writer, so caches and runs shared between users stay readable.

Imports no torch (only :func:`atomic_save_tensors` needs it, lazily) and no yaml (only
:func:`read_yaml`, lazily), so torch-free modules such as :mod:`viz` and
:mod:`hgadapter.report` can use it.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from hgadapter.errors import UserError

if TYPE_CHECKING:
    import torch


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def file_mode() -> int:
    """The permissions every file hgadapter writes gets: ``0o666 & ~umask``, as ``open()`` gives."""
    return 0o666 & ~_UMASK


TEMP_GLOB = ".*.tmp"  # the temp files atomic_write leaves when killed between create and rename


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temp files a killed :func:`atomic_write` left in ``directory`` (not below it).

    Only for a folder that one process writes at a time (a run directory, an extraction's output):
    a live writer's temp file would be removed too. Returns what was removed.
    """
    removed = []
    folder = Path(directory)
    if folder.is_dir():
        for tmp in folder.glob(TEMP_GLOB):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


class OutputError(UserError):
    """An output folder (``--out``) that cannot be created or written."""


def check_output_dir(path: str | Path, *, parents: bool = True, what: str = "--out") -> Path:
    """Check, before any work, that the folder ``path`` can be created (if missing) and written.

    The one output check of every command that takes ``--out``: it probes with a temporary file
    (or folder) that it removes again, so it leaves nothing behind and creates nothing, and it
    answers as root would be answered too (``os.access`` does not). Missing folders are created
    later by the writer itself.

    Args:
        path: the output folder.
        parents: whether missing parent folders may be created (where the command documents it);
            ``False`` requires the parent to exist.
        what: how the message names the folder (``--out``, ``--track-dir``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputError: one line naming the folder and why it cannot be written.
    """
    path = Path(path)
    if not str(path).strip():
        raise OutputError(f"{what}: expected a folder path, got an empty string")
    name = f"{what} {path}"
    if path.exists() and not path.is_dir():
        raise OutputError(f"{name}: exists and is not a folder")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{name}: {existing} is not a folder, so nothing can be created below it")
    if existing != path and not parents and existing != path.parent:
        raise OutputError(f"{name}: its parent folder {path.parent} does not exist")
    try:
        if existing == path:  # can we write into it?
            fd, probe = tempfile.mkstemp(prefix=".hgadapter-write-test-", dir=path)
            os.close(fd)
            os.unlink(probe)
        else:  # can we create a folder where the first missing one goes?
            os.rmdir(tempfile.mkdtemp(prefix=".hgadapter-write-test-", dir=existing))
    except OSError as exc:
        verb = "cannot write into this folder" if existing == path else f"cannot create it: {existing} is not writable"
        raise OutputError(f"{name}: {verb} ({exc.strerror or exc})") from None
    return path


def check_output_file(path: str | Path, *, parents: bool = False, what: str = "--out") -> Path:
    """:func:`check_output_dir` for an output *file* (``predict --out FILE.csv``, a figure): the
    path is not a folder, and its folder exists (or, with ``parents``, can be created) and is writable."""
    path = Path(path)
    if not str(path).strip():
        raise OutputError(f"{what}: expected a file path, got an empty string")
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a folder; expected a file name")
    if not parents and not path.parent.is_dir():
        raise OutputError(f"{what} {path}: its folder {path.parent} does not exist")
    check_output_dir(path.parent, parents=parents, what=f"{what} {path}: folder")
    return path


def atomic_write(path: str | Path, write: Callable[[str], None], *, sync_dir: bool = True) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it into place.

    ``write`` may replace the temp file rather than write into it (safetensors' ``save_file``
    does). The file's data is fsynced before the rename makes it visible, and the file gets mode
    ``0o666 & ~umask``.

    Args:
        path: the target file; its parent directories are created.
        write: writes the whole file to the path it is given.
        sync_dir: also fsync the directory, so that the rename itself survives a crash. Pass
            ``False`` when writing several files into one directory and call :func:`fsync_dir`
            once at the end.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())  # the data is on disk before the rename makes it visible
        os.chmod(tmp, file_mode())  # mkstemp and safetensors make 0600; results are for sharing
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)
    return path


def fsync_dir(directory: str | Path) -> None:
    """Make the renames into ``directory`` durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- whole folders ----------------------------------------------------------------------------

# Beside a target folder ``NAME``, :func:`write_folder` builds ``.NAME.staging-<pid>-<random>`` and
# (where the old folder cannot be swapped in one step) moves the old one to ``.NAME.old-<pid>-<random>``
# for a moment; the pid tells a stray left by a killed process from one a live writer is using.
_STRAY = re.compile(r"(staging|old)-(\d+)-[A-Za-z0-9_]+")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (EPERM): alive
        return True
    return True


def remove_stale_folders(target: str | Path) -> list[Path]:
    """Clean up after a :func:`write_folder` to ``target`` that was killed: remove its staging
    folders and, should the kill have come between moving the old folder aside and renaming the
    new one into place, put the old folder back. Folders of writers still running are left alone.
    Returns what was removed or restored."""
    target = Path(target)
    parent, prefix = target.parent, f".{target.name}."
    if not parent.is_dir():
        return []
    touched = []
    for entry in sorted(parent.iterdir()):
        match = _STRAY.fullmatch(entry.name[len(prefix):]) if entry.name.startswith(prefix) else None
        if match is None or not entry.is_dir() or entry.is_symlink() or _pid_alive(int(match[2])):
            continue
        if match[1] == "old" and not os.path.lexists(target):
            os.rename(entry, target)  # the new folder never arrived: the old one is the target again
        else:
            shutil.rmtree(entry, ignore_errors=True)
        touched.append(entry)
    return touched


def _rename_exchange(source: Path, target: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where the
    system or the file system cannot, so the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without it (glibc < 2.28, musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(target), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(target))


def write_folder(
    target: str | Path,
    build: Callable[[Path], None],
    *,
    check_existing: Callable[[Path], None],
) -> Path:
    """Write a whole folder: ``build(staging)`` fills a new folder beside ``target``, which then
    replaces ``target`` by a rename.

    A kill at any moment leaves the old folder or the new one at ``target`` (on Linux the two are
    swapped in one step; elsewhere a kill between the two renames leaves the old folder aside,
    and the next :func:`write_folder` or :func:`remove_stale_folders` puts it back). Strays of
    killed writers are cleaned first. Files get the umask's permissions, as from :func:`atomic_write`.

    Args:
        target: the folder to write; its parent directories are created. A symlink to a folder
            is followed (the folder it names is replaced, the link stays).
        build: writes every file of the folder into the (empty) directory it is given.
        check_existing: called with ``target`` when it already exists, before anything is built;
            it raises to refuse replacing it (only the caller knows what it may replace).

    Returns:
        ``target`` as a :class:`~pathlib.Path`.
    """
    target = Path(target)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_folders(target)
    if os.path.lexists(target):
        check_existing(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-{os.getpid()}-", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp makes 0700
        build(staging)
        fsync_dir(staging)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    return target


def _move_into_place(staging: Path, target: Path) -> None:
    if not os.path.lexists(target):
        try:
            os.rename(staging, target)
            return
        except OSError as err:  # someone created it meanwhile: replace it as below
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    if not target.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(target))
    if _rename_exchange(staging, target):
        shutil.rmtree(staging)  # now the old folder
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
    os.rename(target, old)  # onto the empty placeholder (POSIX rename replaces an empty folder)
    os.rename(staging, target)
    shutil.rmtree(old)


# -- reading user input -------------------------------------------------------------------------


def read_regular_file(path: str | Path, *, max_bytes: int) -> bytes:
    """The bytes of the file at ``path``, which must be a regular file of at most ``max_bytes``.

    The file is opened without blocking and checked before a byte is read, so a FIFO or a device
    under the expected name is refused instead of blocking or filling memory.

    Raises:
        OSError: the file cannot be opened, is not a regular file (``strerror`` "not a regular
            file (a FIFO, device or folder)") or is larger than ``max_bytes``.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or folder)", str(path))
        if info.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"{info.st_size} bytes, more than the {max_bytes} such a file may have", str(path))
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 24, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:  # it grew while being read
            raise OSError(errno.EFBIG, f"more than the {max_bytes} bytes such a file may have", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    return atomic_write(path, write)


def json_safe(value: Any) -> Any:
    """``value`` with numpy/torch scalars turned into Python numbers, tuples into lists, and NaN or
    infinite floats into ``None`` (JSON has no NaN: a file with one is not JSON to other readers)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class NotJSONError(ValueError):
    """Text that Python's json module would accept but JSON does not: NaN, Infinity, -Infinity."""


def _reject_constant(name: str) -> Any:
    raise NotJSONError(f"{name} is not a JSON value (write null, or a finite number)")


def strict_json_loads(text: str) -> Any:
    """:func:`json.loads` that refuses ``NaN`` / ``Infinity`` (:class:`NotJSONError`), which Python
    writes and reads but no other JSON reader accepts, and nesting too deep to parse (the decoder
    recurses: a RecursionError would be a traceback, not a message)."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise NotJSONError("nested too deeply to read (thousands of levels)") from None
    except (json.JSONDecodeError, NotJSONError):
        raise
    except ValueError as exc:  # Python refuses integers of more than 4300 digits (sys.set_int_max_str_digits)
        if "digits" not in str(exc):
            raise
        raise NotJSONError("holds an integer too long to read (thousands of digits)") from None


def json_digest(data: Any) -> str:
    """A short, stable fingerprint of JSON-able ``data`` (key order does not matter)."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as JSON atomically; NaN and infinities become ``null`` (:func:`json_safe`)."""
    return atomic_write_text(path, json.dumps(json_safe(data), indent=2, sort_keys=False, allow_nan=False) + "\n")


def atomic_save_tensors(path: str | Path, tensors: "dict[str, torch.Tensor]", metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def read_yaml(path: str | Path, error: type[Exception], *, what: str = "", hint: str = "") -> Any:
    """The parsed YAML file at ``path``; a one-line ``error`` when it cannot be read or parsed.

    Args:
        path: the file.
        error: the exception class to raise (``ConfigError``, ``ReportError``, ...).
        what: names the file in the read error ("cannot read the paper results: ...").
        hint: appended to the read error after "; " (e.g. "pass --paper PATH").

    Raises:
        error: ``"<path>: cannot read[ <what>]: <reason>[; <hint>]"`` or
            ``"<path>: not valid YAML (line N)"``.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        subject = f" {what}" if what else ""
        tail = f"; {hint}" if hint else ""
        raise error(f"{path}: cannot read{subject}: {exc.strerror or exc}{tail}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise error(f"{path}: not valid YAML{line}") from None
