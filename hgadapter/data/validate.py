"""The checks of the feature-cache format (docs/feature-cache.md), shared by saving and loading.

Every check runs both when a cache is saved and when it is loaded, so a cache that
:func:`~hgadapter.data.io.save_cache` wrote always loads, and a bad one is never written. The two
readers here (:func:`read_sidecar`, :func:`load_file`) return only what passed the checks.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from hgadapter._io import NotJSONError, strict_json_loads
from hgadapter.data.cache import FILE_KINDS, FORMAT_VERSION, OPTIONAL_KINDS, SIDECAR_NAME, TEST_FILE, TEXT_FILE, VAL_FILE, CacheError, file_keys

# logits s * cos are float32: a scale past this overflows them (CLIP learns s <= 100)
MAX_LOGIT_SCALE = 1e6

CHECKSUMS_KEY = "checksums"  # optional: file name -> "sha256:<hex>" of the file's bytes

_SIDECAR_KEYS = (
    "format_version", "classnames", "dim", "logit_scale", "files", "train_sets", "meta"
)
_TRAIN_ENTRY_KEYS = ("shots", "seed", "file", "views", "indices")

# float16 storage rounds each component to ~5e-4 relative, so the norm of a normalised 1024-d row
# read back from float16 is within ~1e-3 of 1, while an unnormalised CLIP feature is off by far
# more.
_NORM_TOL = 1e-2


@dataclass(frozen=True)
class Context:
    """What a file's tensors are checked against; the train fields apply to training sets only."""

    classnames: list[str]
    dim: int
    shots: int | None = None
    views: int | None = None
    num_indices: int | None = None


def train_context(ctx: Context, entry: dict[str, Any]) -> Context:
    """``ctx`` narrowed to one training set's sidecar ``entry`` (shots, views, number of indices)."""
    indices = entry["indices"]
    return Context(
        classnames=ctx.classnames,
        dim=ctx.dim,
        shots=entry["shots"],
        views=entry["views"],
        num_indices=None if indices is None else len(indices),
    )


# (dtype name, shape) of each tensor of a file, as recorded in the sidecar or read from a tensor.
Layout = dict[str, tuple[str, tuple[int, ...]]]


# A file to write: its kind and the tensors in their storage dtypes.
Files = dict[str, tuple[str, dict[str, torch.Tensor]]]


def check_layout(
    kind: str, layout: Layout, ctx: Context, where: str, subject: dict[str, str]
) -> None:
    """Dtypes, ranks and dimensions of one file's tensors; needs no tensor data."""
    for key, (role, rank, doc_shape) in FILE_KINDS[kind].items():
        dtype_name, shape = layout[key]
        dtype = _torch_dtype(dtype_name)
        if dtype is None:
            raise CacheError(f"{where}: {subject[key]} has unknown dtype {dtype_name!r}")
        if role == "features" and not dtype.is_floating_point:
            raise CacheError(
                f"{where}: {subject[key]} has dtype {dtype_name}; "
                "features must be floating point (float32 or float16)"
            )
        if role == "labels" and not is_integer(dtype):
            raise CacheError(
                f"{where}: {subject[key]} has dtype {dtype_name}; labels must be integer (int64)"
            )
        if len(shape) != rank:
            raise CacheError(
                f"{where}: {subject[key]} has shape {format_shape(shape)}; "
                f"expected rank {rank}, {doc_shape}"
            )
        if role == "features" and shape[-1] != ctx.dim:
            raise CacheError(
                f"{where}: {subject[key]} has d={shape[-1]} but the cache's feature dim is "
                f"{ctx.dim}"
            )

    optional = {k: v for k, v in OPTIONAL_KINDS.get(kind, {}).items() if k in layout}
    if optional and len(optional) != len(OPTIONAL_KINDS[kind]):
        have, need = quote(optional), quote(OPTIONAL_KINDS[kind])
        raise CacheError(f"{where}: holds {have} without the rest of {need}; write all of them or none")
    for key, (_, rank, doc_shape, of) in optional.items():
        dtype_name, shape = layout[key]
        dtype = _torch_dtype(dtype_name)
        if dtype is None or not dtype.is_floating_point:
            raise CacheError(f"{where}: {subject[key]} has dtype {dtype_name}; norms must be floating point (float32)")
        if len(shape) != rank or shape != layout[of][1][:2]:
            raise CacheError(
                f"{where}: {subject[key]} has shape {format_shape(shape)}; expected {doc_shape}, "
                f"one raw norm per prompt of {subject[of]} {format_shape(layout[of][1][:2])}"
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


def check_values(
    kind: str, tensors: dict[str, torch.Tensor], ctx: Context, where: str, subject: dict[str, str]
) -> None:
    """Values of one file's tensors, already cast to float32 (features) and int64 (labels)."""
    num_classes = len(ctx.classnames)
    for key, (role, _, _) in FILE_KINDS[kind].items():
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

    for key in OPTIONAL_KINDS.get(kind, {}):
        t = tensors.get(key)
        if t is None:
            continue
        num_bad = int((~torch.isfinite(t) | (t <= 0)).sum())
        if num_bad:
            raise CacheError(
                f"{where}: {subject[key]} has {num_bad} value(s) that are not finite positive norms "
                "(the raw L2 norm of each prompt's feature before normalisation)"
            )

    if kind == "train":
        counts = torch.bincount(tensors["labels"], minlength=num_classes)
        for c in range(num_classes):
            if int(counts[c]) != ctx.shots:
                raise CacheError(
                    f"{where}: class {c} ({ctx.classnames[c]!r}) has {int(counts[c])} image(s), "
                    f"but a {ctx.shots}-shot set has exactly {ctx.shots} per class"
                )


def check_head(raw: Any, where: str) -> None:
    """Everything in a sidecar except the file table."""
    if not isinstance(raw, dict):
        raise CacheError(f"{where}: the top level must be a JSON object, got {_json_type(raw)}")
    # The version comes first: a newer format may rename every other key.
    if "format_version" in raw and not is_int(raw["format_version"], FORMAT_VERSION):
        raise CacheError(
            f"{where}: format_version {raw['format_version']!r} is not supported; this version "
            f"of hgadapter reads format_version {FORMAT_VERSION}"
        )
    _require_exactly(
        [k for k in raw if k != CHECKSUMS_KEY],  # optional: caches written before it load as before
        _SIDECAR_KEYS,
        missing=lambda names: f"{where}: missing key(s) {names}",
        unknown=lambda names: f"{where}: unknown key(s) {names}; the sidecar has exactly "
        f"{quote(_SIDECAR_KEYS)} (free-form metadata belongs in 'meta')",
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
        raise CacheError(f"{where}: classnames repeats {quote(duplicates)}")
    if not is_int(raw["dim"]) or raw["dim"] < 1:
        raise CacheError(f"{where}: dim must be a positive integer, got {raw['dim']!r}")
    scale = raw["logit_scale"]
    if not is_number(scale) or scale <= 0 or scale > MAX_LOGIT_SCALE or not math.isfinite(scale):  # huge ints: compare before float()
        raise CacheError(
            f"{where}: logit_scale must be a positive number of at most {MAX_LOGIT_SCALE:g} (CLIP's is 100; "
            f"logits are float32), got {str(scale)[:40]}"
        )
    if not 1.0 <= scale <= 1000.0:
        warnings.warn(f"{where}: logit_scale {scale:g} is far from CLIP's 100; check the encoder", stacklevel=2)
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
        missing, unknown = _missing_and_unknown(entry, _TRAIN_ENTRY_KEYS)
        if missing or unknown:
            raise CacheError(
                f"{at} must have exactly the keys {quote(_TRAIN_ENTRY_KEYS)}"
                + (f"; missing {quote(missing)}" if missing else "")
                + (f"; unknown {quote(unknown)}" if unknown else "")
            )
        for key, low in (("shots", 1), ("seed", None), ("views", 1)):
            value = entry[key]
            if not is_int(value) or (low is not None and value < low):
                bound = "an integer" if low is None else f"an integer >= {low}"
                raise CacheError(f"{at}.{key} must be {bound}, got {value!r}")
        _check_train_file_name(entry["file"], at)
        indices = entry["indices"]
        if indices is not None and (
            not isinstance(indices, list) or not all(is_int(j) and j >= 0 for j in indices)
        ):
            raise CacheError(f"{at}.indices must be null or a list of non-negative integers")
        key = (entry["shots"], entry["seed"])
        if key in seen_keys:
            raise CacheError(f"{where}: train_sets lists {format_keys([key])} twice")
        if entry["file"] in seen_files:
            raise CacheError(f"{where}: train_sets lists the file {entry['file']!r} twice")
        seen_keys.add(key)
        seen_files.add(entry["file"])


def check_table(raw: dict[str, Any], where: str) -> None:
    """The sidecar's file table: one entry per file, each tensor's dtype and shape; and the
    optional checksums, one ``sha256:<hex>`` per listed file."""
    table = raw["files"]
    if not isinstance(table, dict):
        raise CacheError(f"{where}: files must be a JSON object, got {_json_type(table)}")
    sums = raw.get(CHECKSUMS_KEY)
    if sums is not None and (
        not isinstance(sums, dict)
        or set(sums) != set(table)
        or not all(isinstance(h, str) and h.startswith("sha256:") and len(h) == 71 for h in sums.values())
    ):
        raise CacheError(f"{where}: {CHECKSUMS_KEY} must map every file of 'files' to \"sha256:<64 hex digits>\"")
    kinds = {TEXT_FILE: "text", VAL_FILE: "split", TEST_FILE: "split"}
    kinds.update({e["file"]: "train" for e in raw["train_sets"]})
    _require_exactly(
        table,
        kinds,
        missing=lambda names: f"{where}: files has no entry for {names}",
        unknown=lambda names: f"{where}: files lists {names}, which is neither a split nor a training set",
    )

    ctx = Context(classnames=raw["classnames"], dim=raw["dim"])
    entries = {e["file"]: e for e in raw["train_sets"]}
    for file, kind in kinds.items():
        at = f"{where}: files[{file!r}]"
        layout = parse_records(table[file], kind, at)
        file_ctx = train_context(ctx, entries[file]) if kind == "train" else ctx
        check_layout(kind, layout, file_ctx, at, {k: repr(k) for k in layout})


def parse_records(records: Any, kind: str, at: str) -> Layout:
    """The layout a sidecar file-table entry records; a CacheError unless it maps exactly this kind's tensors."""
    keys = file_keys(kind, records) if isinstance(records, dict) else tuple(FILE_KINDS[kind])
    if not isinstance(records, dict) or set(records) != set(keys):
        optional = f" (optionally also {quote(OPTIONAL_KINDS[kind])})" if kind in OPTIONAL_KINDS else ""
        raise CacheError(f"{at} must map exactly the tensors {quote(FILE_KINDS[kind])}{optional} to dtype and shape")
    layout: Layout = {}
    for key in keys:
        record = records[key]
        if (
            not isinstance(record, dict)
            or set(record) != {"dtype", "shape"}
            or not isinstance(record["dtype"], str)
            or not isinstance(record["shape"], list)
            or not all(is_int(n) and n >= 0 for n in record["shape"])
        ):
            raise CacheError(
                f"{at}[{key!r}] must be {{\"dtype\": <name>, \"shape\": [<int>, ...]}}"
            )
        layout[key] = (record["dtype"], tuple(record["shape"]))
    return layout


def _parse_sidecar(raw: Any, where: str) -> dict[str, Any]:
    check_head(raw, where)
    check_table(raw, where)
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


def read_sidecar(directory: Path) -> dict[str, Any]:
    """The parsed and fully checked ``cache.json`` of ``directory``; a CacheError names what is wrong."""
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
        raise CacheError(f"{sidecar_path}: cannot be read ({one_line(e)})") from None
    try:
        raw = strict_json_loads(text)
    except json.JSONDecodeError as e:
        raise CacheError(
            f"{sidecar_path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from None
    except NotJSONError as e:
        raise CacheError(f"{sidecar_path}: not valid JSON ({e})") from None
    return _parse_sidecar(raw, str(sidecar_path))


def load_file(
    directory: Path, sidecar: dict[str, Any], file: str, kind: str, ctx: Context
) -> dict[str, torch.Tensor]:
    """Read one validated safetensors file; features come back float32, labels int64."""
    path = directory / file
    where = str(path)
    if not path.is_file():
        raise CacheError(f"{where}: missing (listed in {SIDECAR_NAME})")
    expected = (sidecar.get(CHECKSUMS_KEY) or {}).get(file)
    data = None  # with a checksum the bytes are read once, for the check and the tensors alike
    if expected is not None:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CacheError(f"{where}: not a readable safetensors file ({one_line(e)})") from None
        if bytes_checksum(data) != expected:
            raise CacheError(
                f"{where}: its bytes do not match the checksum {SIDECAR_NAME} records (the file is damaged "
                "or was changed after the cache was written); restore it or extract the cache again"
            )
    try:
        # a cache written before checksums has nothing to verify: read it mapped
        raw = safetensors.torch.load_file(path) if data is None else safetensors.torch.load(data)
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise CacheError(f"{where}: not a readable safetensors file ({one_line(e)})") from None

    keys = file_keys(kind, raw)
    _require_exactly(
        sorted(raw),
        keys,
        missing=lambda names: f"{where}: missing tensor(s) {names}; the file holds {quote(keys)}",
        unknown=lambda names: f"{where}: unexpected tensor(s) {names}; the file holds {quote(keys)}",
    )

    subject = {k: repr(k) for k in keys}
    layout = layout_of(raw)
    check_layout(kind, layout, ctx, where, subject)
    # The sidecar's table lets readers check shapes without loading; it must tell the truth.
    recorded = parse_records(sidecar["files"][file], kind, f"{SIDECAR_NAME} files[{file!r}]")
    if set(recorded) != set(keys):
        raise CacheError(f"{where}: holds {quote(keys)} but {SIDECAR_NAME} records {quote(recorded)}")
    for key in keys:
        if layout[key] != recorded[key]:
            raise CacheError(
                f"{where}: {key!r} is {layout[key][0]} {format_shape(layout[key][1])} but "
                f"{SIDECAR_NAME} records {recorded[key][0]} {format_shape(recorded[key][1])}"
            )
    tensors = to_memory(raw, kind)
    check_values(kind, tensors, ctx, where, subject)
    return tensors


def bytes_checksum(data: bytes) -> str:
    """``sha256:<hex>`` of a tensor file's bytes, as ``cache.json`` records it."""
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def file_checksum(path: Path) -> str:
    """:func:`bytes_checksum` of the file at ``path``, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def to_memory(tensors: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Cast to the in-memory dtypes: float32 features (training math), int64 labels (indexing)."""
    out = {}
    for key, (role, _, _) in FILE_KINDS[kind].items():
        t = tensors[key]
        out[key] = t.to(torch.float32) if role == "features" else t.to(torch.int64)
    for key in OPTIONAL_KINDS.get(kind, {}):
        if key in tensors:
            out[key] = tensors[key].to(torch.float32)
    return out


def layout_of(tensors: dict[str, torch.Tensor]) -> Layout:
    """The ``(dtype name, shape)`` of each tensor, in the form the sidecar records."""
    return {k: (dtype_name(t.dtype), tuple(t.shape)) for k, t in tensors.items()}


# --------------------------------------------------------------------------------------------
# Predicates and message pieces shared by the cache modules
# --------------------------------------------------------------------------------------------


def _missing_and_unknown(found: Iterable[str], expected: Iterable[str]) -> tuple[list[str], list[str]]:
    """The expected names absent from ``found`` and the found names not expected, in their orders."""
    found, expected = list(found), list(expected)
    return [k for k in expected if k not in found], [k for k in found if k not in expected]


def _require_exactly(
    found: Iterable[str], expected: Iterable[str], *, missing: Callable[[str], str], unknown: Callable[[str], str]
) -> None:
    """Raise ``CacheError(missing(names))`` if expected names are absent, else ``unknown(names)`` for extra ones."""
    absent, extra = _missing_and_unknown(found, expected)
    if absent:
        raise CacheError(missing(quote(absent)))
    if extra:
        raise CacheError(unknown(quote(extra)))


def format_keys(keys: list[tuple[int, int]]) -> str:
    """``(shots=K, seed=S), ...`` for messages, or ``none``."""
    return ", ".join(f"(shots={k}, seed={s})" for k, s in keys) or "none"


def format_shape(shape: tuple[int, ...]) -> str:
    """A shape as Python writes a tuple: ``(3,)``, ``(2, 5)``."""
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def quote(names: Iterable[str]) -> str:
    """Names as a comma-separated list of their reprs."""
    return ", ".join(repr(n) for n in names)


def dtype_name(dtype: torch.dtype) -> str:
    """``float32`` for ``torch.float32``: the name the sidecar records."""
    return str(dtype).removeprefix("torch.")


def _torch_dtype(name: str) -> torch.dtype | None:
    """The torch dtype of a canonical name ("float32", not the alias "float"), else None."""
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    return dtype if isinstance(dtype, torch.dtype) and dtype_name(dtype) == name else None


def is_integer(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` holds integers (bool does not count)."""
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def is_int(value: Any, equal_to: int | None = None) -> bool:
    """Whether a JSON value is an int (not a bool), optionally equal to ``equal_to``."""
    # bool is an int in Python but never a meaningful count, dim or version in JSON.
    ok = isinstance(value, int) and not isinstance(value, bool)
    return ok and (equal_to is None or value == equal_to)


def is_number(value: Any) -> bool:
    """Whether a JSON value is a real number (not a bool)."""
    return isinstance(value, Real) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def one_line(error: BaseException) -> str:
    """An exception's message with its whitespace collapsed, for one-line errors."""
    return " ".join(str(error).split())
