"""The paper's reported numbers as data: ``experiments/paper_results.yaml``, checked and looked up.

Located by :func:`paper_results_path` (``$HGADAPTER_PAPER_RESULTS``, a source checkout or a wheel's
``share/hgadapter``) unless a path is given. Its schema, checked by :func:`load_paper_results`:

- ``datasets`` / ``dg_targets`` / ``backbones`` / ``methods``: id -> display name, in paper order;
- ``tables``: name -> ``{caption, source, ..., values}`` with these ``values``:

  - ``table1_dg``: backbone -> method -> {dataset or target or ``average``: accuracy};
  - ``table2_fewshot16``: method -> {dataset or ``average``: accuracy} (``backbone``, ``shots``);
  - ``table3_sensitivity``: list of {``key``, ``weights``, ``accuracy``, optional ``learned``}
    (``dataset``, ``backbone``, ``shots``, ``method``);
  - ``table4_backbones``: method -> backbone -> accuracy (``dataset``, ``shots``);
  - ``table5_complexity``: method -> {quantity: number};
  - ``figure2_text``: method -> shots -> {dataset or ``average``: accuracy} (``backbone``).

Every number was transcribed from Jiang et al.'s Sec. 4.2-4.3 (see the file's header). This module
imports neither torch nor dgl.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from hgadapter._resources import resource_path
from hgadapter.errors import UserError
from hgadapter.records import is_number

__all__ = ["ReportError", "AVERAGE", "LEARN_KEY", "TABLE_NAMES", "paper_results_path", "load_paper_results", "PaperResults"]

AVERAGE = "average"  # the column id of an average over datasets or targets
LEARN_KEY = "train.learn_betas"  # a sweep of it is Table 3's "learn" column
TABLE_NAMES = ("table1_dg", "table2_fewshot16", "table3_sensitivity", "table4_backbones", "table5_complexity", "figure2_text")


class ReportError(UserError):
    """The paper results file is missing or malformed."""


# --------------------------------------------------------------------------------------------
# The paper's numbers


def paper_results_path() -> Path:
    """``$HGADAPTER_PAPER_RESULTS`` or ``<repo>/experiments/paper_results.yaml``."""
    return resource_path("experiments/paper_results.yaml", "HGADAPTER_PAPER_RESULTS")


class _Checker:
    """Validates the parsed paper file; every error names the file and the key path."""

    def __init__(self, path: Path, data: Any):
        self.path = path
        self.data = data

    def fail(self, where: str, message: str) -> None:
        raise ReportError(f"{self.path}: {where}: {message}")

    def mapping(self, value: Any, where: str) -> dict:
        if value is None:
            self.fail(where, "missing; expected a mapping (see the schema in hgadapter/report.py)")
        if not isinstance(value, dict):
            self.fail(where, f"expected a mapping, got {type(value).__name__}")
        return value

    def names(self, key: str) -> dict[str, str]:
        names = self.mapping(self.data.get(key), key)
        for k, v in names.items():
            if not isinstance(k, str) or not isinstance(v, str):
                self.fail(f"{key}.{k}", f"expected id: display name (strings), got {k!r}: {v!r}")
        return names

    def number(self, value: Any, where: str) -> None:
        if not is_number(value):
            self.fail(where, f"expected a number (percent), got {value!r}")

    def member(self, value: Any, known: Iterable[Any], where: str, what: str) -> None:
        known = list(known)
        if value not in known:
            self.fail(where, f"unknown {what} {value!r}; expected one of {known}")

    def cells(self, row: Any, columns: Iterable[str], where: str, what: str) -> None:
        for col, value in self.mapping(row, where).items():
            self.member(col, [*columns, AVERAGE], f"{where}.{col}", what)
            self.number(value, f"{where}.{col}")


def load_paper_results(path: str | Path | None = None) -> dict[str, Any]:
    """The paper's reported numbers (schema in this module's docstring), checked.

    Args:
        path: the YAML file; default :func:`paper_results_path`.

    Returns:
        The parsed file, plus ``_path``: where it was read from.

    Raises:
        ReportError: the file is missing, not YAML, or a key has the wrong shape (the message
            names the key path, e.g. ``tables.table2_fewshot16.values.coop.imagenet``).
    """
    path = Path(path) if path is not None else paper_results_path()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportError(f"{path}: cannot read the paper results: {exc.strerror or exc}; pass --paper PATH or --no-paper") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise ReportError(f"{path}: not valid YAML{line}") from None
    check = _Checker(path, data)
    check.mapping(data, "top level")
    datasets, targets, backbones, methods = (check.names(k) for k in ("datasets", "dg_targets", "backbones", "methods"))
    tables = check.mapping(data.get("tables"), "tables")
    for name, table in tables.items():
        check.member(name, TABLE_NAMES, f"tables.{name}", "table name")
        table = check.mapping(table, f"tables.{name}")
        for key in ("caption", "source"):
            if not isinstance(table.get(key), str):
                check.fail(f"tables.{name}.{key}", "expected a string")
        where = f"tables.{name}.values"
        values = table.get("values")
        if name == "table3_sensitivity":
            if not isinstance(values, list):
                check.fail(where, "expected a list of rows {key, weights, accuracy}")
            for i, row in enumerate(values):
                row = check.mapping(row, f"{where}.{i}")
                if not isinstance(row.get("key"), str):
                    check.fail(f"{where}.{i}.key", "expected the dotted config key the row sweeps")
                weights, accuracy = row.get("weights"), row.get("accuracy")
                if not isinstance(weights, list) or not isinstance(accuracy, list) or len(weights) != len(accuracy):
                    check.fail(f"{where}.{i}", "expected lists `weights` and `accuracy` of the same length")
                for j, (w, a) in enumerate(zip(weights, accuracy)):
                    check.number(w, f"{where}.{i}.weights.{j}")
                    check.number(a, f"{where}.{i}.accuracy.{j}")
                if "learned" in row:
                    check.number(row["learned"], f"{where}.{i}.learned")
            continue
        for outer, row in check.mapping(values, where).items():
            here = f"{where}.{outer}"
            if name == "table1_dg":  # backbone -> method -> cells
                check.member(outer, backbones, here, "backbone")
                for m, cells in check.mapping(row, here).items():
                    check.member(m, methods, f"{here}.{m}", "method")
                    check.cells(cells, [*datasets, *targets], f"{here}.{m}", "dataset")
                continue
            check.member(outer, methods, here, "method")  # the other tables: method -> ...
            if name == "table2_fewshot16":
                check.cells(row, datasets, here, "dataset")
            elif name == "table4_backbones":
                for b, value in check.mapping(row, here).items():
                    check.member(b, backbones, f"{here}.{b}", "backbone")
                    check.number(value, f"{here}.{b}")
            elif name == "table5_complexity":
                for q, value in check.mapping(row, here).items():
                    check.number(value, f"{here}.{q}")
            elif name == "figure2_text":
                for shots, cells in check.mapping(row, here).items():
                    if not isinstance(shots, int) or isinstance(shots, bool):
                        check.fail(f"{here}.{shots}", "expected a number of shots")
                    check.cells(cells, datasets, f"{here}.{shots}", "dataset")
    data["_path"] = str(path)
    return data


class PaperResults:
    """Look-ups into the paper's tables; every method answers ``None`` when nothing matches."""

    def __init__(self, data: Mapping[str, Any] | None):
        self.data = data or {}
        self.tables: Mapping[str, Any] = self.data.get("tables", {})

    def display(self, kind: str, ident: str | None) -> str:
        """The paper's display name of a dataset (or DG target), backbone or method; else ``ident``."""
        if ident is None:
            return "backbone not recorded" if kind == "backbones" else "unknown"
        names = dict(self.data.get(kind, {}))
        if kind == "datasets":
            names.update(self.data.get("dg_targets", {}))
        return names.get(ident, ident)

    def order(self, kind: str) -> list[str]:
        return list(self.data.get(kind, {}))

    def source(self, name: str) -> str:
        return self.tables[name]["source"]

    def fewshot(self, method: str, dataset: str, backbone: str | None, shots: int) -> tuple[float, str] | None:
        """(value, table) of ``dataset`` (or ``average``) for a few-shot cell."""
        t2, t4, fig2 = (self.tables.get(k) for k in ("table2_fewshot16", "table4_backbones", "figure2_text"))
        if t2 and backbone == t2.get("backbone") and shots == t2.get("shots"):
            value = t2["values"].get(method, {}).get(dataset)
            if value is not None:
                return value, "table2_fewshot16"
        if t4 and dataset == t4.get("dataset") and shots == t4.get("shots"):
            value = t4["values"].get(method, {}).get(backbone)
            if value is not None:
                return value, "table4_backbones"
        if fig2 and backbone == fig2.get("backbone"):
            value = fig2["values"].get(method, {}).get(shots, {}).get(dataset)
            if value is not None:
                return value, "figure2_text"
        return None

    def dg(self, method: str, column: str, dataset: str, backbone: str | None, shots: int) -> tuple[float, str] | None:
        t1 = self.tables.get("table1_dg")
        if not t1 or dataset != t1.get("dataset") or shots != t1.get("shots"):
            return None
        value = t1["values"].get(backbone, {}).get(method, {}).get(column)
        return (value, "table1_dg") if value is not None else None

    def backbone(self, method: str, backbone: str, dataset: str, shots: int) -> tuple[float, str] | None:
        t4 = self.tables.get("table4_backbones")
        if not t4 or dataset != t4.get("dataset") or shots != t4.get("shots"):
            return None
        value = t4["values"].get(method, {}).get(backbone)
        return (value, "table4_backbones") if value is not None else None

    def sensitivity_row(self, key: str, method: str, dataset: str, backbone: str | None, shots: int) -> dict | None:
        t3 = self.tables.get("table3_sensitivity")
        if not t3 or (method, dataset, backbone, shots) != (t3.get("method"), t3.get("dataset"), t3.get("backbone"), t3.get("shots")):
            return None
        if key == LEARN_KEY:  # the "learn" column: every fusion weight learned (stored on row 1)
            learned = next((row["learned"] for row in t3["values"] if "learned" in row), None)
            return None if learned is None else {"key": key, "metapath": "all", "weights": [True], "accuracy": [learned]}
        return next((row for row in t3["values"] if row["key"] == key), None)
