"""Reading and writing feature caches (docs/feature-cache.md): :func:`save_cache`, :func:`load_cache`.

Both run the same checks (:mod:`hgadapter.data.validate`), so a cache that :func:`save_cache`
wrote always loads, and a bad one is never written. Every file goes through the project's one
atomic writer (:func:`hgadapter._io.atomic_write`): fsynced, renamed into place, with the
permissions ``open()`` would give.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from hgadapter._io import atomic_write, fsync_dir
from hgadapter.data.cache import (
    FORMAT_VERSION, SIDECAR_NAME, TEST_FILE, TEXT_FILE, VAL_FILE, CacheError, FeatureCache, FewShotSet, train_file_name,
)
from hgadapter.data.merge import merge_into_existing
from hgadapter.data.validate import (
    CHECKSUMS_KEY,
    Context,
    Files,
    check_head,
    check_layout,
    check_table,
    check_values,
    file_checksum,
    format_keys,
    is_integer,
    is_number,
    layout_of,
    load_file,
    one_line,
    read_sidecar,
    to_memory,
    train_context,
)

def save_cache(path: str | Path, cache: FeatureCache, *, overwrite: bool = False) -> Path:
    """Write ``cache`` to the directory ``path``, one atomic file at a time.

    The cache is validated first with the same checks :func:`load_cache` runs, so an invalid
    cache raises before anything is written. Every file is written to a temporary name in the
    directory and renamed into place; ``cache.json`` is written last, so a crash leaves either the
    previous cache or files that no sidecar lists yet.

    Writing into a directory that already holds a cache:

    * ``overwrite=False`` (the default) adds the training sets of ``cache`` to it, which is how
      an interrupted extraction resumes. Everything except the set of training sets must match:
      the sidecars (classnames, dim, logit scale, meta, the shapes of the text, val and test
      tensors) and those tensors themselves (to within 1e-3, whatever their dtypes). A training
      set already on disk must match too. Files that match are left untouched, so a float16
      cache read back with :func:`load_cache` (as float32) can be extended with new sets.
    * ``overwrite=True`` replaces the cache: the old sidecar is removed first, every file is
      rewritten, and the training-set files that only the old sidecar listed are deleted.

    Args:
        path: the cache directory; created (with its parents) if missing.
        cache: the features to write. Float16 features are stored as float16, other floating
            dtypes as float32; labels as int64.
        overwrite: replace an existing cache instead of adding to it.

    Returns:
        The cache directory.

    Raises:
        CacheError: the cache is invalid, or the directory holds a cache it does not match.
    """
    if not isinstance(cache, FeatureCache):
        raise TypeError(f"save_cache() needs a FeatureCache, got {type(cache).__name__}")
    directory = Path(path)
    where = f"cannot save feature cache to {directory}"
    sidecar, files = _build(cache, where)
    _validate_build(sidecar, files, where)

    if directory.exists() and not directory.is_dir():
        raise CacheError(f"{where}: the path exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    sidecar_path = directory / SIDECAR_NAME
    stale: set[str] = set()
    if sidecar_path.exists() and not overwrite:
        sidecar, files = merge_into_existing(directory, sidecar, files)
    elif sidecar_path.exists():
        try:
            stale = set(read_sidecar(directory)["files"])
        except CacheError:
            stale = set()  # an unreadable old sidecar names no files we could safely delete
        # Without a sidecar the directory reads as "not a cache" until the new one is complete,
        # never as old metadata describing a mix of old and new files.
        sidecar_path.unlink()

    # Each rename is made durable once, below, rather than after every file.
    # A content hash per file, so that load_cache notices a damaged or altered tensor file. Files
    # a merge leaves untouched keep theirs (the merge verified them when it read them); a cache
    # written before checksums gets them for its old files here.
    checksums = dict(sidecar.get(CHECKSUMS_KEY) or {})
    for file, (_, tensors) in files.items():
        atomic_write(directory / file, lambda tmp, t=tensors: safetensors.torch.save_file(t, tmp), sync_dir=False)
        checksums.pop(file, None)  # rewritten: hashed below, from the file as written
    sidecar = {
        **sidecar,
        CHECKSUMS_KEY: {f: checksums.get(f) or file_checksum(directory / f) for f in sorted(sidecar["files"])},
    }
    text = _dump_json(sidecar) + "\n"
    atomic_write(sidecar_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), sync_dir=False)
    for file in sorted(stale - set(sidecar["files"])):
        (directory / file).unlink(missing_ok=True)
    fsync_dir(directory)
    return directory


def load_cache(
    path: str | Path, *, train_keys: Iterable[tuple[int, int]] | None = None
) -> FeatureCache:
    """Load and validate a cache directory (format in docs/feature-cache.md).

    Args:
        path: the cache directory.
        train_keys: the ``(shots, seed)`` training sets to read; ``None`` reads all of them and
            ``[]`` none (for zero-shot evaluation).

    Returns:
        The cache, with every feature tensor as float32 and every label tensor as int64.

    Raises:
        CacheError: a one-line message naming the file and what is wrong with it: a missing
            directory or file, a sidecar that is not valid JSON, lacks keys or has another
            ``format_version``, a tensor of the wrong dtype, rank or dimension, labels outside
            ``[0, C)``, NaN/Inf or unnormalised features, a requested training set that is not
            present, or a few-shot set without exactly ``shots`` images per class.
    """
    directory = Path(path)
    sidecar = read_sidecar(directory)
    entries = {(e["shots"], e["seed"]): e for e in sidecar["train_sets"]}
    if train_keys is None:
        wanted = sorted(entries)
    else:
        wanted = list(dict.fromkeys(_as_train_key(k) for k in train_keys))
        absent = [k for k in wanted if k not in entries]
        if absent:
            raise CacheError(
                f"{directory / SIDECAR_NAME}: no training set for {format_keys(absent)}; "
                f"present: {format_keys(sorted(entries))}"
            )

    ctx = Context(classnames=sidecar["classnames"], dim=sidecar["dim"])
    text = load_file(directory, sidecar, TEXT_FILE, "text", ctx)
    val = load_file(directory, sidecar, VAL_FILE, "split", ctx)
    test = load_file(directory, sidecar, TEST_FILE, "split", ctx)
    train_sets = {}
    for shots, seed in wanted:
        entry = entries[(shots, seed)]
        tensors = load_file(directory, sidecar, entry["file"], "train", train_context(ctx, entry))
        train_sets[(shots, seed)] = FewShotSet(
            shots=shots,
            seed=seed,
            features=tensors["features"],
            labels=tensors["labels"],
            indices=entry["indices"],
        )
    return FeatureCache(
        classnames=list(sidecar["classnames"]),
        pos_text=text["pos_text"],
        neg_text=text["neg_text"],
        val_features=val["features"],
        val_labels=val["labels"],
        test_features=test["features"],
        test_labels=test["labels"],
        train_sets=train_sets,
        logit_scale=float(sidecar["logit_scale"]),
        meta=sidecar["meta"],
        pos_text_norm=text.get("pos_text_norm"),
        neg_text_norm=text.get("neg_text_norm"),
    )


def verify_train_sets(path: str | Path, keys: Iterable[tuple[int, int]] | None = None) -> dict[tuple[int, int], str | None]:
    """Read and check the training sets of a cache one at a time, as :func:`load_cache` would.

    Every check of the format runs (checksum, tensors and their dtypes and shapes against the
    sidecar, finite unit-norm features, labels in range, ``shots`` images per class), but no set
    is kept, so a cache of any size is verified in the memory of its largest set.

    Args:
        path: the cache directory.
        keys: the ``(shots, seed)`` sets to verify; ``None``: every set the sidecar lists
            (keys it does not list are left out).

    Returns:
        ``(shots, seed) -> None`` for a set that loads, else the one-line reason it does not.

    Raises:
        CacheError: the directory or its sidecar is missing or invalid.
    """
    directory = Path(path)
    sidecar = read_sidecar(directory)
    ctx = Context(classnames=sidecar["classnames"], dim=sidecar["dim"])
    wanted = None if keys is None else {_as_train_key(k) for k in keys}
    out: dict[tuple[int, int], str | None] = {}
    for entry in sorted(sidecar["train_sets"], key=lambda e: (e["shots"], e["seed"])):
        key = (entry["shots"], entry["seed"])
        if wanted is not None and key not in wanted:
            continue
        try:
            load_file(directory, sidecar, entry["file"], "train", train_context(ctx, entry))
        except CacheError as exc:
            out[key] = str(exc)
        else:
            out[key] = None
    return out


def load_sidecar(path: str | Path) -> dict[str, Any]:
    """The validated ``cache.json`` of a cache directory, without reading any tensor.

    Use it to compare ``meta`` with a request before loading, or to check shapes cheaply.

    Raises:
        CacheError: the directory or sidecar is missing or the sidecar is invalid.
    """
    return read_sidecar(Path(path))


def list_train_sets(path: str | Path) -> list[tuple[int, int]]:
    """The ``(shots, seed)`` training sets a cache holds, sorted, read from its sidecar only.

    Raises:
        CacheError: the directory or sidecar is missing or the sidecar is invalid.
    """
    return sorted((e["shots"], e["seed"]) for e in read_sidecar(Path(path))["train_sets"])


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _build(cache: FeatureCache, where: str) -> tuple[dict[str, Any], Files]:
    """The sidecar and files for ``cache``, unvalidated (see :func:`_validate_build`)."""
    pos_text = _to_storage(cache.pos_text, "features", where, "pos_text")
    neg_text = _to_storage(cache.neg_text, "features", where, "neg_text")
    if neg_text.untyped_storage().data_ptr() == pos_text.untyped_storage().data_ptr():
        neg_text = neg_text.clone()  # safetensors refuses tensors that share memory in one file
    text = {"pos_text": pos_text, "neg_text": neg_text}
    for key in ("pos_text_norm", "neg_text_norm"):  # optional: written when the cache has them
        if getattr(cache, key) is not None:
            text[key] = _to_storage(getattr(cache, key), "norms", where, key)
    files: Files = {TEXT_FILE: ("text", text)}
    for file, split, features, labels in (
        (VAL_FILE, "val", cache.val_features, cache.val_labels),
        (TEST_FILE, "test", cache.test_features, cache.test_labels),
    ):
        files[file] = (
            "split",
            {
                "features": _to_storage(features, "features", where, f"{split}_features"),
                "labels": _to_storage(labels, "labels", where, f"{split}_labels"),
            },
        )

    if not isinstance(cache.train_sets, dict):
        raise CacheError(f"{where}: train_sets must be a dict keyed by (shots, seed)")
    entries = []
    for key, few_shot in cache.train_sets.items():
        if not isinstance(few_shot, FewShotSet):
            raise CacheError(
                f"{where}: train_sets[{key!r}] must be a FewShotSet, got {type(few_shot).__name__}"
            )
        if key != few_shot.key:
            raise CacheError(
                f"{where}: train_sets key {key!r} does not match its set's "
                f"(shots={few_shot.shots}, seed={few_shot.seed})"
            )
        # numpy and 0-d tensor integers become plain ints; anything else is left for the sidecar
        # check to reject by name.
        shots, seed = (_plain_int(few_shot.shots), _plain_int(few_shot.seed))
        at = f"train_sets[({shots}, {seed})]"
        features = _to_storage(few_shot.features, "features", where, f"{at}.features")
        labels = _to_storage(few_shot.labels, "labels", where, f"{at}.labels")
        file = train_file_name(shots, seed)
        files[file] = ("train", {"features": features, "labels": labels})
        entries.append(
            {
                "shots": shots,
                "seed": seed,
                "file": file,
                # A wrong rank gets a placeholder here and is reported by the layout check.
                "views": int(features.shape[1]) if features.dim() == 3 else 1,
                "indices": _indices_to_json(few_shot.indices, where, at),
            }
        )
    entries.sort(key=lambda e: (e["shots"], e["seed"]))

    try:
        # A JSON round trip now makes the sidecar compare equal to what a reader will parse.
        meta = json.loads(json.dumps(cache.meta, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise CacheError(f"{where}: meta must be JSON-serialisable ({one_line(e)})") from None
    classnames = cache.classnames
    scale = cache.logit_scale
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        scale = float(scale)  # e.g. model.logit_scale.exp()
    sidecar = {
        "format_version": FORMAT_VERSION,
        "classnames": list(classnames) if isinstance(classnames, (list, tuple)) else classnames,
        "dim": int(pos_text.shape[-1]) if pos_text.dim() else 1,
        "logit_scale": float(scale) if is_number(scale) else scale,
        "files": {
            file: {
                key: {"dtype": dtype, "shape": list(shape)}
                for key, (dtype, shape) in layout_of(tensors).items()
            }
            for file, (_, tensors) in files.items()
        },
        "train_sets": entries,
        "meta": meta,
    }
    return sidecar, files


def _validate_build(sidecar: dict[str, Any], files: Files, where: str) -> None:
    """Run the load-time checks on a cache about to be written, naming FeatureCache fields."""
    check_head(sidecar, where)
    ctx = Context(classnames=sidecar["classnames"], dim=sidecar["dim"])
    entries = {e["file"]: e for e in sidecar["train_sets"]}
    for file, (kind, tensors) in files.items():
        if kind == "text":
            subject = {k: k for k in ("pos_text", "neg_text", "pos_text_norm", "neg_text_norm")}
            file_ctx = ctx
        elif kind == "split":
            split = "val" if file == VAL_FILE else "test"
            subject = {"features": f"{split}_features", "labels": f"{split}_labels"}
            file_ctx = ctx
        else:
            entry = entries[file]
            at = f"train_sets[({entry['shots']}, {entry['seed']})]"
            subject = {"features": f"{at}.features", "labels": f"{at}.labels"}
            file_ctx = train_context(ctx, entry)
        check_layout(kind, layout_of(tensors), file_ctx, where, subject)
        check_values(kind, to_memory(tensors, kind), file_ctx, where, subject)
    check_table(sidecar, where)


def _to_storage(t: Any, role: str, where: str, subject: str) -> torch.Tensor:
    """``t`` in its storage dtype: float16 stays, other floats become float32, integers int64.

    Tensors of any other dtype pass through unchanged for the dtype check to reject by name.
    """
    if not isinstance(t, torch.Tensor):
        raise CacheError(f"{where}: {subject} must be a torch.Tensor, got {type(t).__name__}")
    t = t.detach().cpu()
    if role == "features" and t.dtype.is_floating_point and t.dtype != torch.float16:
        t = t.to(torch.float32)
    elif role == "norms" and t.dtype.is_floating_point:
        t = t.to(torch.float32)  # raw norms of ~10 lose ~1e-2 in float16; they are C x P numbers
    elif role == "labels" and is_integer(t.dtype):
        t = t.to(torch.int64)
    return t.contiguous()  # safetensors writes contiguous buffers only


def _indices_to_json(indices: Any, where: str, at: str) -> list[int] | None:
    if indices is None:
        return None
    if isinstance(indices, torch.Tensor):
        indices = indices.tolist()
    try:
        return [operator.index(i) for i in indices]
    except TypeError:
        raise CacheError(f"{where}: {at}.indices must be None or a list of integers") from None


def _dump_json(value: Any, indent: str = "") -> str:
    """JSON indented by object and nested array, with arrays of scalars on one line.

    Shapes, classnames and indices stay one line each instead of one line per number.
    """
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [
            f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {_dump_json(v, inner)}"
            for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [f"{inner}{_dump_json(v, inner)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{indent}]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _as_train_key(key: Any) -> tuple[int, int]:
    try:
        shots, seed = key
        return operator.index(shots), operator.index(seed)
    except (TypeError, ValueError):
        raise TypeError(f"train_keys must hold (shots, seed) pairs of ints, got {key!r}") from None


def _plain_int(value: Any) -> Any:
    try:
        return operator.index(value)
    except TypeError:
        return value
