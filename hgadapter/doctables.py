"""The results tables of README.md and docs/*.md, generated from committed run records.

A hand-typed result goes stale the day a default changes, so every results table in the
documentation sits between two markers and is written by this module from run records that are
committed with it::

    <!-- table:synthetic_fewshot -->
    (generated: do not edit; `make docs-tables` rewrites it)
    <!-- /table:synthetic_fewshot -->

``docs/tables.yaml`` (the manifest) says which record files feed which table and how the table is
laid out; its header documents every key. Three commands::

    python -m hgadapter.doctables                 # rewrite every table (make docs-tables)
    python -m hgadapter.doctables --check         # exit 1 and show the difference if one is stale
    python -m hgadapter.doctables --collect runs/demo --out docs/results/demo.jsonl

``--collect`` turns finished run directories (:func:`hgadapter.records.load_records`) into a
records file, one JSON object per line. The development suite's files
(``experiments/suite/results/*.jsonl``, written by ``experiments/suite/choices.py``) are read as
they are: ``task``, ``val`` and ``test`` there mean ``dataset``, ``val_acc`` and ``test_acc``.

Precedence: a table's record set lists files in order, and a later record with the same
(dataset, method, shots, seed) replaces an earlier one (and the same label, in tables whose rows
are labels); so a re-measured baseline is one more file at the end of the list. Means over seeds
are :func:`hgadapter.records.mean_std`'s; method names are the display names of
``experiments/paper_results.yaml`` (:class:`hgadapter.paper_results.PaperResults`). Imports neither
torch nor dgl.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hgadapter._io import atomic_write_text, read_yaml, strict_json_loads
from hgadapter.errors import UserError
from hgadapter.records import is_number, load_records, mean_std, seed_values

__all__ = [
    "DocTablesError",
    "MANIFEST",
    "DOC_GLOBS",
    "Source",
    "TableSpec",
    "Manifest",
    "Record",
    "load_manifest",
    "read_records",
    "select_records",
    "render_table",
    "labels_table",
    "update_text",
    "update_docs",
    "collect_records",
    "main",
]

MANIFEST = "docs/tables.yaml"  # relative to the repository root
DOC_GLOBS: tuple[str, ...] = ("README.md", "docs/*.md")  # the files whose markers are filled
ROWS_KINDS = ("methods", "labels")
COLUMN_KINDS = ("shots", "datasets", "splits")
VALUES = ("test", "val", "val/test")
_MARKER = re.compile(r"<!-- table:([A-Za-z0-9_.-]+) -->\n(.*?)<!-- /table:\1 -->", re.S)
_OPEN = re.compile(r"<!-- table:([A-Za-z0-9_.-]+) -->")
_CLOSE = re.compile(r"<!-- /table:([A-Za-z0-9_.-]+) -->")
_COLLECT_KEYS = ("dataset", "method", "shots", "seed", "val_acc", "test_acc", "experiment", "fit_seconds", "config_hash", "run_dir")
DO_NOT_EDIT = "<!-- generated from run records by `make docs-tables` (docs/tables.yaml); edit the records or the manifest, not this table -->"


class DocTablesError(UserError):
    """The manifest, a records file or a document's table markers are malformed."""


# --------------------------------------------------------------------------------------------
# The manifest


@dataclass(frozen=True)
class Source:
    """One records file of a record set and the records of it that count."""

    file: str  # path relative to the repository root
    where: Mapping[str, Any] = field(default_factory=dict)  # record key -> the value it must have


@dataclass(frozen=True)
class RowSpec:
    """One row of a ``rows: labels`` table: a (method, label) pair and the name it shows."""

    method: str  # registry name
    label: str  # the records' ``label`` (choices.py --label)
    name: str  # the text in the first column


@dataclass(frozen=True)
class TableSpec:
    """How one table is made (the keys of a ``tables.NAME`` entry of the manifest)."""

    name: str  # the marker name: <!-- table:NAME -->
    records: str  # a record set of the manifest
    rows: str = "methods"  # "methods" (one row per method) or "labels" (one row per choices.py label)
    columns: str = "shots"  # "shots", "datasets" (one shot count) or "splits" (test and val)
    methods: tuple[str, ...] = ()  # rows: methods: these, in this order (default: all, paper order)
    method: str | None = None  # rows: labels: the method whose labels are the rows
    label_rows: tuple[RowSpec, ...] = ()  # rows: labels: explicit rows (default: every label, first seen)
    shots: tuple[int, ...] = ()  # the shot counts to use (default: all in the records)
    datasets: tuple[str, ...] = ()  # the datasets (tasks) to use (default: all, first seen)
    value: str = "test"  # "test", "val" or "val/test" (both, in one cell)
    dataset_columns: bool = True  # rows: labels: a column per dataset before the per-K columns
    average: bool = False  # columns: datasets: an average column
    bold: bool = False  # bold the best mean of each column
    config_column: bool = False  # a column naming the config file that produced the row
    what: str = ""  # the caption's first words (default: from `value`, e.g. "Test accuracy (%)")
    caption: str = ""  # a sentence after the generated one


@dataclass(frozen=True)
class Manifest:
    path: Path
    root: Path  # the repository root: record files and documents are relative to it
    record_sets: Mapping[str, tuple[Source, ...]]
    tables: Mapping[str, TableSpec]


_TABLE_KEYS = ("records", "rows", "columns", "method", "shots", "datasets", "value", "dataset_columns", "average", "bold", "config_column", "what", "caption")


def _fail(path: Path, where: str, message: str) -> DocTablesError:
    return DocTablesError(f"{path}: {where}: {message}")


def _strings(path: Path, where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(path, where, f"expected a list of names, got {value!r}")
    return tuple(value)


def _flag(path: Path, where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, where, f"expected true or false, got {value!r}")
    return value


def _choice(path: Path, where: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise _fail(path, where, f"unknown value {value!r}; choose one of {list(choices)}")
    return value


def _parse_source(path: Path, where: str, raw: Any) -> Source:
    if isinstance(raw, str):
        return Source(file=raw)
    if not isinstance(raw, dict) or not isinstance(raw.get("file"), str):
        raise _fail(path, where, "expected a file path or {file: PATH, where: {KEY: VALUE}}")
    unknown = sorted(set(raw) - {"file", "where"})
    if unknown:
        raise _fail(path, f"{where}.{unknown[0]}", "unknown key; valid keys: ['file', 'where']")
    where_ = raw.get("where") or {}
    if not isinstance(where_, dict):
        raise _fail(path, f"{where}.where", f"expected a mapping of record keys to values, got {where_!r}")
    return Source(file=raw["file"], where=dict(where_))


def _parse_table(path: Path, name: str, raw: Any, record_sets: Mapping[str, Any]) -> TableSpec:
    here = f"tables.{name}"
    if not isinstance(raw, dict):
        raise _fail(path, here, "expected a mapping")
    unknown = sorted(set(raw) - set(_TABLE_KEYS))
    if unknown:
        raise _fail(path, f"{here}.{unknown[0]}", f"unknown key; valid keys: {list(_TABLE_KEYS)}")
    records = raw.get("records")
    if records not in record_sets:
        raise _fail(path, f"{here}.records", f"unknown record set {records!r}; available: {sorted(record_sets)}")
    kwargs: dict[str, Any] = {"name": name, "records": records}
    rows = raw.get("rows", "methods")
    if isinstance(rows, list) and rows and all(isinstance(r, str) for r in rows):
        kwargs["methods"] = tuple(rows)
        rows = "methods"
    elif isinstance(rows, list):
        method = raw.get("method")
        specs = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or not isinstance(row.get("label"), str):
                raise _fail(path, f"{here}.rows.{i}", "expected {label: LABEL, name: TEXT, method: METHOD (default: the table's method)}")
            row_method = row.get("method", method)
            if not isinstance(row_method, str):
                raise _fail(path, f"{here}.rows.{i}.method", "missing; give it here or as the table's `method`")
            specs.append(RowSpec(method=row_method, label=row["label"], name=str(row.get("name", row["label"]))))
        kwargs["label_rows"] = tuple(specs)
        rows = "labels"
    kwargs["rows"] = _choice(path, f"{here}.rows", rows, ROWS_KINDS)
    kwargs["columns"] = _choice(path, f"{here}.columns", raw.get("columns", "shots"), COLUMN_KINDS)
    if "method" in raw:
        if not isinstance(raw["method"], str):
            raise _fail(path, f"{here}.method", f"expected a method name, got {raw['method']!r}")
        kwargs["method"] = raw["method"]
    if kwargs["rows"] == "labels" and not kwargs.get("label_rows") and not kwargs.get("method"):
        raise _fail(path, f"{here}.method", "missing; a `rows: labels` table needs the method whose labels are its rows")
    if "shots" in raw:
        shots = raw["shots"]
        if not isinstance(shots, list) or not shots or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in shots):
            raise _fail(path, f"{here}.shots", f"expected a list of positive integers, got {shots!r}")
        kwargs["shots"] = tuple(shots)
    if "datasets" in raw:
        kwargs["datasets"] = _strings(path, f"{here}.datasets", raw["datasets"])
    kwargs["value"] = _choice(path, f"{here}.value", raw.get("value", "test"), VALUES)
    for key in ("dataset_columns", "average", "bold", "config_column"):
        if key in raw:
            kwargs[key] = _flag(path, f"{here}.{key}", raw[key])
    for key in ("what", "caption"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise _fail(path, f"{here}.{key}", "expected text (a string)")
            kwargs[key] = " ".join(raw[key].split())
    spec = TableSpec(**kwargs)
    if spec.columns in ("datasets", "splits") and len(spec.shots) != 1:
        raise _fail(path, f"{here}.shots", f"a `columns: {spec.columns}` table is at one shot count; give `shots: [K]`")
    if spec.columns == "splits" and spec.value != "test":
        raise _fail(path, f"{here}.value", "a `columns: splits` table shows test and val already; leave `value` out")
    return spec


def load_manifest(path: str | Path | None = None, *, root: str | Path | None = None) -> Manifest:
    """The manifest at ``path`` (default: ``<root>/docs/tables.yaml``), checked.

    Args:
        path: the manifest file.
        root: the repository root, against which record files and documents are resolved
            (default: the folder above the manifest's ``docs/``, i.e. the manifest's parent's parent).

    Raises:
        DocTablesError: an unknown key, record set or value; the message names the key path.
    """
    if path is None:
        root = Path(root) if root is not None else Path.cwd()
        path = root / MANIFEST
    path = Path(path)
    root = Path(root) if root is not None else path.resolve().parent.parent
    data = read_yaml(path, DocTablesError, what="the tables manifest")
    if not isinstance(data, dict):
        raise _fail(path, "top level", "expected a mapping with `records` and `tables`")
    unknown = sorted(set(data) - {"records", "tables"})
    if unknown:
        raise _fail(path, unknown[0], "unknown key; valid keys: ['records', 'tables']")
    raw_sets = data.get("records")
    if not isinstance(raw_sets, dict) or not raw_sets:
        raise _fail(path, "records", "expected a mapping: record set name -> list of files")
    record_sets: dict[str, tuple[Source, ...]] = {}
    for name, files in raw_sets.items():
        if not isinstance(files, list) or not files:
            raise _fail(path, f"records.{name}", "expected a non-empty list of files (later files override earlier ones)")
        record_sets[str(name)] = tuple(_parse_source(path, f"records.{name}.{i}", f) for i, f in enumerate(files))
    raw_tables = data.get("tables")
    if not isinstance(raw_tables, dict) or not raw_tables:
        raise _fail(path, "tables", "expected a mapping: table name -> its spec")
    tables = {str(name): _parse_table(path, str(name), spec, record_sets) for name, spec in raw_tables.items()}
    return Manifest(path=path, root=root, record_sets=record_sets, tables=tables)


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Record:
    """One run, whichever file it came from."""

    dataset: str | None
    method: str
    shots: int
    seed: Any
    val: float | None
    test: float | None
    label: str | None = None


def _number(value: Any) -> float | None:
    return float(value) if is_number(value) else None


def _to_record(raw: Mapping[str, Any], where: str) -> Record:
    method, shots = raw.get("method"), raw.get("shots")
    if not isinstance(method, str) or isinstance(shots, bool) or not isinstance(shots, int):
        raise DocTablesError(f"{where}: a record needs `method` (string) and `shots` (integer), got {dict(list(raw.items())[:4])!r}")
    dataset = raw.get("dataset", raw.get("task"))
    return Record(
        dataset=dataset if isinstance(dataset, str) else None,
        method=method,
        shots=shots,
        seed=raw.get("seed"),
        val=_number(raw.get("val_acc", raw.get("val"))),
        test=_number(raw.get("test_acc", raw.get("test"))),
        label=raw.get("label") if isinstance(raw.get("label"), str) else None,
    )


def read_records(path: str | Path, where: Mapping[str, Any] | None = None) -> list[Record]:
    """The records of a JSON-lines file whose raw keys match ``where``, in file order."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DocTablesError(f"{path}: cannot read the records file: {exc.strerror or exc}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = strict_json_loads(line)
        except ValueError as exc:
            raise DocTablesError(f"{path}:{number}: not a JSON object ({exc})") from None
        if not isinstance(raw, dict):
            raise DocTablesError(f"{path}:{number}: expected a JSON object per line")
        if all(raw.get(k) == v for k, v in (where or {}).items()):
            records.append(_to_record(raw, f"{path}:{number}"))
    return records


def select_records(manifest: Manifest, spec: TableSpec) -> list[Record]:
    """The records of ``spec``'s record set after precedence: a later record with the same key
    (dataset, method, shots, seed, and label when the rows are labels) replaces an earlier one."""
    by_key: dict[tuple, Record] = {}
    for source in manifest.record_sets[spec.records]:
        for r in read_records(manifest.root / source.file, source.where):
            key = (r.dataset, r.method, r.shots, r.seed) + ((r.label,) if spec.rows == "labels" else ())
            by_key.pop(key, None)  # re-insert: the overriding record takes the later place in first-seen order
            by_key[key] = r
    records = list(by_key.values())
    if spec.shots:
        records = [r for r in records if r.shots in spec.shots]
    if spec.datasets:
        records = [r for r in records if r.dataset in spec.datasets]
    if not records:
        raise DocTablesError(f"table {spec.name}: no records in record set {spec.records!r} match its shots/datasets")
    return records


def collect_records(runs_dir: str | Path) -> list[dict[str, Any]]:
    """One compact record per finished run under ``runs_dir`` (sorted by method, shots, seed)."""
    out = []
    for record in load_records(runs_dir):
        row = {k: record[k] for k in _COLLECT_KEYS if k in record}
        if record.get("synthetic"):
            row["synthetic"] = True
        out.append(row)
    return sorted(out, key=lambda r: (str(r.get("dataset")), r["method"], r["shots"], str(r["seed"])))


# --------------------------------------------------------------------------------------------
# Tables


def _display_names() -> Any:
    from hgadapter.paper_results import PaperResults, load_paper_results

    return PaperResults(load_paper_results())


def _fmt(value: float) -> str:
    return f"{value:.2f}"


def _method_order(methods: Iterable[str], paper: Any) -> list[str]:
    known = paper.order("methods")
    return sorted(set(methods), key=lambda m: (known.index(m), "") if m in known else (len(known), m))


def config_file(method: str, root: Path) -> str:
    """The shipped config of a method, as a path from the repository root ("" if none)."""
    if method == "hegraphadapter" or method.startswith("hegraphadapter:"):
        variant = method.partition(":")[2] or "full"
        candidate = f"metapaths/{variant}.yaml"
    else:
        candidate = f"experiments/methods/{method}.yaml"
    return candidate if (root / candidate).is_file() else ""


def _seeds_text(seeds: set[Any]) -> str:
    ordered = sorted(seeds, key=str)
    if all(isinstance(s, int) for s in ordered) and ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 1:
        return f"seeds {ordered[0]}-{ordered[-1]}"
    return ("seed " if len(ordered) == 1 else "seeds ") + ", ".join(map(str, ordered))


class _Cell:
    """A mean over seeds (one dataset) or over datasets (means over seeds); ``text`` as printed."""

    def __init__(self, mean: float | None, text: str, mark: str = "", n: int = 0):
        self.mean, self.text, self.mark, self.n = mean, text, mark, n  # n: seeds behind the mean


def _value_of(record: Record, value: str) -> float | None:
    return record.val if value == "val" else record.test


def _methods_cell(records: list[Record], datasets: list[str | None], value: str, notes: dict[str, str]) -> _Cell:
    by_dataset = {d: [r for r in records if r.dataset == d] for d in datasets}
    present = [d for d in datasets if by_dataset[d]]
    if not present:
        return _Cell(None, "–")
    if len(datasets) == 1:
        numbers = seed_values([{"seed": r.seed, "v": _value_of(r, value)} for r in records], lambda r: r["v"])
        if not numbers:
            return _Cell(None, "–")
        mean, std, n = mean_std(numbers)
        return _Cell(mean, f"{_fmt(mean)} ± {_fmt(std)}" if n > 1 else _fmt(mean), n=n)
    means, counts = [], []
    for d in present:
        numbers = seed_values([{"seed": r.seed, "v": _value_of(r, value)} for r in by_dataset[d]], lambda r: r["v"])
        if numbers:
            means.append(statistics.fmean(numbers))
            counts.append(len(numbers))
    if not means:
        return _Cell(None, "–")
    mean = statistics.fmean(means)
    mark = ""
    if len(present) < len(datasets):
        missing = ", ".join(str(d) for d in datasets if d not in present)
        mark = "†" * (1 + list(notes).index(missing) if missing in notes else 1 + len(notes))
        notes.setdefault(missing, mark)
    return _Cell(mean, _fmt(mean), mark, n=min(counts))


def _bold(rows: list[list[_Cell]]) -> None:
    """Bold the best mean of each column; a mean over fewer tasks than the others (a † cell) is
    not comparable, so it is neither bold nor in the running."""
    for col in range(len(rows[0]) if rows else 0):
        fair = [r[col] for r in rows if r[col].mean is not None and not r[col].mark]
        best = max((round(c.mean, 2) for c in fair), default=None)
        for r in rows:
            if best is not None and r[col] in fair and round(r[col].mean, 2) == best:
                r[col].text = f"**{r[col].text}**"


def _markdown(head: list[str], body: list[list[str]], align: list[str]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


def _methods_table(spec: TableSpec, records: list[Record], root: Path, paper: Any) -> tuple[list[str], list[str]]:
    methods = list(spec.methods) or _method_order({r.method for r in records}, paper)
    unknown = [m for m in spec.methods if not any(r.method == m for r in records)]
    if unknown:
        raise DocTablesError(f"table {spec.name}: no records of {unknown} in record set {spec.records!r}")
    datasets = list(spec.datasets) or list(dict.fromkeys(r.dataset for r in records))
    shots = sorted({r.shots for r in records})
    notes: dict[str, str] = {}
    if spec.columns == "shots":
        columns = [(f"{k}-shot", lambda r, k=k: r.shots == k, spec.value) for k in shots]
    elif spec.columns == "datasets":
        columns = [(str(d), lambda r, d=d: r.dataset == d, spec.value) for d in datasets]
    else:
        columns = [("test acc (%)", lambda r: True, "test"), ("val acc (%)", lambda r: True, "val")]
    cells: list[list[_Cell]] = []
    for m in methods:
        mine = [r for r in records if r.method == m]
        row = []
        for _, keep, value in columns:
            chosen = [r for r in mine if keep(r)]
            col_datasets = datasets if spec.columns != "datasets" else [chosen[0].dataset] if chosen else [None]
            row.append(_methods_cell(chosen, col_datasets, value, notes) if chosen else _Cell(None, "not run"))
        if spec.columns == "datasets" and spec.average:
            complete = all(c.mean is not None for c in row)
            mean = statistics.fmean(c.mean for c in row) if complete else None
            row.append(_Cell(mean, _fmt(mean) if complete else "–"))
        cells.append(row)
    if spec.bold:
        _bold(cells)
    most = max((c.n for row in cells for c in row), default=0)
    for row in cells:
        for c in row:
            if c.mean is not None and 0 < c.n < most:  # fewer seeds than the rest of the table: say so
                c.mark += f" (n={c.n})"
    head = ["method"] + (["config"] if spec.config_column else []) + [name for name, _, _ in columns]
    head += ["average"] if spec.columns == "datasets" and spec.average else []
    body = []
    for m, row in zip(methods, cells):
        first = [paper.display("methods", m)] + ([f"`{config_file(m, root)}`" if config_file(m, root) else ""] if spec.config_column else [])
        body.append(first + [c.text + c.mark for c in row])
    align = ["---"] * (1 + spec.config_column) + ["---:"] * (len(head) - 1 - spec.config_column)
    footnotes = [f"{mark} mean over the tasks it was run on; not run on {missing}." for missing, mark in notes.items()]
    return _markdown(head, body, align), footnotes


def labels_table(
    records: Sequence[Record],
    rows: Sequence[RowSpec],
    *,
    datasets: Sequence[str] | None = None,
    dataset_columns: bool = True,
    value: str = "val/test",
) -> list[str]:
    """The development suite's table of choices: one row per (method, label); cells are
    ``val / test`` (or one of them), means over the records of each task (over shots and seeds),
    of each K (over tasks and seeds) and of all; the overall val mean is bold (it chose)."""
    datasets = list(datasets) if datasets else list(dict.fromkeys(r.dataset for r in records))
    shots = sorted({r.shots for r in records})

    def mean(sel: list[Record], which: str) -> str:
        vals = [getattr(r, which) for r in sel if getattr(r, which) is not None]
        return _fmt(statistics.fmean(vals)) if vals else "-"

    def cell(sel: list[Record], *, strong: bool = False) -> str:
        parts = [("val", mean(sel, "val")), ("test", mean(sel, "test"))]
        parts = [(w, t) for w, t in parts if w in value.split("/")]
        if strong:
            parts[0] = (parts[0][0], f"**{parts[0][1]}**")
        return " / ".join(t for _, t in parts)

    head = ["choice", *(datasets if dataset_columns else []), *(f"K={k}" for k in shots), "mean"]
    body = []
    for row in rows:
        mine = [r for r in records if r.method == row.method and r.label == row.label and r.dataset in datasets]
        if not mine:
            raise DocTablesError(f"no records of method {row.method!r} with label {row.label!r}")
        cells = [cell([r for r in mine if r.dataset == d]) for d in datasets] if dataset_columns else []
        cells += [cell([r for r in mine if r.shots == k]) for k in shots]
        cells.append(cell(mine, strong=True))
        body.append([row.name, *cells])
    return _markdown(head, body, ["---"] * len(head))


def render_table(manifest: Manifest, spec: TableSpec, *, paper: Any = None) -> str:
    """The markdown ``spec`` stands for: a caption naming its records, the table, footnotes."""
    paper = paper if paper is not None else _display_names()
    records = select_records(manifest, spec)
    files = ", ".join(f"`{s.file}`" for s in manifest.record_sets[spec.records])
    seeds = {r.seed for r in records}
    if spec.rows == "labels":
        rows = list(spec.label_rows) or [
            RowSpec(method=spec.method, label=label, name=label)
            for label in dict.fromkeys(r.label for r in records if r.method == spec.method)
        ]
        lines = labels_table(records, rows, datasets=spec.datasets or None, dataset_columns=spec.dataset_columns, value=spec.value)
        what = spec.what or {"val/test": "Validation / test accuracy (%)", "val": "Validation accuracy (%)", "test": "Test accuracy (%)"}[spec.value]
        caption = f"{what}, means over the runs of each cell ({_seeds_text(seeds)}); runs in {files}."
        footnotes: list[str] = []
    else:
        lines, footnotes = _methods_table(spec, records, manifest.root, paper)
        datasets = list(spec.datasets) or list(dict.fromkeys(r.dataset for r in records))
        what = {"val": "Validation accuracy (%)", "test": "Test accuracy (%)"}.get(spec.value, "Accuracy (%)")
        if spec.columns == "splits":
            what = "Accuracy (%)"
        what = spec.what or what
        over = "mean ± sample std over " + _seeds_text(seeds) if len(seeds) > 1 else _seeds_text(seeds)
        if spec.columns == "shots" and len(datasets) > 1:
            over = f"{_seeds_text(seeds)}, mean over the {len(datasets)} tasks"
        shots = f", {spec.shots[0]} shots" if len(spec.shots) == 1 else ""
        caption = f"{what}{shots}, {over}; runs in {files}."
    text = [DO_NOT_EDIT, "", caption + (" " + spec.caption if spec.caption else ""), "", *lines]
    if footnotes:
        text += ["", *footnotes]
    return "\n".join(text) + "\n"


# --------------------------------------------------------------------------------------------
# Documents


def update_text(text: str, tables: Mapping[str, str], *, where: str = "document") -> tuple[str, list[str]]:
    """``text`` with the content between each pair of markers replaced by ``tables[NAME]``.

    Returns:
        The new text and the names of the tables it holds, in order.

    Raises:
        DocTablesError: an unpaired marker, or a marker naming a table the manifest lacks.
    """
    opened, closed = _OPEN.findall(text), _CLOSE.findall(text)
    if sorted(opened) != sorted(closed):
        unpaired = sorted(set(opened) ^ set(closed)) or sorted(opened)
        raise DocTablesError(f"{where}: table markers do not pair up ({unpaired}); each <!-- table:NAME --> needs a <!-- /table:NAME --> after it")
    names = []

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in tables:
            raise DocTablesError(f"{where}: unknown table {name!r}; the manifest ({MANIFEST}) has {sorted(tables)}")
        names.append(name)
        return f"<!-- table:{name} -->\n{tables[name]}<!-- /table:{name} -->"

    new = _MARKER.sub(replace, text)
    if len(names) != len(opened):
        raise DocTablesError(f"{where}: table markers are nested or out of order; each table needs its own <!-- table:NAME --> ... <!-- /table:NAME -->")
    return new, names


def _documents(root: Path) -> list[Path]:
    return sorted({p for pattern in DOC_GLOBS for p in root.glob(pattern) if p.is_file()})


def update_docs(manifest: Manifest, *, check: bool = False, out: Any = None) -> list[Path]:
    """Regenerate every table of the manifest in README.md and docs/*.md.

    Args:
        manifest: the loaded manifest.
        check: write nothing; print a diff of each stale document instead.

    Returns:
        The documents that changed (``check``: that would change).

    Raises:
        DocTablesError: a table of the manifest appears in no document, or a document's markers
            are malformed.
    """
    out = out if out is not None else sys.stdout
    paper = _display_names()
    tables = {name: render_table(manifest, spec, paper=paper) for name, spec in manifest.tables.items()}
    changed, seen = [], set()
    for doc in _documents(manifest.root):
        text = doc.read_text(encoding="utf-8")
        new, names = update_text(text, tables, where=str(doc.relative_to(manifest.root)))
        seen.update(names)
        if new != text:
            changed.append(doc)
            rel = str(doc.relative_to(manifest.root))
            if check:
                out.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), f"{rel} (committed)", f"{rel} (from the records)", n=1))
            else:
                atomic_write_text(doc, new)
    missing = sorted(set(tables) - seen)
    if missing:
        raise DocTablesError(f"tables {missing} of {manifest.path} appear in no document ({', '.join(DOC_GLOBS)}); add <!-- table:NAME --> <!-- /table:NAME --> where each belongs")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hgadapter.doctables",
        description="Regenerate the results tables of README.md and docs/*.md from committed run records (docs/tables.yaml).",
    )
    parser.add_argument("--root", default=".", help="the repository root (default: the current directory)")
    parser.add_argument("--manifest", default=None, help=f"the manifest (default: ROOT/{MANIFEST})")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 and print the difference when a table is stale")
    parser.add_argument("--collect", metavar="RUNS", default=None, help="write the records of the finished runs under RUNS to --out and exit")
    parser.add_argument("--out", default=None, help="with --collect: the records file to write (JSON lines)")
    args = parser.parse_args(argv)
    try:
        if args.collect:
            if not args.out:
                parser.error("--collect needs --out FILE.jsonl")
            rows = collect_records(args.collect)
            atomic_write_text(args.out, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
            print(f"{len(rows)} records from {args.collect} -> {args.out}")
            return 0
        manifest = load_manifest(args.manifest, root=args.root)
        changed = update_docs(manifest, check=args.check)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = ", ".join(str(p.relative_to(manifest.root)) for p in changed)
    if args.check:
        if changed:
            print(f"\nstale tables in {names}: run `make docs-tables` and commit the result", file=sys.stderr)
            return 1
        print(f"{len(manifest.tables)} tables up to date")
        return 0
    print(f"{len(manifest.tables)} tables; rewrote {names}" if changed else f"{len(manifest.tables)} tables; nothing to rewrite")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
