"""The classifier-folder format (docs/predict.md): what ``config.json`` and ``model.safetensors``
may hold, and the one validator every reader of a classifier folder runs.

A classifier folder is user input, whatever wrote it: it may be truncated, hand-edited, copied
from elsewhere or replaced by a FIFO. :func:`read_folder` (``Classifier.from_pretrained``,
``hgadapter predict``) and :func:`check_config` and :func:`check_tensors` (``hgadapter export``, before it writes) answer
every violation with one line of a :class:`ClassifierError` that names the file and the key, as
:mod:`hgadapter.data.validate` does for feature caches. What passes builds a head whose logits are
finite for finite features.

The format is two tables, so that a field added later is one entry here (and the probe tests in
``tests/test_classifier_format.py`` corrupt it without being told):

- :data:`CONFIG_FIELDS`: every key of ``config.json``, as a :class:`Field` (its JSON type, range,
  choices, nested fields). Keys not in the table are kept and not read.
- :data:`HEAD_KINDS`: per head kind (:mod:`hgadapter.heads`), its spec's scalars and the
  tensors it holds, with symbolic shapes (``C`` classes, ``d`` feature dim, other letters free
  but equal wherever they recur in one head) and roles (finite floats, or class labels).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from hgadapter._io import NotJSONError, read_regular_file, strict_json_loads
from hgadapter.data.validate import MAX_LOGIT_SCALE, dtype_name, format_shape
from hgadapter.errors import UserError
from hgadapter.extract.images import PROCESSOR_CLASSES
from hgadapter.heads import QUERY_ADAPTERS, QueryAdapter

__all__ = [
    "ClassifierError",
    "FORMAT",
    "FORMAT_VERSION",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CARD_NAME",
    "CONFIG_FIELDS",
    "REQUIRED_FIELDS",
    "HEAD_KINDS",
    "Field",
    "Int",
    "Number",
    "Str",
    "Bool",
    "Const",
    "List",
    "Object",
    "AnyJSON",
    "HeadSpec",
    "TensorSpec",
    "HeadKind",
    "check_config",
    "check_tensors",
    "read_config",
    "read_tensors",
    "read_folder",
    "is_classifier_folder",
]

FORMAT = "hgadapter-classifier"  # config.json "format": what tells a reader the folder is ours
FORMAT_VERSION = 1  # bump when a key changes meaning; readers refuse newer versions
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"

# Bounds on what a reader accepts: far beyond any real classifier, short of exhausting memory.
MAX_CONFIG_BYTES = 64 << 20  # config.json (ImageNet-21k's class names are ~1 MB)
MAX_WEIGHTS_BYTES = 8 << 30  # model.safetensors (Tip-Adapter's 16-shot ImageNet keys are 64 MB)
MAX_JSON_DEPTH = 64  # nesting of config.json (a sum of sums of heads is ~10 deep)
MAX_DIM = 1 << 16  # feature dimension d
MAX_CLASSES = 1 << 20
MAX_IMAGE_SIDE = 4096  # preprocessing resize and crop, in pixels (CLIPs use 224-448)
MAX_NAME_CHARS = 4096  # a class name, an encoder id, a version string
# mean / std scale pixels in [0, 1]: a std below this makes normalised pixels overflow float32
MIN_STD, MAX_PIXEL_STAT = 1e-6, 1e6
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class ClassifierError(UserError):
    """A classifier folder or run cannot be read, or a classifier cannot do what was asked."""


# -- describing JSON values in messages ----------------------------------------------------------


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def show(value: Any) -> str:
    """A JSON value, short and on one line, for a message: ``'abc'``, ``12``, ``an integer of
    5000 digits``, ``a list``."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        if value.bit_length() > 64:  # str() of a huge int is slow, and refused past 4300 digits
            return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 42 else text[:40] + "...'"
    return _json_type(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_finite_float(value: Any) -> float | None:
    """A JSON number as a finite float, or None (not a number, NaN, +-inf, or beyond float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer past 1e308
        return None
    return number if math.isfinite(number) else None


def _bad(where: str, at: str, what: str, value: Any) -> ClassifierError:
    return ClassifierError(f"{where}: {at} must be {what}, got {show(value)}")


# -- the field types of the schema ---------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One JSON value of the format. ``check`` returns the value (normalised) or raises."""

    nullable: bool = field(default=False, kw_only=True)  # null is allowed too

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, value: Any, at: str, where: str) -> Any:
        if value is None and self.nullable:
            return None
        return self._check(value, at, where)

    def _check(self, value: Any, at: str, where: str) -> Any:
        raise NotImplementedError

    def _fail(self, value: Any, at: str, where: str) -> ClassifierError:
        return _bad(where, at, self.describe() + (" or null" if self.nullable else ""), value)


_INT64 = (-(1 << 63), (1 << 63) - 1)


@dataclass(frozen=True)
class Int(Field):
    """An integer (not a boolean) in ``[low, high]``; an unset bound is int64's."""

    low: int | None = None
    high: int | None = None

    def describe(self) -> str:
        if self.high is not None:
            return f"an integer in [{_INT64[0] if self.low is None else self.low}, {self.high}]"
        return "a 64-bit integer" + (f" >= {self.low}" if self.low is not None else "")

    def _check(self, value, at, where):
        # compared as Python ints: exact, and no overflow for a huge one
        low = _INT64[0] if self.low is None else self.low
        high = _INT64[1] if self.high is None else self.high
        if not _is_int(value) or not low <= value <= high:
            raise self._fail(value, at, where)
        return value


@dataclass(frozen=True)
class Number(Field):
    """A finite real number in ``[low, high]`` (``(low, high]`` with ``open_low``), as a float."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False

    def describe(self) -> str:
        if self.low is None and self.high is None:
            return "a finite number"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"a finite number in {'(' if self.open_low or self.low is None else '['}{low}, {high}{']' if self.high is not None else ')'}"

    def _check(self, value, at, where):
        number = _as_finite_float(value)
        if (
            number is None
            or (self.low is not None and (number < self.low or (self.open_low and number == self.low)))
            or (self.high is not None and number > self.high)
        ):
            raise self._fail(value, at, where)
        return number


@dataclass(frozen=True)
class Str(Field):
    """A string of at most ``max_chars`` (non-empty with ``nonempty``), one of ``choices`` if given."""

    choices: tuple[str, ...] | None = None
    nonempty: bool = False
    max_chars: int = MAX_NAME_CHARS

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return f"a{' non-empty' if self.nonempty else ''} string of at most {self.max_chars} characters"

    def _check(self, value, at, where):
        if (
            not isinstance(value, str)
            or (self.nonempty and not value)
            or len(value) > self.max_chars
            or (self.choices is not None and value not in self.choices)
        ):
            raise self._fail(value, at, where)
        return value


@dataclass(frozen=True)
class Bool(Field):
    def describe(self) -> str:
        return "true or false"

    def _check(self, value, at, where):
        if not isinstance(value, bool):
            raise self._fail(value, at, where)
        return value


@dataclass(frozen=True)
class Const(Field):
    value: Any = None

    def describe(self) -> str:
        return json.dumps(self.value)

    def _check(self, value, at, where):
        if type(value) is not type(self.value) or value != self.value:
            raise self._fail(value, at, where)
        return value


@dataclass(frozen=True)
class List(Field):
    """A list of ``item`` values: ``length`` exactly, or ``min_len`` to ``max_len``; ``unique``."""

    item: Field = field(default_factory=lambda: AnyJSON())
    length: int | None = None
    min_len: int = 0
    max_len: int | None = None
    unique: bool = False

    def describe(self) -> str:
        if self.length is not None:
            count = f"{self.length}"
        elif self.max_len is not None:
            count = f"{self.min_len} to {self.max_len}"
        else:
            count = f"at least {self.min_len}" if self.min_len else "any number of"
        return f"a list of {count} items, each {self.item.describe()}" + (", all different" if self.unique else "")

    def _check(self, value, at, where):
        if not isinstance(value, list):
            raise self._fail(value, at, where)
        n = len(value)
        if (self.length is not None and n != self.length) or n < self.min_len or (self.max_len is not None and n > self.max_len):
            raise ClassifierError(f"{where}: {at} must be {self.describe()}, got a list of {n}")
        items = [self.item.check(v, f"{at}[{i}]", where) for i, v in enumerate(value)]
        if self.unique:
            seen: set = set()
            repeated = next((v for v in items if v in seen or seen.add(v)), None)  # type: ignore[func-returns-value]
            if repeated is not None:
                raise ClassifierError(f"{where}: {at} repeats {show(repeated)}; its items must all differ")
        return items


@dataclass(frozen=True)
class Object(Field):
    """A JSON object whose keys in ``fields`` are checked (those in ``required`` must be there);
    other keys are kept unread (a newer writer's additions; ``format_version`` guards meaning)."""

    fields: Mapping[str, Field] = field(default_factory=dict)
    required: tuple[str, ...] = ()

    def describe(self) -> str:
        return "a JSON object" + (f" with {', '.join(repr(k) for k in self.required)}" if self.required else "")

    def _check(self, value, at, where):
        if not isinstance(value, dict):
            raise self._fail(value, at, where)
        missing = [k for k in self.required if k not in value]
        if missing:
            raise ClassifierError(f"{where}: {at or 'the top level'} lacks {', '.join(repr(k) for k in missing)}")
        out = dict(value)
        for key, spec in self.fields.items():
            if key in value:
                out[key] = spec.check(value[key], f"{at}.{key}" if at else key, where)
        return out


@dataclass(frozen=True)
class AnyJSON(Field):
    """Any JSON value (free-form: the run's ``params``, the prompts' record); its depth is bounded
    when the file is read."""

    def describe(self) -> str:
        return "any JSON value"

    def _check(self, value, at, where):
        return value


@dataclass(frozen=True)
class HeadSpec(Field):
    """A head's spec (:meth:`hgadapter.heads.Head.spec`): ``kind``, one of :data:`HEAD_KINDS`,
    and that kind's scalars."""

    def describe(self) -> str:
        return f"a head spec (an object with 'kind', one of {', '.join(repr(k) for k in HEAD_KINDS)})"

    def _check(self, value, at, where):
        if not isinstance(value, dict):
            raise self._fail(value, at, where)
        kind = value.get("kind")
        if not isinstance(kind, str) or kind not in HEAD_KINDS:
            raise ClassifierError(f"{where}: {at}.kind is {show(kind)}, not a known head kind; available: {list(HEAD_KINDS)}")
        schema = HEAD_KINDS[kind]
        out = Object(schema.spec, required=schema.required).check(value, at, where)
        if schema.check is not None:
            schema.check(out, at, where)
        return out


# -- heads: their scalars and tensors ------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One accepted layout of a head's tensor.

    Attributes:
        shape: one entry per dimension: ``C`` (the classes), ``d`` (the feature dim), a free
            letter bound by the first tensor that uses it (``N`` cache entries, ``h`` hidden units),
            or a fixed size (an int: the layers of a query adapter, which its spec sizes).
        role: ``float`` (floating point, every value finite), ``label`` (integer class indices
            in ``[0, C)``) or ``channel`` (integer feature-channel indices in ``[0, d)``).
    """

    shape: tuple[str | int, ...]
    role: str = "float"

    def describe(self, sizes: Mapping[str, int]) -> str:
        dims = ", ".join(f"{s}={sizes[s]}" if s in sizes else str(s) for s in self.shape)
        kind = {"float": "floating point", "label": "integer class labels", "channel": "integer channel indices"}[self.role]
        return f"({dims}{',' if len(self.shape) == 1 else ''}) {kind}"


@dataclass(frozen=True)
class HeadKind:
    """What one head kind's spec and tensors hold.

    Attributes:
        spec: the spec's keys besides ``kind``, as fields.
        required: the spec keys that must be present (the others have defaults in the head).
        tensors: tensor name -> its accepted layouts (the first that fits is taken).
        optional: the tensors that may be absent.
        parts: the spec's ``parts`` are heads, whose tensors are named ``parts.<i>.<name>``.
        check: a check across the spec's keys (after each key passed its own).
    """

    spec: Mapping[str, Field]
    required: tuple[str, ...]
    tensors: Mapping[str, tuple[TensorSpec, ...]]
    optional: tuple[str, ...] = ()
    parts: bool = False
    check: Callable[[dict, str, str], None] | None = None
    spec_tensors: Callable[[Mapping[str, Any]], Mapping[str, tuple[TensorSpec, ...]]] | None = None  # more tensors, sized by the spec
    tensor_check: Callable[[Mapping[str, torch.Tensor], int], str | None] | None = None  # across one head's tensors (names without prefix), with d


LOGIT_SCALE = Number(0.0, MAX_LOGIT_SCALE, open_low=True)  # logits s * cos are float32
_SCALAR = Number(-1e6, 1e6)  # a weight on logits (alpha, a sum's weights): finite and float32-safe
_TEXT = (TensorSpec(("C", "d")),)


def _same_count(spec: dict, at: str, where: str) -> None:
    if len(spec["weights"]) != len(spec["parts"]):
        raise ClassifierError(
            f"{where}: {at} has {len(spec['weights'])} weights for {len(spec['parts'])} parts; a sum head needs one weight per part"
        )


def _cache_tensors(tensors: Mapping[str, torch.Tensor], dim: int) -> str | None:
    """A cache's keys are d-dimensional, or as long as its ``channels`` (APE); a cache without a
    text classifier holds float values (its labels alone would give it no class count)."""
    if "text" not in tensors and tensors["values"].ndim == 1:
        return "a cache head without tensor 'text' needs float 'values' (N, C), not integer labels"
    width = int(tensors["keys"].shape[1])
    if "channels" in tensors:
        if width != int(tensors["channels"].shape[0]):
            return f"tensor 'keys' has {width} channels but 'channels' lists {int(tensors['channels'].shape[0])}; they must agree"
    elif width != dim:
        return f"tensor 'keys' is (N, {width}); without 'channels' the cache head needs (N, d={dim})"
    return None


def _query_adapter_tensors(spec: Mapping[str, Any]) -> dict[str, tuple[TensorSpec, ...]]:
    """PROTO-CLIP's query adapter's weights, named and sized as the adapter its spec describes builds them."""
    a = spec["adapter"]
    with torch.device("meta"):  # shapes only: no memory for a large one
        adapter = QueryAdapter(kind=a["kind"], dim=a["dim"], width=a.get("width", 16))
    return {f"adapter.{name}": (TensorSpec(tuple(t.shape)),) for name, t in adapter.state_dict().items()}


HEAD_KINDS: dict[str, HeadKind] = {
    "text": HeadKind(spec={"logit_scale": LOGIT_SCALE}, required=("logit_scale",), tensors={"text": _TEXT}),
    "linear": HeadKind(
        spec={"normalize": Bool()},
        required=(),
        tensors={"weight": (TensorSpec(("C", "d")),), "bias": (TensorSpec(("C",)),)},
        optional=("bias",),
    ),
    "cache": HeadKind(
        spec={"alpha": _SCALAR, "beta": Number(0.0, 1e6), "logit_scale": LOGIT_SCALE, "normalize": Bool()},
        required=("alpha", "beta", "logit_scale"),
        tensors={
            "text": _TEXT,
            "channels": (TensorSpec(("k",), role="channel"),),  # APE: the affinity on these channels
            "keys": (TensorSpec(("N", "d")), TensorSpec(("N", "k"))),  # (N, k) on APE's channels
            "values": (TensorSpec(("N", "C")), TensorSpec(("N",), role="label")),
        },
        optional=("text", "channels"),  # no text: a cache term alone (APE-T's sum)
        tensor_check=_cache_tensors,
    ),
    "feature_mlp": HeadKind(
        spec={"ratio": Number(-1e3, 1e3), "logit_scale": LOGIT_SCALE},
        required=("ratio", "logit_scale"),
        tensors={"w1": (TensorSpec(("h", "d")),), "w2": (TensorSpec(("d", "h")),), "text": _TEXT},
    ),
    "prototype": HeadKind(  # PROTO-CLIP
        spec={
            "alpha": Number(0.0, 1.0),
            "beta": Number(0.0, 1e6),
            "adapter": Object(
                {"kind": Str(choices=QUERY_ADAPTERS), "dim": Int(1, MAX_DIM), "width": Int(1, 4096)},
                required=("kind", "dim"),
            ),
        },
        required=("alpha", "beta", "adapter"),
        tensors={"image_proto": _TEXT, "text_proto": _TEXT},
        spec_tensors=_query_adapter_tensors,
    ),
    "sum": HeadKind(
        spec={"weights": List(_SCALAR, min_len=1, max_len=64), "parts": List(HeadSpec(), min_len=1, max_len=64)},
        required=("weights", "parts"),
        tensors={},
        parts=True,
        check=_same_count,
    ),
}


# -- config.json -------------------------------------------------------------------------------

PREPROCESS_FIELDS: dict[str, Field] = {
    "resize": Int(1, MAX_IMAGE_SIDE),  # shorter side, pixels
    "crop": List(Int(1, MAX_IMAGE_SIDE), length=2),  # [height, width], pixels
    "mean": List(Number(-MAX_PIXEL_STAT, MAX_PIXEL_STAT), length=3),
    "std": List(Number(MIN_STD, MAX_PIXEL_STAT), length=3),
    "resample": Int(0, 5),  # PIL code (hgadapter.extract.augment)
}

@dataclass(frozen=True)
class ProcessorSettings(Field):
    """A family's image-processor settings (a ``preprocessor_config.json``'s keys, which differ by
    processor class): the keys that decide memory and pixel values are checked (sizes bounded by
    ``MAX_IMAGE_SIDE``, patch budgets, finite means, stds of at least ``MIN_STD``, a PIL
    resampling code); the rest are flags the processor class itself validates."""

    def describe(self) -> str:
        return "a JSON object of image-processor settings"

    def _check(self, value, at, where):
        if not isinstance(value, dict):
            raise self._fail(value, at, where)
        side = Int(1, MAX_IMAGE_SIDE, nullable=True)
        checks: dict[str, Field] = {
            "size": Object({k: side for k in ("shortest_edge", "longest_edge", "height", "width")}, nullable=True),
            "crop_size": Object({k: side for k in ("height", "width")}, nullable=True),
            "image_mean": List(Number(-MAX_PIXEL_STAT, MAX_PIXEL_STAT), length=3, nullable=True),
            "image_std": List(Number(MIN_STD, MAX_PIXEL_STAT), length=3, nullable=True),
            "rescale_factor": Number(-MAX_PIXEL_STAT, MAX_PIXEL_STAT, nullable=True),
            "resample": Int(0, 5, nullable=True),
            "max_num_patches": Int(1, (MAX_IMAGE_SIDE // 8) ** 2, nullable=True),  # NaFlex's patch budget
            "patch_size": Int(1, MAX_IMAGE_SIDE, nullable=True),
        }
        out = dict(value)
        for key, spec in checks.items():
            if key in value:
                out[key] = spec.check(value[key], f"{at}.{key}", where)
        return out


ENCODER_FIELDS: dict[str, Field] = {
    "id": Str(nonempty=True),  # hub id, local path or open_clip:<arch>/<tag>
    "revision": Str(nullable=True),
    "backend": Str(choices=("hf", "open_clip")),
    "dim": Int(1, MAX_DIM),
    "preprocess": Object(PREPROCESS_FIELDS, required=("resize", "crop", "mean", "std")),
    "context_length": Int(1, 1 << 20),
    "precision": Str(nonempty=True, max_chars=16),  # create_encoder names the valid ones
    # encoder families (hgadapter.extract.families): how images and prompts were encoded
    "family": Str(nonempty=True, max_chars=64),
    "processor": Object(
        {"class": Str(choices=PROCESSOR_CLASSES), "settings": ProcessorSettings()}, required=("class", "settings")
    ),
    "text": Object(
        {
            "padding": Str(choices=("max_length",)),
            "max_length": Int(1, 1 << 20),
            "attention_mask": Bool(),
            "lowercase": Bool(),
            "tokenizer": Str(max_chars=64),
        }
    ),
    "logit_scale": Number(0.0, MAX_LOGIT_SCALE, open_low=True, nullable=True),
    "logit_bias": Number(-MAX_LOGIT_SCALE, MAX_LOGIT_SCALE, nullable=True),  # SigLIP's
}

RUN_FIELDS: dict[str, Field] = {
    "method": Str(nullable=True),
    "variant": Str(nullable=True),
    "shots": Int(0, nullable=True),
    "seed": Int(nullable=True),
    "val_acc": Number(0.0, 100.0, nullable=True),
    "test_acc": Number(0.0, 100.0, nullable=True),
    "dataset": Str(nullable=True),
    "backbone": Str(nullable=True),
    "epochs": Int(0, nullable=True),
    "experiment": Str(nullable=True),
    "params": Object(nullable=True),
    "config_hash": Str(nullable=True),
    "synthetic": Bool(),
}

CONFIG_FIELDS: dict[str, Field] = {
    "format": Const(FORMAT),
    "format_version": Int(1, FORMAT_VERSION),
    "hgadapter_version": Str(nullable=True),
    "classnames": List(Str(), min_len=1, max_len=MAX_CLASSES, unique=True),  # in logit order
    "dim": Int(1, MAX_DIM),  # d, the feature dimension the head reads
    "head": HeadSpec(),
    "logit_scale": Number(0.0, MAX_LOGIT_SCALE, open_low=True, nullable=True),  # the cache's
    "synthetic": Bool(),
    "encoder": Object(ENCODER_FIELDS, required=("id",), nullable=True),
    "prompts": AnyJSON(),
    "features": Str(nullable=True),
    "hparams": Object(nullable=True),
    "run": Object(RUN_FIELDS),
}
REQUIRED_FIELDS = ("format", "format_version", "classnames", "dim", "head")


def _json_depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [v for x in level if isinstance(x, (dict, list)) for v in (x.values() if isinstance(x, dict) else x)]
    return depth


def check_config(raw: Any, *, where: str = CONFIG_NAME) -> dict:
    """The checked ``config.json`` (a new dict; ``run`` defaults to ``{}``).

    Raises:
        ClassifierError: one line naming the key and what it must be.
    """
    if not isinstance(raw, dict):
        raise ClassifierError(f"{where}: must be a JSON object, got {_json_type(raw)}")
    if raw.get("format") != FORMAT:  # first: it may be another program's config.json
        raise ClassifierError(f"{where}: not an hgadapter classifier (format {show(raw.get('format'))}, expected {FORMAT!r})")
    version = raw.get("format_version")
    if _is_int(version) and version > FORMAT_VERSION:  # first too: a newer format may change every key
        raise ClassifierError(
            f"{where}: classifier format version {show(version)} is newer than this hgadapter reads ({FORMAT_VERSION}); upgrade hgadapter"
        )
    config = Object(CONFIG_FIELDS, required=REQUIRED_FIELDS).check(raw, "", where)
    encoder = config.get("encoder")
    if encoder and "dim" in encoder and encoder["dim"] != config["dim"]:
        raise ClassifierError(f"{where}: encoder.dim is {encoder['dim']} but dim is {config['dim']}; they must agree")
    heads = [config["head"]]
    for head in heads:  # the head and, depth first, its parts
        heads.extend(head.get("parts") or [])
        if head["kind"] == "prototype" and head["adapter"]["dim"] != config["dim"]:
            raise ClassifierError(
                f"{where}: the prototype head's adapter.dim is {head['adapter']['dim']} but dim is {config['dim']}; they must agree"
            )
    config.setdefault("run", {})
    return config


# -- model.safetensors -------------------------------------------------------------------------


def _layout(t: torch.Tensor) -> str:
    return f"{dtype_name(t.dtype)} {format_shape(tuple(t.shape))}"


def _fits(spec: TensorSpec, t: torch.Tensor, sizes: dict[str, int]) -> bool:
    if t.dtype not in (_FLOAT_DTYPES if spec.role == "float" else _LABEL_DTYPES) or t.ndim != len(spec.shape):
        return False
    bound = dict(sizes)
    for symbol, n in zip(spec.shape, t.shape):
        if (symbol != n) if isinstance(symbol, int) else (bound.setdefault(symbol, n) != n):
            return False
    sizes.update(bound)
    return True


def check_tensors(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], *, where: str = WEIGHTS_NAME) -> dict[str, torch.Tensor]:
    """The head's tensors checked against a checked ``config`` (:func:`check_config`): exactly the
    names its head kinds hold, the shapes and dtypes they need, finite floats and labels in
    ``[0, C)``. Labels come back int64, floats as they were.

    Raises:
        ClassifierError: one line naming the tensor and what it must be.
    """
    num_classes, dim = len(config["classnames"]), config["dim"]
    expected: dict[str, tuple[tuple[TensorSpec, ...], bool, str, str]] = {}  # name -> (layouts, optional, head, kind)

    def walk(spec: Mapping[str, Any], prefix: str) -> None:
        schema = HEAD_KINDS[spec["kind"]]
        more = schema.spec_tensors(spec) if schema.spec_tensors is not None else {}
        for name, layouts in {**schema.tensors, **more}.items():
            expected[prefix + name] = (layouts, name in schema.optional, prefix, spec["kind"])
        if schema.parts:
            for i, part in enumerate(spec["parts"]):
                walk(part, f"{prefix}parts.{i}.")

    walk(config["head"], "")
    missing = [name for name, (_, optional, _, _) in expected.items() if not optional and name not in tensors]
    unknown = sorted(name for name in tensors if name not in expected)
    if missing:
        raise ClassifierError(f"{where}: lacks tensor(s) {', '.join(map(repr, missing))} that the {config['head']['kind']} head needs")
    if unknown:
        raise ClassifierError(f"{where}: holds tensor(s) {', '.join(map(repr, unknown[:5]))} that no part of the head uses")
    out: dict[str, torch.Tensor] = {}
    sizes_by_head: dict[str, dict[str, int]] = {}
    for name, (layouts, _, head, kind) in expected.items():
        if name not in tensors:
            continue
        t = tensors[name]
        sizes = sizes_by_head.setdefault(head, {"C": num_classes, "d": dim})
        spec = next((s for s in layouts if _fits(s, t, sizes)), None)
        if spec is None:
            wanted = " or ".join(s.describe(sizes) for s in layouts)
            raise ClassifierError(f"{where}: tensor {name!r} is {_layout(t)}; the {kind} head needs {wanted}")
        if spec.role == "float":
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ClassifierError(f"{where}: tensor {name!r} has {bad} non-finite value(s) (NaN/Inf)")
            out[name] = t
        elif spec.role == "channel":
            t = t.to(torch.int64)
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= dim):
                raise ClassifierError(
                    f"{where}: tensor {name!r} holds feature channels outside [0, {dim}) (min {int(t.min())}, max {int(t.max())})"
                )
            out[name] = t
        else:
            t = t.to(torch.int64)
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
                raise ClassifierError(
                    f"{where}: tensor {name!r} holds class labels outside [0, {num_classes}) (min {int(t.min())}, max {int(t.max())})"
                )
            out[name] = t
    heads: dict[str, str] = {head: kind for _, (_, _, head, kind) in expected.items()}
    for head, kind in heads.items():
        check = HEAD_KINDS[kind].tensor_check
        if check is not None:
            own = {name[len(head):]: t for name, t in out.items() if name.startswith(head) and "." not in name[len(head):]}
            problem = check(own, dim)
            if problem:
                raise ClassifierError(f"{where}: {problem}")
    return out


# -- reading a folder --------------------------------------------------------------------------


def read_json(path: str | Path, *, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """A JSON file that is user input: a regular file of bounded size, UTF-8, strict JSON (no NaN),
    nested at most :data:`MAX_JSON_DEPTH` deep.

    Raises:
        FileNotFoundError: there is no such file (the caller says what that means).
        ClassifierError: anything else.
    """
    try:
        data = read_regular_file(path, max_bytes=max_bytes)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ClassifierError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ClassifierError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        raw = strict_json_loads(text)
    except json.JSONDecodeError as err:
        raise ClassifierError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    except ValueError as err:  # NotJSONError (NaN, too deep), and Python's limit on integer digits
        reason = str(err) if isinstance(err, NotJSONError) else "an integer with thousands of digits"
        raise ClassifierError(f"{path}: not valid JSON ({reason})") from None
    if _json_depth(raw) > MAX_JSON_DEPTH:
        raise ClassifierError(f"{path}: nested more than {MAX_JSON_DEPTH} levels deep; not a file hgadapter wrote")
    return raw


def read_config(path: str | Path) -> dict:
    """The checked ``config.json`` at ``path``."""
    path = Path(path)
    try:
        raw = read_json(path)
    except FileNotFoundError:
        raise ClassifierError(f"{path.parent}: no {CONFIG_NAME}; is it a folder written by `hgadapter export`?") from None
    return check_config(raw, where=str(path))


def read_tensors(path: str | Path, *, max_bytes: int = MAX_WEIGHTS_BYTES) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file that is user input (a regular file of bounded size);
    a truncated, empty or pickled file is a :class:`ClassifierError`."""
    try:
        data = read_regular_file(path, max_bytes=max_bytes)
    except OSError as err:
        raise ClassifierError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        return safetensors.torch.load(data)
    except (safetensors.SafetensorError, ValueError, RuntimeError, TypeError) as err:
        text = " ".join(str(err).split())[:200]
        raise ClassifierError(f"{path}: not a readable safetensors file ({text})") from None


def read_folder(
    folder: str | Path, *, config_path: str | Path | None = None, weights_path: str | Path | None = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    """A classifier folder's checked ``config.json`` and tensors (``config_path`` /
    ``weights_path``: where they are when not in ``folder``, e.g. a hub download)."""
    folder = Path(folder)
    config_path = Path(config_path) if config_path is not None else folder / CONFIG_NAME
    weights_path = Path(weights_path) if weights_path is not None else folder / WEIGHTS_NAME
    config = read_config(config_path)
    try:
        tensors = read_tensors(weights_path)
    except ClassifierError:
        if not os.path.lexists(weights_path):
            raise ClassifierError(f"{folder}: no {WEIGHTS_NAME} beside its {CONFIG_NAME}") from None
        raise
    return config, check_tensors(config, tensors, where=str(weights_path))


def is_classifier_folder(folder: str | Path) -> bool:
    """Whether ``folder``'s ``config.json`` says it is a classifier (whatever else is wrong with
    it): the one kind of folder ``export`` and ``save_pretrained`` replace."""
    try:
        raw = read_json(Path(folder) / CONFIG_NAME)
    except (FileNotFoundError, ClassifierError):
        return False
    return isinstance(raw, dict) and raw.get("format") == FORMAT
