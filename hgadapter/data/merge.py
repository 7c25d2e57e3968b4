"""Adding training sets to a feature cache on disk, which is how an interrupted extraction resumes.

Everything but the set of training sets must match the cache already in the directory: the
sidecar (classnames, dim, logit scale, meta, shapes) and the text, val and test tensors
themselves, to within :data:`MERGE_ATOL`. See :func:`hgadapter.data.io.save_cache`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hgadapter.data.cache import TEST_FILE, TEXT_FILE, VAL_FILE, CacheError
from hgadapter.data.validate import CHECKSUMS_KEY, Context, Files, format_keys, load_file, read_sidecar, to_memory, train_context

# Re-extracting the same split on a GPU is not bit-exact (cuDNN kernel choice) and float16 storage
# rounds to ~5e-4, so a resumed extraction is compared with the cache on disk to this tolerance.
MERGE_ATOL = 1e-3



def merge_into_existing(
    directory: Path, sidecar: dict[str, Any], files: Files
) -> tuple[dict[str, Any], Files]:
    """The merged sidecar and the files still to write, when adding to an existing cache."""
    where = f"cannot add to the feature cache in {directory}"
    try:
        old = read_sidecar(directory)
    except CacheError as e:
        raise CacheError(
            f"{where}: the existing cache is invalid ({e}); pass overwrite=True to replace it"
        ) from None
    diffs = _diff(_shared_part(old), _shared_part(sidecar))
    if diffs:
        shown = ", ".join(diffs[:5]) + (", ..." if len(diffs) > 5 else "")
        raise CacheError(
            f"{where}: it holds an incompatible cache (differs in {shown}); pass overwrite=True "
            "to replace it, or save to another directory"
        )

    to_write = dict(files)
    ctx = Context(classnames=old["classnames"], dim=old["dim"])
    # The sidecar records shapes only: new training sets must not sit beside val/test features
    # from a different extraction, so the tensors themselves are compared.
    for file in (TEXT_FILE, VAL_FILE, TEST_FILE):
        kind = files[file][0]
        _require_same(where, file, load_file(directory, old, file, kind, ctx), files[file])
        del to_write[file]

    old_entries = {(e["shots"], e["seed"]): e for e in old["train_sets"]}
    merged_entries = dict(old_entries)
    merged_table = dict(old["files"])
    for entry in sidecar["train_sets"]:
        key = (entry["shots"], entry["seed"])
        old_entry = old_entries.get(key)
        if old_entry is not None:
            file = old_entry["file"]
            old_shapes = _shapes(old["files"][file])
            if old_entry != entry or old_shapes != _shapes(sidecar["files"][entry["file"]]):
                raise CacheError(
                    f"{where}: its training set {format_keys([key])} differs from the one being "
                    "saved (views, indices or shapes); pass overwrite=True to replace the cache"
                )
            on_disk = load_file(directory, old, file, "train", train_context(ctx, old_entry))
            _require_same(where, file, on_disk, files[entry["file"]])
            del to_write[entry["file"]]  # identical: leave the file on disk untouched
        else:
            merged_entries[key] = entry
            merged_table[entry["file"]] = sidecar["files"][entry["file"]]

    merged = dict(old)
    merged["train_sets"] = [merged_entries[k] for k in sorted(merged_entries)]
    merged["files"] = merged_table
    return merged, to_write


def _shared_part(sidecar: dict[str, Any]) -> dict[str, Any]:
    """The sidecar without its training sets: what adding a training set must not change.

    Dtypes are left out: files already on disk are not rewritten, and a float16 cache read
    back by :func:`load_cache` comes as float32, so extending it must still work. The tensors
    themselves are compared separately.
    """
    shared = {k: v for k, v in sidecar.items() if k not in ("train_sets", CHECKSUMS_KEY)}  # checksums are rewritten
    shared["files"] = {f: _shapes(sidecar["files"][f]) for f in (TEXT_FILE, VAL_FILE, TEST_FILE)}
    return shared


def _shapes(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, list[int]]]:
    """A file-table entry without its dtypes."""
    return {key: {"shape": record["shape"]} for key, record in records.items()}


def _require_same(
    where: str,
    file: str,
    on_disk: dict[str, torch.Tensor],
    new: tuple[str, dict[str, torch.Tensor]],
) -> None:
    """Raise unless the tensors about to be written match the ones on disk."""
    kind, tensors = new
    for key, t in to_memory(tensors, kind).items():
        old = on_disk[key]
        if t.dtype == torch.int64:
            same = torch.equal(old, t)
            detail = "different labels"
        else:
            diff = float((old - t).abs().max()) if t.numel() else 0.0
            same = diff <= MERGE_ATOL
            detail = f"max abs difference {diff:.3g} > {MERGE_ATOL}"
        if not same:
            raise CacheError(
                f"{where}: {file} {key!r} on disk differs from the one being saved ({detail}), "
                "so it was extracted differently; pass overwrite=True to replace the cache"
            )


def _diff(old: Any, new: Any, at: str = "") -> list[str]:
    """Dotted paths at which two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            sub = f"{at}.{key}" if at else str(key)
            if key not in old or key not in new:
                out.append(sub)
            else:
                out += _diff(old[key], new[key], sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        paths = [p for i, (a, b) in enumerate(zip(old, new)) for p in _diff(a, b, f"{at}[{i}]")]
        return paths if len(paths) <= 1 else [at]  # one changed classname is worth naming
    return [] if old == new else [at]
