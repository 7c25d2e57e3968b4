"""Finished runs as records: what ``hgadapter report``, ``hgadapter compare`` and ``viz`` read.

Every run directory written by ``hgadapter run``, ``sweep``, ``compare`` or ``demo`` holds a
``metrics.json`` (one record) and, for trained methods, a ``history.json`` (one entry per epoch);
the names of a run directory's files are defined here once (``*_FILE``). This module finds and
reads them, and holds the one aggregation over seeds every table and figure uses
(:func:`seed_values`, then :func:`mean_std`). It imports neither torch nor dgl, so plotting and
reporting stay light.

A record is a flat JSON object. Keys every record has:

- ``method``: registry name (``hegraphadapter`` is the full method, ``hegraphadapter:t`` a
  variant, ``tip_adapter`` a baseline; see ``hgadapter compare --help``);
- ``shots``, ``seed``: the few-shot training set;
- ``val_acc``, ``test_acc``: accuracy in percent (validation chose the hyper-parameters; the test
  split was read once, afterwards).

Keys a record may have: ``dataset`` (``imagenet``, ``caltech101``, ...; ``synthetic``),
``backbone`` (``RN50``, ``ViT-B/16``, ...), ``variant``, ``experiment`` (the sweep's name),
``params`` (dotted config key -> value of a sweep grid point, e.g. a fusion weight),
``targets`` (domain-generalisation dataset -> test accuracy of the same fitted model),
``synthetic``, ``config_hash`` (the run hash a sweep resumes by), ``config_id`` (the same without
the seed: the run's configuration, which the report groups by; :func:`hgadapter.runspec.config_id`),
``epochs``, ``hparams``, ``trainable_params`` (methods trained by
gradient descent: the number of trained parameter values), and the same timings for every method:
``train_seconds`` (the training loop, per-epoch validation included), ``select_seconds``
(choosing hyper-parameters after training), ``fit_seconds`` (the whole fit), ``threads`` and
``device`` (where the fit ran), ``val_from_test`` (``true`` when the cache drew validation from
the test images, ``--val-source test``; reports flag such runs).
:func:`load_records` adds ``run_dir``, the directory the record came from.
"""

from __future__ import annotations

import json
import math
import operator
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hgadapter._io import NotJSONError, strict_json_loads
from hgadapter.errors import UserError

__all__ = [
    "METRICS_FILE",
    "HISTORY_FILE",
    "CONFIG_FILE",
    "CLASSES_FILE",
    "NODES_FILE",
    "ADAPTER_FILE",
    "LOG_FILE",
    "HEAD_FILE",
    "HEAD_SPEC_FILE",
    "REQUIRED_KEYS",
    "RecordError",
    "load_records",
    "load_record",
    "load_history",
    "mean_std",
    "seed_values",
    "is_number",
    "format_accuracy",
    "backbone_of_encoder",
    "encoder_id",
]

# The files of a run directory (hgadapter.runner writes them; metrics.json last).
METRICS_FILE = "metrics.json"  # the run's record; its presence marks a finished run
HISTORY_FILE = "history.json"  # per-epoch loss, lr and validation accuracy
CONFIG_FILE = "config.yaml"  # resolved method config, package versions, git commit
CLASSES_FILE = "classes.json"  # the C class names
NODES_FILE = "nodes.safetensors"  # HeGraphAdapter's initial and adapted node features
ADAPTER_FILE = "adapter.safetensors"  # trained adapter weights
LOG_FILE = "log.txt"  # the run's log lines
HEAD_FILE = "head.safetensors"  # the fitted head's tensors (its state_dict; hgadapter.heads)
HEAD_SPEC_FILE = "head.json"  # the head's spec and the features it expects (what `hgadapter export` reads)
REQUIRED_KEYS: tuple[str, ...] = ("method", "shots", "seed", "val_acc", "test_acc")


class RecordError(UserError):
    """A run directory's metrics or history file is missing or malformed."""


def _read_json(path: Path) -> Any:
    try:
        return strict_json_loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecordError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not valid JSON (line {exc.lineno}); re-run that run or delete its directory") from None
    except NotJSONError as exc:
        raise RecordError(f"{path}: not valid JSON ({exc}); re-run that run or delete its directory") from None


def load_record(run_dir: str | Path) -> dict[str, Any]:
    """The record in ``run_dir/metrics.json``, checked for the keys every record has."""
    path = Path(run_dir) / METRICS_FILE
    record = _read_json(path)
    if not isinstance(record, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise RecordError(f"{path}: missing keys {missing}; a run record needs {list(REQUIRED_KEYS)}")
    for key in ("val_acc", "test_acc"):
        value = record[key]
        if value is not None and not is_number(value):  # null: that split was empty (see the record's notes)
            raise RecordError(f"{path}: {key} must be a finite number (percent) or null, got {_short(value)}")
    # the fields the report groups by: the wrong type is a one-line error here, not a traceback there
    for key, kinds, what in _TYPED_FIELDS:
        if key in record and record[key] is not None and not isinstance(record[key], kinds):
            raise RecordError(f"{path}: {key} must be {what}, got {type(record[key]).__name__} {_short(record[key])}")
    if isinstance(record["shots"], bool) or not isinstance(record["shots"], int) or record["shots"] < 1:
        raise RecordError(f"{path}: shots must be a positive integer, got {_short(record['shots'])}")
    if isinstance(record.get("targets"), dict) and not all(v is None or is_number(v) for v in record["targets"].values()):
        raise RecordError(f"{path}: targets must map each target dataset to a number (percent)")
    return record


_TYPED_FIELDS: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    ("method", str, "a method name (string)"),
    ("dataset", str, "a dataset name (string)"),
    ("backbone", str, "a backbone name (string)"),
    ("experiment", str, "an experiment name (string)"),
    ("params", dict, "a mapping of grid keys to values"),
    ("targets", dict, "a mapping of target datasets to test accuracies"),
    ("hparams", dict, "a mapping"),
)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_records(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Every run record under ``runs_dir`` (searched recursively), sorted by run directory.

    Records come from run directories (``metrics.json``), whichever command wrote them. Each
    record gets ``run_dir``: its directory relative to ``runs_dir`` (``"."`` when ``runs_dir`` is
    itself a run). Directories whose name starts with ``.`` (temporary or in-progress output) are
    skipped.

    Raises:
        RecordError: ``runs_dir`` is not a directory, holds no run, or a metrics file is malformed.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise RecordError(f"{root}: not a directory; give a folder that holds run directories (each with {METRICS_FILE})")
    records = []
    for path in sorted(root.rglob(METRICS_FILE)):
        rel = path.parent.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        record = load_record(path.parent)
        record["run_dir"] = rel.as_posix() or "."
        records.append(record)
    if not records:
        raise RecordError(f"{root}: no run found (no {METRICS_FILE} below it); run `hgadapter sweep` or `hgadapter run` first")
    return records


def load_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per-epoch records (``epoch``, ``loss``, ``lr``, ``val_acc``) of a trained run; ``[]`` if none."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    history = _read_json(path)
    if not isinstance(history, list) or not all(isinstance(h, dict) and "epoch" in h for h in history):
        raise RecordError(f"{path}: expected a list of per-epoch objects with an 'epoch' key")
    return history


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool (JSON's numbers as records hold them)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_accuracy(value: Any, width: int = 0) -> str:
    """An accuracy of a record (percent) with two decimals, right-aligned in ``width``; ``n/a`` for
    ``null`` (an empty split: the record's ``notes`` say which)."""
    return f"{value:{width}.2f}" if is_number(value) else f"{'n/a':>{width}}"


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (n - 1 denominator; 0 for one value) and count.

    The one mean ± std over seeds of the project: tables (:mod:`hgadapter.report`, and through it
    ``hgadapter compare`` and the demo) and figures (:mod:`viz`) all call it.
    """
    data: Sequence[float] = [float(v) for v in values]
    if not data:
        raise ValueError("mean_std of no values")
    std = statistics.stdev(data) if len(data) > 1 else 0.0
    return statistics.fmean(data), std, len(data)


def seed_values(
    records: Iterable[Mapping[str, Any]],
    value: Callable[[Mapping[str, Any]], Any] = operator.itemgetter("test_acc"),
) -> list[float]:
    """One number per seed of ``records`` (a group that differs only in seed), in first-seen order.

    A seed run twice (say by a few-shot sweep and an ablation sweep) counts once, as the mean of
    its runs, so it cannot weigh twice in :func:`mean_std`. ``value(record)`` gives the number
    (default: ``test_acc``); records for which it is not a finite number are left out.
    """
    by_seed: dict[Any, list[float]] = {}
    for record in records:
        number = value(record)
        if is_number(number):
            by_seed.setdefault(record.get("seed"), []).append(float(number))
    return [statistics.fmean(v) for v in by_seed.values()]


_VIT_WIDTHS = {"base": "B", "large": "L", "huge": "H"}


def encoder_id(meta: Any) -> str | None:
    """The encoder id a cache's free-form ``meta`` records: ``meta["encoder"]["id"]`` (what
    extraction writes), or ``meta["encoder"]`` itself when it is a string; ``None`` otherwise."""
    encoder = meta.get("encoder") if isinstance(meta, Mapping) else None
    if isinstance(encoder, Mapping):
        encoder = encoder.get("id")
    return encoder if isinstance(encoder, str) else None


def backbone_of_encoder(encoder_id: str | None) -> str | None:
    """The paper's backbone name for a CLIP encoder id, ``None`` when the id does not say.

    ``openai/clip-vit-base-patch16`` -> ``ViT-B/16``; ``open_clip:RN50/openai`` -> ``RN50``;
    ``open_clip:ViT-B-32/openai`` -> ``ViT-B/32``; ``...-patch14-336`` -> ``ViT-L/14@336px``.
    A local folder or a synthetic encoder gives ``None``.
    """
    if not isinstance(encoder_id, str):
        return None
    text = encoder_id.removeprefix("open_clip:")
    if match := re.search(r"(?:^|[/:])(RN\d+(?:x\d+)?)(?:[/@-]|$)", text):
        return match.group(1)
    if match := re.search(r"ViT-([BLH])-(\d+)", text):
        return f"ViT-{match.group(1)}/{match.group(2)}"
    if match := re.search(r"clip-vit-(base|large|huge)-patch(\d+)(-336)?", text):
        name = f"ViT-{_VIT_WIDTHS[match.group(1)]}/{match.group(2)}"
        return name + ("@336px" if match.group(3) else "")
    return None
