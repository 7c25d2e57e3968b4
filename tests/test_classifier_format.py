"""Probes of the classifier-folder format (hgadapter/classifier_format.py), in the spirit of the
corrupt-cache tests (tests/data/test_cache.py): real exported folders, one per head kind, damaged
in every way the format's tables say a value can be wrong, plus damaged files (truncated, empty,
pickled, folders). Every case must end in one line of a ClassifierError or in a classifier whose
logits are finite: never a traceback or a silent NaN. (A FIFO under a file's name would hang
these in-process probes if it were ever read again, holding the GIL in safetensors' Rust code:
tests/test_classifier.py tries those in a subprocess with a timeout.)

The corruptions are generated from the schema tables (CONFIG_FIELDS, HEAD_KINDS), so a field
added there later is probed without a change here; and a key that `export` writes without a table
entry fails test_every_key_an_export_writes_is_in_the_schema.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_methods import quick

from hgadapter.classifier import Classifier, export_run
from hgadapter.classifier_format import (
    CONFIG_FIELDS,
    CONFIG_NAME,
    HEAD_KINDS,
    REQUIRED_FIELDS,
    WEIGHTS_NAME,
    AnyJSON,
    Bool,
    ClassifierError,
    Const,
    Field,
    HeadSpec,
    Int,
    List,
    Number,
    Object,
    Str,
)
from hgadapter.data.synthetic import build_synthetic_task
from hgadapter.heads import CacheHead, FeatureMLPHead, LinearHead, PrototypeHead, QueryAdapter, list_heads
from hgadapter.methods import create_method
from hgadapter.runner import run_method

# Fast methods on a synthetic task, and heads that only slower methods return (a linear probe, CLIP-Adapter,
# HeGraphAdapter's cache of integer labels), built from their parts (FOLDERS).
METHODS = {"zero_shot": "text", "tip_adapter": "cache", "gda": "sum"}
FOLDERS = [*METHODS, "linear", "feature_mlp", "cache_labels", "cache_channels", "prototype"]
DIM = 16

# What extraction records for a CLIP (Encoder.meta()); a synthetic run has none, so the tip_adapter
# folder gets this one, and the encoder's fields are probed like any other.
ENCODER = {
    "id": "openai/clip-vit-base-patch16",
    "revision": "57c216476eefef5ab752ec549e440a49ae4ae5f3",
    "backend": "hf",
    "dim": DIM,
    "preprocess": {"resize": 224, "crop": [224, 224], "mean": [0.481, 0.458, 0.408], "std": [0.269, 0.261, 0.276], "resample": 3},
    "context_length": 77,
    "precision": "fp32",
}
INF = "@@1e999@@"  # written as the JSON text 1e999, which Python reads as inf


def outcome(folder: Path, features: torch.Tensor) -> str:
    """``"error"`` (one-line ClassifierError) or ``"ok"`` (finite logits); anything else fails."""
    try:
        logits = Classifier.from_pretrained(folder).predict_features(features).logits
    except ClassifierError as err:
        message = str(err)
        assert message and "\n" not in message, message
        return "error"
    assert torch.isfinite(logits).all(), "silent non-finite logits"
    return "ok"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier_format")
    cache = build_synthetic_task(num_classes=5, dim=DIM, num_families=1, semantic_rank=8, shots=(2,), seeds=(1,), test_per_class=3)
    folders: dict[str, Path] = {}
    for name in METHODS:
        run_method(create_method(name, overrides=quick(name)), cache, shots=2, seed=1, out_dir=root / name, device="cpu", progress=False)
        export_run(root / name, root / f"clf_{name}")
        folders[name] = root / f"clf_{name}"
    # The methods that return these heads train for seconds: the heads from their parts, saved as
    # export saves them.
    base = Classifier.from_pretrained(folders["zero_shot"])
    tip = Classifier.from_pretrained(folders["tip_adapter"]).head
    g = torch.Generator().manual_seed(0)
    heads = {
        "cache_labels": CacheHead(
            text=tip.text, keys=tip.keys, values=tip.values.argmax(dim=1), alpha=2.0, beta=5.0, logit_scale=100.0, normalize=True
        ),
        "linear": LinearHead(weight=torch.randn(5, DIM, generator=g), bias=torch.randn(5, generator=g)),
        "feature_mlp": FeatureMLPHead(
            w1=torch.randn(4, DIM, generator=g), w2=torch.randn(DIM, 4, generator=g), ratio=0.2, text=base.head.text, logit_scale=100.0
        ),
        # APE's cache: the affinity on 8 of the 16 channels
        "cache_channels": CacheHead(
            text=tip.text, keys=torch.nn.functional.normalize(tip.keys[:, :8], dim=-1), values=tip.values, channels=torch.arange(8),
            alpha=2.0, beta=5.0, logit_scale=100.0, normalize=True,
        ),
        # PROTO-CLIP: prototypes and a conv query adapter, whose weights the format sizes from its spec
        "prototype": PrototypeHead(
            image_proto=torch.nn.functional.normalize(torch.randn(5, DIM, generator=g), dim=-1), text_proto=base.head.text,
            alpha=0.5, beta=5.0, adapter=QueryAdapter(kind="conv-2x", dim=DIM, width=4),
        ),
    }
    for kind, head in heads.items():
        Classifier(config={**base.config, "head": head.spec()}, head=head).save_pretrained(root / f"clf_{kind}")
        folders[kind] = root / f"clf_{kind}"
    config = json.loads((folders["tip_adapter"] / CONFIG_NAME).read_text())
    (folders["tip_adapter"] / CONFIG_NAME).write_text(json.dumps({**config, "encoder": ENCODER}))
    return {"root": root, "cache": cache, "folders": folders}


# -- corruptions from the schema ---------------------------------------------------------------


def bad_values(field: Field) -> list[tuple[str, Any]]:
    """Values ``field`` must refuse, derived from its type and bounds."""
    if isinstance(field, AnyJSON):
        return []
    out: list[tuple[str, Any]] = [] if field.nullable else [("null", None)]
    if isinstance(field, Int):
        out += [("text", "abc"), ("a float", 1.5), ("true", True), ("a 400-digit integer", 10**400), ("a list", [])]
        out += [("below the range", field.low - 1)] if field.low is not None else []
        out += [("above the range", field.high + 1)] if field.high is not None else []
    elif isinstance(field, Number):
        out += [("text", "abc"), ("true", True), ("1e999", INF), ("-1e999", "-" + INF), ("a 400-digit integer", 10**400)]
        if field.low is not None:
            out.append(("below the range", field.low if field.open_low else field.low - 1))
        if field.high is not None:
            out.append(("above the range", field.high * 2 + 1))
    elif isinstance(field, Str):
        out += [("a number", 5), ("a list", ["a"]), ("too long", "x" * (field.max_chars + 1))]
        out += [("empty", "")] if field.nonempty else []
        out += [("not a choice", "nope")] if field.choices else []
    elif isinstance(field, Bool):
        out += [("text", "yes"), ("a number", 1)]
    elif isinstance(field, Const):
        out += [("another value", "other"), ("a number", 1)]
    elif isinstance(field, List):
        out += [("text", "abc"), ("an object", {})]
        if field.length is not None:
            out.append(("one item too few", "@short"))
        elif field.min_len:
            out.append(("empty", []))
        out += [("a repeated item", "@repeat")] if field.unique else []
    elif isinstance(field, Object):
        out += [("text", "abc"), ("a list", [])]
    elif isinstance(field, HeadSpec):
        out += [("a list", []), ("an unknown kind", {"kind": "nope"}), ("no kind", {})]
    return out


def schema_paths(value: Any, fields: dict[str, Field], required: tuple[str, ...], path: tuple = ()) -> Iterator[tuple[tuple, Field, bool]]:
    """(path, field, required) of every schema-known value present in ``value``, recursively."""
    for key, field in fields.items():
        if key not in value:
            continue
        here = (*path, key)
        yield here, field, key in required
        inner = value[key]
        if isinstance(field, Object) and isinstance(inner, dict):
            yield from schema_paths(inner, dict(field.fields), field.required, here)
        elif isinstance(field, HeadSpec) and isinstance(inner, dict):
            kind = HEAD_KINDS[inner["kind"]]
            yield from schema_paths(inner, dict(kind.spec), kind.required, here)
        elif isinstance(field, List) and isinstance(inner, list) and inner:
            yield (*here, 0), field.item, True
            if isinstance(field.item, HeadSpec):  # a sum's parts: each part's scalars too
                for i, part in enumerate(inner):
                    kind = HEAD_KINDS[part["kind"]]
                    yield from schema_paths(part, dict(kind.spec), kind.required, (*here, i))


def _set(config: dict, path: tuple, value: Any) -> None:
    target = config
    for key in path[:-1]:
        target = target[key]
    old = target[path[-1]]
    if value == "@short":
        value = old[:-1]
    elif value == "@repeat":
        value = [old[0], *old]
    target[path[-1]] = value


def _write_config(folder: Path, config: dict) -> None:
    text = json.dumps(config)
    (folder / CONFIG_NAME).write_text(text.replace(f'"-{INF}"', "-1e999").replace(f'"{INF}"', "1e999"))


Corruption = tuple[str, Callable[[Path], None], bool]  # label, how to damage a copy, must it be refused


def config_corruptions(config: dict, *, head_only: bool = False) -> Iterator[Corruption]:
    for path, field, required in schema_paths(config, CONFIG_FIELDS, REQUIRED_FIELDS):
        if head_only and path[0] != "head":
            continue
        where = ".".join(map(str, path))
        for label, value in bad_values(field):
            def damage(folder: Path, path=path, value=value) -> None:
                bad = copy.deepcopy(config)
                _set(bad, path, value)
                _write_config(folder, bad)

            yield f"{where} {label}", damage, True
        if isinstance(path[-1], str):
            def remove(folder: Path, path=path) -> None:
                bad = copy.deepcopy(config)
                target = bad
                for key in path[:-1]:
                    target = target[key]
                del target[path[-1]]
                _write_config(folder, bad)

            yield f"{where} removed", remove, required


def raw_config_corruptions(text: str) -> Iterator[Corruption]:
    def write(content: bytes) -> Callable[[Path], None]:
        return lambda folder: (folder / CONFIG_NAME).write_bytes(content)

    config = json.loads(text)
    deep = copy.deepcopy(config)
    deep["prompts"] = json.loads("[" * 200 + "]" * 200)
    yield "config empty", write(b""), True
    yield "config a list", write(b"[]"), True
    yield "config truncated", write(text[: len(text) // 2].encode()), True
    yield "config not UTF-8", write(b'{"format": "\xff\xfe"}'), True
    yield "config UTF-16", write(text.encode("utf-16")), True
    yield "config NaN", write(text.replace('"dim": ', '"dim": NaN, "x": ', 1).encode()), True
    yield "config 5000-digit dim", write(text.replace(f'"dim": {config["dim"]}', '"dim": ' + "9" * 5000, 1).encode()), True
    yield "config nested 200 deep", write(json.dumps(deep).encode()), True
    yield "config a folder", lambda folder: ((folder / CONFIG_NAME).unlink(), (folder / CONFIG_NAME).mkdir()), True
    yield "config missing", lambda folder: (folder / CONFIG_NAME).unlink(), True


def tensor_corruptions(tensors: dict[str, torch.Tensor], optional: set[str]) -> Iterator[Corruption]:
    def write(new: dict[str, torch.Tensor]) -> Callable[[Path], None]:
        return lambda folder: save_file({k: v.contiguous() for k, v in new.items()}, folder / WEIGHTS_NAME)

    for name, t in tensors.items():
        def replaced(value: torch.Tensor, name=name) -> Callable[[Path], None]:
            return write({**tensors, name: value})

        if t.dtype.is_floating_point:
            for label, fill in (("NaN", float("nan")), ("Inf", float("inf"))):
                bad = t.clone()
                bad.view(-1)[0] = fill
                yield f"{name} {label}", replaced(bad), True
            yield f"{name} huge values", replaced(torch.full_like(t, 3e38)), False  # finite: refused or finite logits
            yield f"{name} as int32", replaced(t.to(torch.int32)), True
            yield f"{name} as float64", replaced(t.double()), False  # another float width is fine
        else:
            yield f"{name} label 99", replaced(torch.full_like(t, 99)), True
            yield f"{name} label -1", replaced(torch.full_like(t, -1)), True
            yield f"{name} as float", replaced(t.float()), True
        yield f"{name} as bool", replaced(t.bool()), True
        if t.ndim == 2 and t.shape[0] != t.shape[1]:
            yield f"{name} transposed", replaced(t.T), True
        yield f"{name} one row short", replaced(t[1:]), True
        yield f"{name} one more dimension", replaced(t[None]), True
        rest = {k: v for k, v in tensors.items() if k != name}
        yield f"{name} missing", write(rest), name not in optional
    yield "an extra tensor", write({**tensors, "junk": torch.zeros(2)}), True


def file_corruptions(data: bytes) -> Iterator[Corruption]:
    def write(content: bytes) -> Callable[[Path], None]:
        return lambda folder: (folder / WEIGHTS_NAME).write_bytes(content)

    def pickled(folder: Path) -> None:
        torch.save({"text": torch.zeros(2, 2)}, folder / WEIGHTS_NAME)

    yield "weights zero bytes", write(b""), True
    yield "weights truncated", write(data[: len(data) // 2]), True
    yield "weights header only", write(data[:8]), True
    yield "weights header claims 2**62 bytes", write((1 << 62).to_bytes(8, "little") + data[8:]), True
    yield "weights garbage header", write(data[:8] + b"\x00" * (len(data) - 8)), True
    yield "weights pickled", pickled, True
    yield "weights a folder", lambda folder: ((folder / WEIGHTS_NAME).unlink(), (folder / WEIGHTS_NAME).mkdir()), True
    yield "weights missing", lambda folder: (folder / WEIGHTS_NAME).unlink(), True


def all_corruptions(folder: Path, *, head_only: bool = False) -> list[Corruption]:
    """Every corruption of ``folder``; with ``head_only``, of its head (spec and tensors) alone."""
    config = json.loads((folder / CONFIG_NAME).read_text())
    tensors = load_file(folder / WEIGHTS_NAME)
    optional = {name for name in tensors if any(name.endswith(o) for k in HEAD_KINDS.values() for o in k.optional)}
    cases = [*config_corruptions(config, head_only=head_only), *tensor_corruptions(tensors, optional)]
    if not head_only:
        cases += [*raw_config_corruptions((folder / CONFIG_NAME).read_text()), *file_corruptions((folder / WEIGHTS_NAME).read_bytes())]
    return cases


def probe_all(folder: Path, features: torch.Tensor, scratch: Path, *, head_only: bool = False) -> tuple[int, list[str]]:
    """Damage a copy of ``folder`` in every way; the failures (empty when every case behaved)."""
    failures = []
    cases = all_corruptions(folder, head_only=head_only)
    for i, (label, damage, refused) in enumerate(cases):
        copy_dir = shutil.copytree(folder, scratch / f"case{i}")
        damage(copy_dir)
        try:
            result = outcome(copy_dir, features)
        except Exception as err:  # noqa: BLE001 - a probe reports every kind of failure at once
            failures.append(f"{label}: {type(err).__name__}: {err}")
            continue
        if refused and result != "error":
            failures.append(f"{label}: accepted, but it is invalid")
    return len(cases), failures


@pytest.mark.parametrize("name", FOLDERS)
def test_every_corruption_is_a_one_line_error_or_a_correct_result(world, name, tmp_path):
    """Every key of config.json and every file for one folder (the one with an encoder entry);
    the head's scalars and tensors for each head kind."""
    folder = world["folders"][name]
    assert outcome(folder, world["cache"].test_features) == "ok"  # the undamaged folder loads
    full = name == "tip_adapter"
    count, failures = probe_all(folder, world["cache"].test_features, tmp_path, head_only=not full)
    assert count >= (250 if full else 20), count
    assert not failures, "\n".join(failures)


def test_a_damaged_folder_names_the_file_and_the_key(world, tmp_path):
    folder = shutil.copytree(world["folders"]["tip_adapter"], tmp_path / "clf")
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["encoder"]["preprocess"]["std"] = [0.2, 0, 0.3]
    _write_config(folder, config)
    with pytest.raises(ClassifierError, match=r"config\.json: encoder\.preprocess\.std\[1\] must be a finite number in \[1e-06, 1e\+06\], got 0$"):
        Classifier.from_pretrained(folder)
    config["encoder"]["preprocess"]["std"][1] = 0.2
    config["encoder"]["preprocess"]["resize"] = 1e6
    _write_config(folder, config)
    with pytest.raises(ClassifierError, match=r"encoder\.preprocess\.resize must be an integer in \[1, 4096\], got 1000000\.0"):
        Classifier.from_pretrained(folder)


def test_every_registered_head_kind_has_an_entry_in_the_format():
    assert set(HEAD_KINDS) == set(list_heads())


def _undeclared(value: Any, fields: dict[str, Field], path: str) -> Iterator[str]:
    for key, inner in value.items():
        field = fields.get(key)
        if field is None:
            yield f"{path}{key}"
        elif isinstance(field, Object) and field.fields and isinstance(inner, dict):
            yield from _undeclared(inner, dict(field.fields), f"{path}{key}.")
        elif isinstance(field, HeadSpec):
            for part in [inner, *inner.get("parts", [])]:
                yield from _undeclared({k: v for k, v in part.items() if k not in ("kind", "parts")}, dict(HEAD_KINDS[part["kind"]].spec), f"{path}{key}.")


def test_every_key_an_export_writes_is_in_the_schema(world):
    """A key written without an entry in CONFIG_FIELDS / HEAD_KINDS would be neither checked
    when loaded nor probed above."""
    for name, folder in world["folders"].items():
        config = json.loads((folder / CONFIG_NAME).read_text())
        assert list(_undeclared(config, CONFIG_FIELDS, "")) == [], name
