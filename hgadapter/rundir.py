"""A run folder holds one run, written by one process at a time.

Every run that writes a folder (``hgadapter run``, ``sweep``, ``compare``, ``demo``) claims it
first with :func:`claim_run_folder`, which the runner calls before any fitting:

1. the folder must be writable (:func:`hgadapter._io.check_output_dir`);
2. the process takes the folder's advisory lock (:func:`hgadapter._lock.folder_lock`) for the
   whole run; a folder that another process is writing raises :class:`RunBusyError`, and a sweep
   leaves that run to the other process;
3. a folder holding a finished run of another configuration (another ``config_id``,
   :func:`hgadapter.runspec.config_id`, or another seed) is refused unless ``overwrite``: a run
   folder holds one run, and averaging or exporting assumes its files belong together;
4. the old run's files are removed (``metrics.json`` first, so a run killed from here on never
   looks finished), and only they: a folder that holds no run keeps whatever else it holds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hgadapter._io import TEMP_GLOB, check_output_dir, remove_stale_temp_files
from hgadapter._lock import FolderBusy, folder_lock
from hgadapter.errors import UserError
from hgadapter.records import (
    CLASSES_FILE,
    CONFIG_FILE,
    HEAD_FILE,
    HEAD_SPEC_FILE,
    HISTORY_FILE,
    LOG_FILE,
    METRICS_FILE,
    RecordError,
    load_record,
)

__all__ = ["RunFolderError", "RunBusyError", "claim_run_folder", "run_files"]

# The files only a run writes; their presence makes a folder a run folder.
_MARKERS = (METRICS_FILE, LOG_FILE, CLASSES_FILE, HISTORY_FILE, HEAD_FILE, HEAD_SPEC_FILE)
# What identifies the run a folder holds, in the order a refusal names differences.
_VISIBLE = ("method", "shots", "seed", "dataset", "backbone", "params")


class RunFolderError(UserError):
    """A run folder that holds a finished run of another configuration."""


class RunBusyError(UserError):
    """A run folder that another process is writing now (it holds the folder's lock)."""


def run_files(folder: str | os.PathLike) -> list[Path]:
    """The files of the run ``folder`` holds (finished or not): ``[]`` when it holds none.

    A run's files are the runner's fixed names and every ``*.safetensors`` beside them; nothing
    in sub-folders (a tracking folder, say) and nothing in a folder without a run's marker files.
    """
    folder = Path(folder)
    if not folder.is_dir() or not any((folder / name).is_file() for name in _MARKERS):
        return []
    named = [folder / name for name in (*_MARKERS, CONFIG_FILE)]
    tensors = sorted(folder.glob("*.safetensors"))
    return [p for p in dict.fromkeys([*named, *tensors]) if p.is_file() and not p.match(TEMP_GLOB)]


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    def value(record: Mapping[str, Any], key: str) -> Any:
        return record.get(key) or (None if key == "params" else record.get(key))  # no grid point: {} or absent

    diffs = [f"{key} {value(old, key)!r} -> {value(new, key)!r}" for key in _VISIBLE if value(old, key) != value(new, key)]
    if not diffs and old.get("config_id") and old.get("config_id") != new.get("config_id"):
        diffs.append("the method's config or the feature cache")
    return diffs


@contextlib.contextmanager
def claim_run_folder(folder: str | os.PathLike, run: Mapping[str, Any], *, overwrite: bool = False) -> Iterator[Path]:
    """Hold ``folder`` for one run for the ``with`` block (module docstring: steps 1-4).

    Args:
        folder: the run folder (created with its parents).
        run: what identifies the new run: ``config_id`` and the keys a record has for
            ``method``, ``shots``, ``seed``, ``dataset``, ``backbone``, ``params``.
        overwrite: replace a finished run of another configuration.

    Raises:
        OutputError: the folder cannot be created or written.
        RunBusyError: another process is writing the folder.
        RunFolderError: the folder holds a finished run of another configuration (without ``overwrite``).
    """
    path = check_output_dir(folder)
    try:
        with folder_lock(path):
            _clear_old_run(path, run, overwrite)
            yield path
    except FolderBusy as busy:
        raise RunBusyError(
            f"{busy}: a run or sweep into the same folder is in progress; let it finish (its result lands "
            "here) or choose another --out"
        ) from None


def _clear_old_run(folder: Path, run: Mapping[str, Any], overwrite: bool) -> None:
    old = None
    if (folder / METRICS_FILE).is_file():
        try:
            old = load_record(folder)
        except RecordError:
            old = None  # unreadable: not a finished run, only files to clear
    if old is not None and not overwrite:
        diffs = _differences(old, run)
        if diffs:
            raise RunFolderError(
                f"{folder}: holds a finished run of another configuration ({'; '.join(diffs)}); a run folder holds "
                "one run: choose another --out, or pass --overwrite to replace it"
            )
    files = run_files(folder)
    # metrics.json first: from here until the new one is written, the folder is not a finished run
    for path in sorted(files, key=lambda p: p.name != METRICS_FILE):
        path.unlink(missing_ok=True)
    remove_stale_temp_files(folder)  # left by a run killed while writing
