"""Feature caches: the frozen CLIP features every adapter trains on (docs/feature-cache.md).

The paper initialises its text nodes from CLIP features of positive and negative prompts, its
visual nodes from the features of the few-shot images, and keys its cache classifier on every
training feature (HeGraphAdapter Sec. 3.1.1 "Nodes" and Sec. 3.2). CLIP stays frozen, so these
features are computed once and stored here.

A cache is a directory holding a JSON sidecar (``cache.json``) and safetensors files. It is the
only interface between feature extraction (real CLIP or the synthetic task) and training, so
anyone can write one from their own features with :func:`save_cache`::

    cache.json                           sidecar: version, classnames, dim, file table, meta
    text.safetensors                     pos_text (C, P, d), neg_text (C, Q, d)
    val.safetensors                      features (N_val, d), labels (N_val,)
    test.safetensors                     features (N_test, d), labels (N_test,)
    train_k{shots}_s{seed}.safetensors   features (N, V, d), labels (N,); one per few-shot set

Every check runs both when a cache is saved and when it is loaded, so a cache that
:func:`save_cache` wrote always loads, and a bad one is never written.
"""

from __future__ import annotations

import json
import math
import operator
import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

FORMAT_VERSION = 1

SIDECAR_NAME = "cache.json"
TEXT_FILE = "text.safetensors"
VAL_FILE = "val.safetensors"
TEST_FILE = "test.safetensors"

_SIDECAR_KEYS = (
    "format_version", "classnames", "dim", "logit_scale", "files", "train_sets", "meta"
)
_TRAIN_ENTRY_KEYS = ("shots", "seed", "file", "views", "indices")

# What each kind of file holds: tensor key -> (role, rank, shape as documented).
_FILE_KINDS: dict[str, dict[str, tuple[str, int, str]]] = {
    "text": {
        "pos_text": ("features", 3, "(C, P, d)"),
        "neg_text": ("features", 3, "(C, Q, d)"),
    },
    "split": {
        "features": ("features", 2, "(N, d)"),
        "labels": ("labels", 1, "(N,)"),
    },
    "train": {
        "features": ("features", 3, "(N, V, d)"),
        "labels": ("labels", 1, "(N,)"),
    },
}

# float16 storage rounds each component to ~5e-4 relative, so the norm of a normalised 1024-d row
# read back from float16 is within ~1e-3 of 1, while an unnormalised CLIP feature is off by far
# more.
_NORM_TOL = 1e-2
# Re-extracting the same split on a GPU is not bit-exact (cuDNN kernel choice) and float16 storage
# rounds to ~5e-4, so a resumed extraction is compared with the cache on disk to this tolerance.
_MERGE_ATOL = 1e-3


class CacheError(ValueError):
    """A feature cache is missing, malformed or does not match the request."""


@dataclass(frozen=True)
class FewShotSet:
    """One few-shot training set, identified by ``(shots, seed)``.

    Attributes:
        shots: images per class (K).
        seed: sampling seed.
        features: L2-normalised image features of every augmented view, shape ``(N, V, d)``.
        labels: class index of each image, shape ``(N,)``, int64.
        indices: index of each image in the source train split (recorded for reproducibility),
            or ``None`` when the images have no source list (synthetic task).
    """

    shots: int
    seed: int
    features: torch.Tensor
    labels: torch.Tensor
    indices: list[int] | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.shots, self.seed)


@dataclass(frozen=True)
class FeatureCache:
    """Everything one (dataset, encoder) pair contributes to training and evaluation.

    Attributes:
        classnames: the C class names, in label order.
        pos_text: per-prompt L2-normalised positive text features, ``(C, P, d)``.
        neg_text: per-prompt L2-normalised negative text features, ``(C, Q, d)``.
        val_features / val_labels: ``(N_val, d)`` / ``(N_val,)``.
        test_features / test_labels: ``(N_test, d)`` / ``(N_test,)``.
        train_sets: few-shot training sets keyed by ``(shots, seed)``.
        logit_scale: CLIP's logit scale s (100 for OpenAI CLIP).
        meta: sidecar metadata recording everything that determined the features (encoder id and
            revision, prompt sets, dataset and split source, augmentation, synthetic flag, ...).
    """

    classnames: list[str]
    pos_text: torch.Tensor
    neg_text: torch.Tensor
    val_features: torch.Tensor
    val_labels: torch.Tensor
    test_features: torch.Tensor
    test_labels: torch.Tensor
    train_sets: dict[tuple[int, int], FewShotSet] = field(default_factory=dict)
    logit_scale: float = 100.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def dim(self) -> int:
        return int(self.pos_text.shape[-1])

    def train_set(self, shots: int, seed: int) -> FewShotSet:
        """The training set for ``(shots, seed)``; a :class:`CacheError` lists the ones present."""
        try:
            return self.train_sets[(shots, seed)]
        except KeyError:
            have = ", ".join(f"(shots={k}, seed={s})" for k, s in sorted(self.train_sets)) or "none"
            raise CacheError(
                f"no training set for (shots={shots}, seed={seed}) in this cache; present: {have}"
            ) from None


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def dataset_name(meta: dict[str, Any]) -> str | None:
    """The dataset a cache's sidecar ``meta`` names (``meta["dataset"]["name"]`` or a plain string)."""
    dataset = meta.get("dataset")
    return dataset.get("name") if isinstance(dataset, dict) else dataset


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
        sidecar, files = _merge_with_existing(directory, sidecar, files)
    elif sidecar_path.exists():
        try:
            stale = set(_read_sidecar(directory)["files"])
        except CacheError:
            stale = set()  # an unreadable old sidecar names no files we could safely delete
        # Without a sidecar the directory reads as "not a cache" until the new one is complete,
        # never as old metadata describing a mix of old and new files.
        sidecar_path.unlink()

    for file, (_, tensors) in files.items():
        _write_atomic(directory / file, lambda tmp, t=tensors: safetensors.torch.save_file(t, tmp))
    text = _dump_json(sidecar) + "\n"
    _write_atomic(sidecar_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    for file in sorted(stale - set(sidecar["files"])):
        (directory / file).unlink(missing_ok=True)
    _fsync_dir(directory)
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
    sidecar = _read_sidecar(directory)
    entries = {(e["shots"], e["seed"]): e for e in sidecar["train_sets"]}
    if train_keys is None:
        wanted = sorted(entries)
    else:
        wanted = list(dict.fromkeys(_as_train_key(k) for k in train_keys))
        absent = [k for k in wanted if k not in entries]
        if absent:
            raise CacheError(
                f"{directory / SIDECAR_NAME}: no training set for {_format_keys(absent)}; "
                f"present: {_format_keys(sorted(entries))}"
            )

    ctx = _Context(classnames=sidecar["classnames"], dim=sidecar["dim"])
    text = _load_file(directory, sidecar, TEXT_FILE, "text", ctx)
    val = _load_file(directory, sidecar, VAL_FILE, "split", ctx)
    test = _load_file(directory, sidecar, TEST_FILE, "split", ctx)
    train_sets = {}
    for shots, seed in wanted:
        entry = entries[(shots, seed)]
        tensors = _load_file(directory, sidecar, entry["file"], "train", _train_context(ctx, entry))
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
    )


def load_sidecar(path: str | Path) -> dict[str, Any]:
    """The validated ``cache.json`` of a cache directory, without reading any tensor.

    Use it to compare ``meta`` with a request before loading, or to check shapes cheaply.

    Raises:
        CacheError: the directory or sidecar is missing or the sidecar is invalid.
    """
    return _read_sidecar(Path(path))


def list_train_sets(path: str | Path) -> list[tuple[int, int]]:
    """The ``(shots, seed)`` training sets a cache holds, sorted, read from its sidecar only.

    Raises:
        CacheError: the directory or sidecar is missing or the sidecar is invalid.
    """
    return sorted((e["shots"], e["seed"]) for e in _read_sidecar(Path(path))["train_sets"])


def train_file_name(shots: int, seed: int) -> str:
    """The file :func:`save_cache` writes the ``(shots, seed)`` training set to."""
    return f"train_k{shots}_s{seed}.safetensors"


# --------------------------------------------------------------------------------------------
# Validation shared by saving and loading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """What a file's tensors are checked against; the train fields apply to training sets only."""

    classnames: list[str]
    dim: int
    shots: int | None = None
    views: int | None = None
    num_indices: int | None = None


def _train_context(ctx: _Context, entry: dict[str, Any]) -> _Context:
    indices = entry["indices"]
    return _Context(
        classnames=ctx.classnames,
        dim=ctx.dim,
        shots=entry["shots"],
        views=entry["views"],
        num_indices=None if indices is None else len(indices),
    )


# (dtype name, shape) of each tensor of a file, as recorded in the sidecar or read from a tensor.
_Layout = dict[str, tuple[str, tuple[int, ...]]]


def _check_layout(
    kind: str, layout: _Layout, ctx: _Context, where: str, subject: dict[str, str]
) -> None:
    """Dtypes, ranks and dimensions of one file's tensors; needs no tensor data."""
    for key, (role, rank, doc_shape) in _FILE_KINDS[kind].items():
        dtype_name, shape = layout[key]
        dtype = _torch_dtype(dtype_name)
        if dtype is None:
            raise CacheError(f"{where}: {subject[key]} has unknown dtype {dtype_name!r}")
        if role == "features" and not dtype.is_floating_point:
            raise CacheError(
                f"{where}: {subject[key]} has dtype {dtype_name}; "
                "features must be floating point (float32 or float16)"
            )
        if role == "labels" and not _is_integer(dtype):
            raise CacheError(
                f"{where}: {subject[key]} has dtype {dtype_name}; labels must be integer (int64)"
            )
        if len(shape) != rank:
            raise CacheError(
                f"{where}: {subject[key]} has shape {_format_shape(shape)}; "
                f"expected rank {rank}, {doc_shape}"
            )
        if role == "features" and shape[-1] != ctx.dim:
            raise CacheError(
                f"{where}: {subject[key]} has d={shape[-1]} but the cache's feature dim is "
                f"{ctx.dim}"
            )

    num_classes = len(ctx.classnames)
    if kind == "text":
        for key in ("pos_text", "neg_text"):
            shape = layout[key][1]
            if shape[0] != num_classes:
                raise CacheError(
                    f"{where}: {subject[key]} has {shape[0]} classes (first dim) but there are "
                    f"{num_classes} classnames"
                )
            if shape[1] < 1:
                raise CacheError(f"{where}: {subject[key]} holds no prompts (second dim is 0)")
        return

    num_rows = layout["features"][1][0]
    num_labels = layout["labels"][1][0]
    if num_labels != num_rows:
        raise CacheError(
            f"{where}: {subject['labels']} has {num_labels} entries but {subject['features']} "
            f"has {num_rows} rows"
        )
    if kind == "train":
        views = layout["features"][1][1]
        if views != ctx.views:
            raise CacheError(
                f"{where}: {subject['features']} has {views} views (second dim) but the "
                f"sidecar says views={ctx.views}"
            )
        if ctx.num_indices is not None and ctx.num_indices != num_rows:
            raise CacheError(
                f"{where}: {subject['features']} has {num_rows} images but the sidecar lists "
                f"{ctx.num_indices} indices"
            )


def _check_values(
    kind: str, tensors: dict[str, torch.Tensor], ctx: _Context, where: str, subject: dict[str, str]
) -> None:
    """Values of one file's tensors, already cast to float32 (features) and int64 (labels)."""
    num_classes = len(ctx.classnames)
    for key, (role, _, _) in _FILE_KINDS[kind].items():
        t = tensors[key]
        if role == "features":
            num_bad = int((~torch.isfinite(t)).sum())
            if num_bad:
                raise CacheError(
                    f"{where}: {subject[key]} has {num_bad} non-finite value(s) (NaN/Inf)"
                )
            # Cosine similarities, the graph's edge weights and the cache classifier's affinity
            # all read dot products as cosines, which holds only for unit-norm rows.
            norms = t.norm(dim=-1).flatten()
            if norms.numel():
                off = (norms - 1).abs()
                worst = int(off.argmax())
                if off[worst] > _NORM_TOL:
                    raise CacheError(
                        f"{where}: {subject[key]} is not L2-normalised: "
                        f"{int((off > _NORM_TOL).sum())} of {norms.numel()} rows have a norm "
                        f"outside 1 +- {_NORM_TOL} (worst {float(norms[worst]):.4g})"
                    )
        elif t.numel():
            low, high = int(t.min()), int(t.max())
            if low < 0 or high >= num_classes:
                raise CacheError(
                    f"{where}: {subject[key]} has values outside [0, {num_classes}) "
                    f"(min {low}, max {high})"
                )

    if kind == "train":
        counts = torch.bincount(tensors["labels"], minlength=num_classes)
        for c in range(num_classes):
            if int(counts[c]) != ctx.shots:
                raise CacheError(
                    f"{where}: class {c} ({ctx.classnames[c]!r}) has {int(counts[c])} image(s), "
                    f"but a {ctx.shots}-shot set has exactly {ctx.shots} per class"
                )


def _check_head(raw: Any, where: str) -> None:
    """Everything in a sidecar except the file table."""
    if not isinstance(raw, dict):
        raise CacheError(f"{where}: the top level must be a JSON object, got {_json_type(raw)}")
    # The version comes first: a newer format may rename every other key.
    if "format_version" in raw and not _is_int(raw["format_version"], FORMAT_VERSION):
        raise CacheError(
            f"{where}: format_version {raw['format_version']!r} is not supported; this version "
            f"of hgadapter reads format_version {FORMAT_VERSION}"
        )
    missing = [k for k in _SIDECAR_KEYS if k not in raw]
    if missing:
        raise CacheError(f"{where}: missing key(s) {_quote(missing)}")
    unknown = [k for k in raw if k not in _SIDECAR_KEYS]
    if unknown:
        raise CacheError(
            f"{where}: unknown key(s) {_quote(unknown)}; the sidecar has exactly "
            f"{_quote(_SIDECAR_KEYS)} (free-form metadata belongs in 'meta')"
        )

    classnames = raw["classnames"]
    if not isinstance(classnames, list) or not classnames:
        raise CacheError(f"{where}: classnames must be a non-empty list of strings")
    for i, name in enumerate(classnames):
        if not isinstance(name, str):
            raise CacheError(
                f"{where}: classnames[{i}] must be a string, got {_json_type(name)}"
            )
    duplicates = sorted({n for n in classnames if classnames.count(n) > 1})
    if duplicates:
        raise CacheError(f"{where}: classnames repeats {_quote(duplicates)}")
    if not _is_int(raw["dim"]) or raw["dim"] < 1:
        raise CacheError(f"{where}: dim must be a positive integer, got {raw['dim']!r}")
    scale = raw["logit_scale"]
    if not _is_number(scale) or not math.isfinite(scale) or scale <= 0:
        raise CacheError(f"{where}: logit_scale must be a positive finite number, got {scale!r}")
    if not isinstance(raw["meta"], dict):
        raise CacheError(f"{where}: meta must be a JSON object, got {_json_type(raw['meta'])}")

    entries = raw["train_sets"]
    if not isinstance(entries, list):
        raise CacheError(f"{where}: train_sets must be a list, got {_json_type(entries)}")
    seen_keys: set[tuple[int, int]] = set()
    seen_files: set[str] = set()
    for i, entry in enumerate(entries):
        at = f"{where}: train_sets[{i}]"
        if not isinstance(entry, dict):
            raise CacheError(f"{at} must be a JSON object, got {_json_type(entry)}")
        missing = [k for k in _TRAIN_ENTRY_KEYS if k not in entry]
        unknown = [k for k in entry if k not in _TRAIN_ENTRY_KEYS]
        if missing or unknown:
            raise CacheError(
                f"{at} must have exactly the keys {_quote(_TRAIN_ENTRY_KEYS)}"
                + (f"; missing {_quote(missing)}" if missing else "")
                + (f"; unknown {_quote(unknown)}" if unknown else "")
            )
        for key, low in (("shots", 1), ("seed", None), ("views", 1)):
            value = entry[key]
            if not _is_int(value) or (low is not None and value < low):
                bound = "an integer" if low is None else f"an integer >= {low}"
                raise CacheError(f"{at}.{key} must be {bound}, got {value!r}")
        _check_train_file_name(entry["file"], at)
        indices = entry["indices"]
        if indices is not None and (
            not isinstance(indices, list) or not all(_is_int(j) and j >= 0 for j in indices)
        ):
            raise CacheError(f"{at}.indices must be null or a list of non-negative integers")
        key = (entry["shots"], entry["seed"])
        if key in seen_keys:
            raise CacheError(f"{where}: train_sets lists {_format_keys([key])} twice")
        if entry["file"] in seen_files:
            raise CacheError(f"{where}: train_sets lists the file {entry['file']!r} twice")
        seen_keys.add(key)
        seen_files.add(entry["file"])


def _check_table(raw: dict[str, Any], where: str) -> None:
    """The sidecar's file table: one entry per file, each tensor's dtype and shape."""
    table = raw["files"]
    if not isinstance(table, dict):
        raise CacheError(f"{where}: files must be a JSON object, got {_json_type(table)}")
    kinds = {TEXT_FILE: "text", VAL_FILE: "split", TEST_FILE: "split"}
    kinds.update({e["file"]: "train" for e in raw["train_sets"]})
    missing = [f for f in kinds if f not in table]
    if missing:
        raise CacheError(f"{where}: files has no entry for {_quote(missing)}")
    unknown = [f for f in table if f not in kinds]
    if unknown:
        raise CacheError(
            f"{where}: files lists {_quote(unknown)}, which is neither a split nor a training set"
        )

    ctx = _Context(classnames=raw["classnames"], dim=raw["dim"])
    entries = {e["file"]: e for e in raw["train_sets"]}
    for file, kind in kinds.items():
        at = f"{where}: files[{file!r}]"
        layout = _parse_records(table[file], kind, at)
        file_ctx = _train_context(ctx, entries[file]) if kind == "train" else ctx
        _check_layout(kind, layout, file_ctx, at, {k: repr(k) for k in layout})


def _parse_records(records: Any, kind: str, at: str) -> _Layout:
    keys = tuple(_FILE_KINDS[kind])
    if not isinstance(records, dict) or set(records) != set(keys):
        raise CacheError(f"{at} must map exactly the tensors {_quote(keys)} to dtype and shape")
    layout: _Layout = {}
    for key in keys:
        record = records[key]
        if (
            not isinstance(record, dict)
            or set(record) != {"dtype", "shape"}
            or not isinstance(record["dtype"], str)
            or not isinstance(record["shape"], list)
            or not all(_is_int(n) and n >= 0 for n in record["shape"])
        ):
            raise CacheError(
                f"{at}[{key!r}] must be {{\"dtype\": <name>, \"shape\": [<int>, ...]}}"
            )
        layout[key] = (record["dtype"], tuple(record["shape"]))
    return layout


def _parse_sidecar(raw: Any, where: str) -> dict[str, Any]:
    _check_head(raw, where)
    _check_table(raw, where)
    return raw


def _check_train_file_name(file: Any, at: str) -> None:
    # The name is joined to the cache directory, so it must not reach outside it.
    if (
        not isinstance(file, str)
        or not file.endswith(".safetensors")
        or file.startswith(".")
        or "/" in file
        or "\\" in file
        or file in (TEXT_FILE, VAL_FILE, TEST_FILE)
    ):
        raise CacheError(
            f"{at}.file must be a plain file name ending in .safetensors other than "
            f"{TEXT_FILE}, {VAL_FILE} and {TEST_FILE}, got {file!r}"
        )


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _read_sidecar(directory: Path) -> dict[str, Any]:
    if not directory.exists():
        raise CacheError(f"{directory}: feature cache directory does not exist")
    if not directory.is_dir():
        raise CacheError(f"{directory}: not a directory (a feature cache is a directory)")
    sidecar_path = directory / SIDECAR_NAME
    if not sidecar_path.is_file():
        raise CacheError(
            f"{sidecar_path}: missing, so {directory} is not a feature cache "
            "(see docs/feature-cache.md)"
        )
    try:
        text = sidecar_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CacheError(f"{sidecar_path}: cannot be read ({_one_line(e)})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise CacheError(
            f"{sidecar_path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from None
    return _parse_sidecar(raw, str(sidecar_path))


def _load_file(
    directory: Path, sidecar: dict[str, Any], file: str, kind: str, ctx: _Context
) -> dict[str, torch.Tensor]:
    """Read one validated safetensors file; features come back float32, labels int64."""
    path = directory / file
    where = str(path)
    if not path.is_file():
        raise CacheError(f"{where}: missing (listed in {SIDECAR_NAME})")
    try:
        raw = safetensors.torch.load_file(path)
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise CacheError(f"{where}: not a readable safetensors file ({_one_line(e)})") from None

    keys = tuple(_FILE_KINDS[kind])
    missing = [k for k in keys if k not in raw]
    if missing:
        raise CacheError(
            f"{where}: missing tensor(s) {_quote(missing)}; the file holds {_quote(keys)}"
        )
    unknown = sorted(k for k in raw if k not in keys)
    if unknown:
        raise CacheError(
            f"{where}: unexpected tensor(s) {_quote(unknown)}; the file holds {_quote(keys)}"
        )

    subject = {k: repr(k) for k in keys}
    layout = _layout_of(raw)
    _check_layout(kind, layout, ctx, where, subject)
    # The sidecar's table lets readers check shapes without loading; it must tell the truth.
    recorded = _parse_records(sidecar["files"][file], kind, f"{SIDECAR_NAME} files[{file!r}]")
    for key in keys:
        if layout[key] != recorded[key]:
            raise CacheError(
                f"{where}: {key!r} is {layout[key][0]} {_format_shape(layout[key][1])} but "
                f"{SIDECAR_NAME} records {recorded[key][0]} {_format_shape(recorded[key][1])}"
            )
    tensors = _to_memory(raw, kind)
    _check_values(kind, tensors, ctx, where, subject)
    return tensors


def _to_memory(tensors: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Cast to the in-memory dtypes: float32 features (training math), int64 labels (indexing)."""
    out = {}
    for key, (role, _, _) in _FILE_KINDS[kind].items():
        t = tensors[key]
        out[key] = t.to(torch.float32) if role == "features" else t.to(torch.int64)
    return out


def _layout_of(tensors: dict[str, torch.Tensor]) -> _Layout:
    return {k: (_dtype_name(t.dtype), tuple(t.shape)) for k, t in tensors.items()}


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

# A file to write: its kind and the tensors in their storage dtypes.
_Files = dict[str, tuple[str, dict[str, torch.Tensor]]]


def _build(cache: FeatureCache, where: str) -> tuple[dict[str, Any], _Files]:
    """The sidecar and files for ``cache``, unvalidated (see :func:`_validate_build`)."""
    pos_text = _to_storage(cache.pos_text, "features", where, "pos_text")
    neg_text = _to_storage(cache.neg_text, "features", where, "neg_text")
    if neg_text.untyped_storage().data_ptr() == pos_text.untyped_storage().data_ptr():
        neg_text = neg_text.clone()  # safetensors refuses tensors that share memory in one file
    files: _Files = {TEXT_FILE: ("text", {"pos_text": pos_text, "neg_text": neg_text})}
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
        raise CacheError(f"{where}: meta must be JSON-serialisable ({_one_line(e)})") from None
    classnames = cache.classnames
    scale = cache.logit_scale
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        scale = float(scale)  # e.g. model.logit_scale.exp()
    sidecar = {
        "format_version": FORMAT_VERSION,
        "classnames": list(classnames) if isinstance(classnames, (list, tuple)) else classnames,
        "dim": int(pos_text.shape[-1]) if pos_text.dim() else 1,
        "logit_scale": float(scale) if _is_number(scale) else scale,
        "files": {
            file: {
                key: {"dtype": dtype, "shape": list(shape)}
                for key, (dtype, shape) in _layout_of(tensors).items()
            }
            for file, (_, tensors) in files.items()
        },
        "train_sets": entries,
        "meta": meta,
    }
    return sidecar, files


def _validate_build(sidecar: dict[str, Any], files: _Files, where: str) -> None:
    """Run the load-time checks on a cache about to be written, naming FeatureCache fields."""
    _check_head(sidecar, where)
    ctx = _Context(classnames=sidecar["classnames"], dim=sidecar["dim"])
    entries = {e["file"]: e for e in sidecar["train_sets"]}
    for file, (kind, tensors) in files.items():
        if kind == "text":
            subject = {"pos_text": "pos_text", "neg_text": "neg_text"}
            file_ctx = ctx
        elif kind == "split":
            split = "val" if file == VAL_FILE else "test"
            subject = {"features": f"{split}_features", "labels": f"{split}_labels"}
            file_ctx = ctx
        else:
            entry = entries[file]
            at = f"train_sets[({entry['shots']}, {entry['seed']})]"
            subject = {"features": f"{at}.features", "labels": f"{at}.labels"}
            file_ctx = _train_context(ctx, entry)
        _check_layout(kind, _layout_of(tensors), file_ctx, where, subject)
        _check_values(kind, _to_memory(tensors, kind), file_ctx, where, subject)
    _check_table(sidecar, where)


def _to_storage(t: Any, role: str, where: str, subject: str) -> torch.Tensor:
    """``t`` in its storage dtype: float16 stays, other floats become float32, integers int64.

    Tensors of any other dtype pass through unchanged for the dtype check to reject by name.
    """
    if not isinstance(t, torch.Tensor):
        raise CacheError(f"{where}: {subject} must be a torch.Tensor, got {type(t).__name__}")
    t = t.detach().cpu()
    if role == "features" and t.dtype.is_floating_point and t.dtype != torch.float16:
        t = t.to(torch.float32)
    elif role == "labels" and _is_integer(t.dtype):
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


def _merge_with_existing(
    directory: Path, sidecar: dict[str, Any], files: _Files
) -> tuple[dict[str, Any], _Files]:
    """The merged sidecar and the files still to write, when adding to an existing cache."""
    where = f"cannot add to the feature cache in {directory}"
    try:
        old = _read_sidecar(directory)
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
    ctx = _Context(classnames=old["classnames"], dim=old["dim"])
    # The sidecar records shapes only: new training sets must not sit beside val/test features
    # from a different extraction, so the tensors themselves are compared.
    for file in (TEXT_FILE, VAL_FILE, TEST_FILE):
        kind = files[file][0]
        _require_same(where, file, _load_file(directory, old, file, kind, ctx), files[file])
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
                    f"{where}: its training set {_format_keys([key])} differs from the one being "
                    "saved (views, indices or shapes); pass overwrite=True to replace the cache"
                )
            on_disk = _load_file(directory, old, file, "train", _train_context(ctx, old_entry))
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
    shared = {k: v for k, v in sidecar.items() if k != "train_sets"}
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
    for key, t in _to_memory(tensors, kind).items():
        old = on_disk[key]
        if t.dtype == torch.int64:
            same = torch.equal(old, t)
            detail = "different labels"
        else:
            diff = float((old - t).abs().max()) if t.numel() else 0.0
            same = diff <= _MERGE_ATOL
            detail = f"max abs difference {diff:.3g} > {_MERGE_ATOL}"
        if not same:
            raise CacheError(
                f"{where}: {file} {key!r} on disk differs from the one being saved ({detail}), "
                "so it was extracted differently; pass overwrite=True to replace the cache"
            )


def _write_atomic(target: Path, write: Callable[[Path], Any]) -> None:
    """Write through a temporary file in the target's directory and rename it into place."""
    # A unique name rather than tempfile.mkstemp, whose 0600 mode would make shared caches
    # unreadable to other users; this file gets the usual umask-derived mode.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    """Persist the renames; a no-op where directories cannot be opened (Windows)."""
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


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


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


def _format_keys(keys: list[tuple[int, int]]) -> str:
    return ", ".join(f"(shots={k}, seed={s})" for k, s in keys) or "none"


def _format_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def _quote(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _torch_dtype(name: str) -> torch.dtype | None:
    """The torch dtype of a canonical name ("float32", not the alias "float"), else None."""
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    return dtype if isinstance(dtype, torch.dtype) and _dtype_name(dtype) == name else None


def _is_integer(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _is_int(value: Any, equal_to: int | None = None) -> bool:
    # bool is an int in Python but never a meaningful count, dim or version in JSON.
    ok = isinstance(value, int) and not isinstance(value, bool)
    return ok and (equal_to is None or value == equal_to)


def _plain_int(value: Any) -> Any:
    try:
        return operator.index(value)
    except TypeError:
        return value


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
