"""Finished runs as the paper's tables, with the paper's value and our difference beside each cell.

``hgadapter report RUNS_DIR`` reads every run record below ``RUNS_DIR`` (:mod:`hgadapter.records`),
groups them by (dataset, backbone, method, shots, params) and configuration (the record's
``config_id``: the run hash without the seed, :func:`hgadapter.runspec.config_id`; runs of
different configurations become separate rows ``<method> [config <id>]`` with a note, never one
mean), averages each group over seeds (mean ±
sample standard deviation) and lays the groups out as the tables of the paper's Sec. 4.2-4.3:

- ``shots``: per backbone, methods x shots for one dataset or the average over datasets (Fig. 2);
- ``fewshot``: per (backbone, shots), methods x datasets + Average (Table 2);
- in both, a method swept over a grid also gets a ``<method> (val-selected)`` row: per dataset,
  shots and seed the grid point with the best validation accuracy
  (:func:`val_selected_records`), the honest form of the paper's per-dataset tuning;
- ``dg``: records with ``targets``, per backbone: source, each target, Average (Table 1);
- ``sensitivity``: records with ``params``, one table per swept key: accuracy per value (Table 3);
- ``backbones``: ImageNet 16-shot, methods x backbones (Table 4);
- ``complexity``: trained methods at 16 shots, per (dataset, backbone): training-loop seconds
  per epoch, selection seconds, epochs and trained parameters in millions (Table 5).
- ``selection`` (only when asked, as ``hgadapter compare`` does): per (dataset, backbone, shots),
  validation and test accuracy and training seconds per method.

``out_dir`` receives ``report.md`` (all tables), ``report.csv`` (one line per cell),
``report.json`` (the same lines plus each table's layout) and ``report.tex`` (the same tables in
LaTeX, :mod:`hgadapter.report_tex`), written atomically. See docs/reports.md.

The paper's numbers come from :mod:`hgadapter.paper_results` (``experiments/paper_results.yaml``,
``$HGADAPTER_PAPER_RESULTS`` or an explicit path).

A paper value is put beside a cell only when dataset, backbone, method, shots and (for Table 3)
the swept key and value all match; runs without a recorded backbone and synthetic runs get none.

This module imports neither torch nor dgl.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hgadapter._cli import output_path
from hgadapter._io import atomic_write_json, atomic_write_text, check_output_dir
from hgadapter.paper_results import AVERAGE, LEARN_KEY, TABLE_NAMES, PaperResults, ReportError, load_paper_results, paper_results_path
from hgadapter.records import is_number, load_records, mean_std, seed_values
from hgadapter.report_tex import format_latex
from hgadapter.tables import FULL_SEEDS, SYNTHETIC_NOTE, VAL_SELECTED, Cell, Report, Row, Table

__all__ = [
    "CSV_COLUMNS",
    "Cell",
    "Row",
    "Table",
    "Report",
    "build_report",
    "format_cell",
    "format_markdown",
    "format_csv",
    "report_payload",
    "display_names",
    "write_report",
    "add_report_arguments",
    "run_report",
]

CSV_COLUMNS: tuple[str, ...] = (
    "table", "backbone", "dataset", "method", "shots", "key", "value", "mean", "std", "n", "paper", "diff", "note",
)
REPORT_STEM = "report"  # write_report writes report.md, report.csv, report.json and report.tex
_RECORD_METRICS = ("test_acc", "val_acc", "train_seconds")  # per-seed numbers a record holds itself
CONFIG_MARK = " [config "  # a row of one of a method's several configurations: "<method> [config <id>]"


# --------------------------------------------------------------------------------------------
# Building


def _is_synthetic(record: Mapping[str, Any]) -> bool:
    return bool(record.get("synthetic")) or record.get("dataset") == "synthetic"


def _freeze(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((str(k), v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)) for k, v in params.items()))


def _seeds(groups: Iterable["_Group"]) -> list[Any]:
    """The seeds of ``groups``' runs, numbers in order first."""
    return sorted({seed for g in groups for seed in g.by_seed}, key=_sort_value)


@dataclass
class _Group:
    """Records of one (dataset, backbone, method, shots, params), by seed."""

    dataset: str
    backbone: str | None
    method: str
    shots: int
    params: tuple[tuple[str, Any], ...]
    synthetic: bool
    by_seed: dict[Any, list[Mapping[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    def per_seed(self, metric: str) -> list[float]:
        """One value per seed of ``metric`` (a record key such as ``test_acc``, or a target name):
        repeats are averaged (:func:`hgadapter.records.seed_values`)."""
        records = [r for rs in self.by_seed.values() for r in rs]
        if metric in _RECORD_METRICS:
            return seed_values(records, lambda r: r.get(metric))
        return seed_values(records, lambda r: (r.get("targets") or {}).get(metric))


def _config_of(record: Mapping[str, Any]) -> str | None:
    """The record's configuration identity (:func:`hgadapter.runspec.config_id`); ``None`` for runs
    written before records had one."""
    value = record.get("config_id")
    return value if isinstance(value, str) and value else None


def _group(records: Sequence[Mapping[str, Any]], warnings: list[str]) -> list[_Group]:
    """One group per configuration: (dataset, backbone, method, shots, params) and ``config_id``.

    Only runs of one configuration differ in nothing but their seed, so only they are averaged.
    Where one (dataset, backbone, method, shots, params) holds runs of several configurations
    (say ``hgadapter run`` with different ``--set`` values), each becomes its own row,
    ``<method> [config <id>]``, and a note lists their run directories.
    """
    by_key: dict[tuple, dict[str | None, _Group]] = {}
    for r in records:
        synthetic = _is_synthetic(r)
        dataset = r.get("dataset") or ("synthetic" if synthetic else "unknown")
        params = _freeze(r.get("params") or {})
        key = (dataset, r.get("backbone"), r["method"], int(r["shots"]), params, synthetic)
        configs = by_key.setdefault(key, {})
        group = configs.get(_config_of(r))
        if group is None:
            group = configs[_config_of(r)] = _Group(dataset, r.get("backbone"), r["method"], int(r["shots"]), params, synthetic)
        group.by_seed[r["seed"]].append(r)
    groups: list[_Group] = []
    for (dataset, backbone, method, shots, params, _), configs in by_key.items():
        if len(configs) > 1:
            point = f" {dict(params)}" if params else ""
            parts = []
            for cid, g in sorted(configs.items(), key=lambda kv: kv[0] or ""):
                g.method = f"{method}{CONFIG_MARK}{cid[:8] if cid else 'not recorded'}]"
                dirs = ", ".join(sorted(str(r.get("run_dir", "?")) for rs in g.by_seed.values() for r in rs))
                parts.append(f"{cid[:8] if cid else 'not recorded'}: {dirs}")
            warnings.append(
                f"{dataset} {backbone or '-'} {method} {shots} shots{point}: runs of {len(configs)} different configurations "
                f"(config_id {'; '.join(parts)}); shown as separate rows, never averaged together"
            )
        groups.extend(configs.values())
    for g in groups:
        for seed, rs in g.by_seed.items():
            if len(rs) > 1:
                dirs = ", ".join(str(r.get("run_dir", "?")) for r in rs)
                warnings.append(f"{g.dataset} {g.backbone or '-'} {g.method} {g.shots} shots seed {seed}: {len(rs)} runs ({dirs}); averaged as one seed")
    return groups


def _stat_cell(values: Sequence[float], paper: tuple[float, str] | None) -> Cell:
    mean, std, n = mean_std(values)
    cell = Cell(mean=mean, std=std if n > 1 else None, n=n)
    if paper is not None:
        cell.paper, cell.diff = float(paper[0]), mean - float(paper[0])
    return cell


def _ordered(items: Iterable[str], first: Sequence[str]) -> list[str]:
    """``items`` in ``first``'s order, then the rest alphabetically."""
    items = set(items)
    return [x for x in first if x in items] + sorted(items - set(first), key=str)


def _source_note(paper: PaperResults, used: set[str], rows: Sequence[Row], synthetic: bool, enabled: bool, no_backbone: bool = False) -> str:
    """One line: which of the paper's tables the values beside the cells come from, or why none."""
    if synthetic:
        return "Paper values: none (a synthetic task is not in the paper)."
    if not enabled:
        return "Paper values: not shown (--no-paper)."
    if not used:
        why = "no backbone recorded with these runs" if no_backbone else "the paper reports no cell of this setting"
        return f"Paper values: none match ({why})."
    where = "; ".join(paper.source(name) for name in TABLE_NAMES if name in used)
    copied = any(not row.id.startswith("hegraphadapter") and any(c.paper is not None for c in row.cells.values()) for row in rows)
    caveat = " Its baseline rows are copied from earlier papers, not re-run." if copied else ""
    return f"Paper values: HeGraphAdapter paper (Jiang et al.), {where}.{caveat}"


def _average_cell(cells: Mapping[str, Cell], expected: Sequence[str], lookup, use_paper: bool, used: set[str]) -> Cell | None:
    """Mean of ``cells`` over the ``expected`` columns it has (no std); ``None`` for fewer than two.

    The paper's value is its stated average when every expected column is there, else the mean of
    its values over the same columns when it has them all.
    """
    have = [c for c in expected if c in cells]
    if len(have) < min(2, len(expected)):  # the average of one column would only repeat it
        return None
    mean = statistics.fmean(cells[c].mean for c in have)
    complete = len(have) == len(expected)
    cell = Cell(mean=mean, std=None, n=len(have), note="" if complete else f"avg of {len(have)}/{len(expected)}", average=True)
    found = None
    if use_paper and complete:
        found = lookup(AVERAGE)
    elif use_paper:
        parts = [lookup(c) for c in have]
        if all(parts):
            found = (statistics.fmean(p[0] for p in parts), parts[0][1])
            cell.paper_note = f"on the same {len(have)}"
    if found is not None:
        cell.paper, cell.diff = float(found[0]), mean - float(found[0])
        used.add(found[1])
    return cell


def _base_method(row_id: str) -> str:
    """The registry name of a row id: without `` (val-selected)`` or `` [config <id>]``."""
    return row_id.removesuffix(VAL_SELECTED).split(CONFIG_MARK)[0]


def _method_rows(methods: Iterable[str], paper: PaperResults) -> list[Row]:
    """One row per method in the paper's order; rows of its several configurations, then its
    val-selected row, right after its own."""
    methods = set(methods)
    rows = []
    for base in _ordered({_base_method(m) for m in methods}, paper.order("methods")):
        mine = sorted((m for m in methods if _base_method(m) == base), key=lambda m: (m.endswith(VAL_SELECTED), m))
        rows += [Row(m, paper.display("methods", base) + m[len(base):]) for m in mine]
    return rows


def val_selected_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-dataset (and per-shots) tuning, chosen on validation only (issue 10, the paper's per-dataset weights).

    For every (experiment, dataset, backbone, method, shots, seed) whose runs cover two or more
    grid points (records with ``params``), the point with the best validation accuracy is kept
    (ties: the first point in sorted order) as one record of method ``"<method> (val-selected)"``
    without ``params``; the chosen point is in ``selected_params``. Only that point's test
    accuracy is reported, so the choice never looks at test; each seed chooses on its own
    validation split, as a user with one few-shot set would.
    """
    pools: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("params") and isinstance(r.get("val_acc"), (int, float)) and r["val_acc"] >= 0:
            key = (r.get("experiment"), r.get("dataset"), r.get("backbone"), r["method"], int(r["shots"]), r["seed"])
            pools[key].append(r)
    chosen = []
    for pool in pools.values():
        if len({_freeze(r["params"]) for r in pool}) < 2:
            continue
        best = max(sorted(pool, key=lambda r: _freeze(r["params"])), key=lambda r: r["val_acc"])  # max keeps the first of ties
        record = {k: v for k, v in best.items() if k not in ("params", "config_id")}  # a choice among configurations
        record.update(method=best["method"] + VAL_SELECTED, selected_params=dict(best["params"]), grid_points=len(pool))
        chosen.append(record)
    return chosen


def _title_suffix(synthetic: bool) -> str:
    return f" {SYNTHETIC_NOTE}" if synthetic else ""


def _backbone_rank(paper: PaperResults, backbone: str | None) -> tuple[int, str]:
    """Sort key: the paper's backbones in its order, then others alphabetically, then none recorded."""
    order = paper.order("backbones")
    if backbone in order:
        return (order.index(backbone), "")
    return (len(order) + (backbone is None), backbone or "")


def _backbone_label(backbone: str | None) -> str:
    return backbone or "backbone not recorded"


def _fewshot_tables(groups: Sequence[_Group], paper: PaperResults, enabled: bool) -> list[Table]:
    tables = []
    by_setting: dict[tuple, list[_Group]] = defaultdict(list)
    for g in groups:
        if not g.params:
            by_setting[(g.synthetic, g.backbone, g.shots)].append(g)
    for (synthetic, backbone, shots), gs in sorted(by_setting.items(), key=lambda kv: (kv[0][0], _backbone_rank(paper, kv[0][1]), kv[0][2])):
        use_paper = enabled and not synthetic and backbone is not None
        datasets = _ordered({g.dataset for g in gs}, paper.order("datasets"))
        expected = datasets if synthetic else _ordered({*datasets, *paper.order("datasets")}, paper.order("datasets"))
        rows = _method_rows({g.method for g in gs}, paper)
        used: set[str] = set()
        for row in rows:
            for g in gs:  # one group per (method, dataset) here: backbone, shots and params are fixed
                if g.method == row.id:
                    found = paper.fewshot(g.method, g.dataset, backbone, shots) if use_paper else None
                    if found:
                        used.add(found[1])
                    row.cells[g.dataset] = _stat_cell(g.per_seed("test_acc"), found)
            if len(datasets) > 1:
                avg = _average_cell(row.cells, expected, lambda col, m=row.id: paper.fewshot(m, col, backbone, shots), use_paper, used)
                if avg is not None:
                    row.cells[AVERAGE] = avg
        columns = [(d, paper.display("datasets", d)) for d in datasets] + ([(AVERAGE, "Average")] if len(datasets) > 1 else [])
        title = f"Few-shot classification: {_backbone_label(backbone)}, {shots}-shot{_title_suffix(synthetic)}"
        note = _source_note(paper, used, rows, synthetic, enabled, backbone is None)
        tables.append(Table("fewshot", title, note, {"backbone": backbone, "shots": shots}, columns, rows, synthetic, _seeds(gs)))
    return tables


def _shots_tables(groups: Sequence[_Group], paper: PaperResults, enabled: bool) -> list[Table]:
    """Fig. 2 as a table: methods x shots, for one dataset or averaged over several."""
    tables = []
    by_setting: dict[tuple, list[_Group]] = defaultdict(list)
    for g in groups:
        if not g.params:
            by_setting[(g.synthetic, g.backbone)].append(g)
    for (synthetic, backbone), gs in sorted(by_setting.items(), key=lambda kv: (kv[0][0], _backbone_rank(paper, kv[0][1]))):
        shots = sorted({g.shots for g in gs})
        if len(shots) < 2:
            continue
        use_paper = enabled and not synthetic and backbone is not None
        datasets = _ordered({g.dataset for g in gs}, paper.order("datasets"))
        expected = datasets if synthetic else _ordered({*datasets, *paper.order("datasets")}, paper.order("datasets"))
        target = datasets[0] if len(datasets) == 1 else AVERAGE
        rows = _method_rows({g.method for g in gs}, paper)
        used: set[str] = set()
        for row in rows:
            for k in shots:
                mine = [g for g in gs if g.method == row.id and g.shots == k]
                if not mine:
                    continue
                if target != AVERAGE:
                    found = paper.fewshot(row.id, target, backbone, k) if use_paper else None
                    row.cells[str(k)] = _stat_cell(mine[0].per_seed("test_acc"), found)
                else:  # the mean over datasets of each dataset's seed mean, as the paper averages
                    means = {g.dataset: statistics.fmean(g.per_seed("test_acc")) for g in mine}
                    complete = all(d in means for d in expected)
                    note = "" if complete else f"avg of {len(means)}/{len(expected)}"
                    found = paper.fewshot(row.id, AVERAGE, backbone, k) if use_paper and complete else None
                    row.cells[str(k)] = cell = Cell(mean=statistics.fmean(means.values()), std=None, n=len(means), note=note, average=True)
                    if found is not None:
                        cell.paper, cell.diff = float(found[0]), cell.mean - float(found[0])
                if found is not None:
                    used.add(found[1])
        columns = [(str(k), f"{k}-shot") for k in shots]
        what = paper.display("datasets", target) if target != AVERAGE else f"average over {len(datasets)} datasets"
        title = f"Accuracy vs shots (Fig. 2): {_backbone_label(backbone)}, {what}{_title_suffix(synthetic)}"
        note = _source_note(paper, used, rows, synthetic, enabled, backbone is None)
        tables.append(Table("shots", title, note, {"backbone": backbone, "dataset": target}, columns, rows, synthetic, _seeds(gs)))
    return tables


def _dg_tables(groups: Sequence[_Group], paper: PaperResults, enabled: bool) -> list[Table]:
    tables = []
    by_setting: dict[tuple, list[_Group]] = defaultdict(list)
    for g in groups:
        if not g.params and any(r.get("targets") for rs in g.by_seed.values() for r in rs):
            by_setting[(g.synthetic, g.backbone, g.shots, g.dataset)].append(g)
    for (synthetic, backbone, shots, dataset), gs in sorted(by_setting.items(), key=lambda kv: (kv[0][0], _backbone_rank(paper, kv[0][1]), *kv[0][2:])):
        use_paper = enabled and not synthetic and backbone is not None
        present = {t for g in gs for rs in g.by_seed.values() for r in rs for t in (r.get("targets") or {})}
        targets = _ordered(present, paper.order("dg_targets"))
        expected = [dataset, *(targets if synthetic else _ordered({*targets, *paper.order("dg_targets")}, paper.order("dg_targets")))]
        rows = _method_rows({g.method for g in gs}, paper)
        used: set[str] = set()
        for row in rows:
            mine = [g for g in gs if g.method == row.id]
            for col in [dataset, *targets]:
                metric = "test_acc" if col == dataset else col
                values = [v for g in mine for v in g.per_seed(metric)]
                if values:
                    found = paper.dg(row.id, col, dataset, backbone, shots) if use_paper else None
                    if found:
                        used.add(found[1])
                    row.cells[col] = _stat_cell(values, found)
            avg = _average_cell(row.cells, expected, lambda col, m=row.id: paper.dg(m, col, dataset, backbone, shots), use_paper, used)
            if avg is not None:
                row.cells[AVERAGE] = avg
        columns = [(dataset, paper.display("datasets", dataset))]
        columns += [(t, paper.display("datasets", t)) for t in targets] + [(AVERAGE, "Average")]
        title = (
            f"Domain generalisation: {_backbone_label(backbone)}, trained on {paper.display('datasets', dataset)} "
            f"{shots}-shot (Average: source and targets, as the paper){_title_suffix(synthetic)}"
        )
        note = _source_note(paper, used, rows, synthetic, enabled, backbone is None)
        tables.append(Table("dg", title, note, {"backbone": backbone, "shots": shots, "dataset": dataset}, columns, rows, synthetic, _seeds(gs)))
    return tables


def _value_label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _sort_value(value: Any) -> tuple:
    return (0, float(value), "") if is_number(value) else (1, 0.0, str(value))


def _sensitivity_tables(groups: Sequence[_Group], paper: PaperResults, enabled: bool) -> list[Table]:
    tables = []
    by_sweep: dict[tuple, list[_Group]] = defaultdict(list)
    for g in groups:
        if g.params:
            keys = tuple(k for k, _ in g.params)
            by_sweep[(g.synthetic, g.dataset, g.backbone, g.shots, keys)].append(g)
    # the paper's Table 3 row order (p2p, v2p, n2p, n2p at test time), then other keys by name
    row_keys = [row.get("key") for row in (paper.tables.get("table3_sensitivity") or {}).get("values", [])]

    def rank(item: tuple) -> tuple:
        synthetic, dataset, backbone, shots, keys = item[0]
        first = row_keys.index(keys[0]) if len(keys) == 1 and keys[0] in row_keys else len(row_keys)
        return (synthetic, str(dataset), str(backbone), shots, first, keys)

    for (synthetic, dataset, backbone, shots, keys), gs in sorted(by_sweep.items(), key=rank):
        use_paper = enabled and not synthetic and backbone is not None
        key = ", ".join(keys)
        points = sorted({tuple(v for _, v in g.params) for g in gs}, key=lambda p: tuple(map(_sort_value, p)))
        columns = [(" / ".join(map(_value_label, p)), " / ".join(map(_value_label, p))) for p in points]
        rows = _method_rows({g.method for g in gs}, paper)
        used: set[str] = set()
        for row in rows:
            ref = paper.sensitivity_row(key, row.id, dataset, backbone, shots) if use_paper and len(keys) == 1 else None
            for point, (col, _) in zip(points, columns):
                values = [v for g in gs if g.method == row.id and tuple(v for _, v in g.params) == point for v in g.per_seed("test_acc")]
                if not values:
                    continue
                found = None
                if ref is not None and isinstance(point[0], bool):
                    match = [a for w, a in zip(ref["weights"], ref["accuracy"]) if w is point[0]]
                    found = (match[0], "table3_sensitivity") if match else None
                elif ref is not None and is_number(point[0]):
                    match = [a for w, a in zip(ref["weights"], ref["accuracy"]) if math.isclose(w, point[0], abs_tol=1e-9)]
                    found = (match[0], "table3_sensitivity") if match else None
                if found:
                    used.add(found[1])
                row.cells[col] = _stat_cell(values, found)
        where = f"{paper.display('datasets', dataset)}, {_backbone_label(backbone)}, {shots}-shot"
        reading = ""
        if key in row_keys:  # name the meta-path the key weights, e.g. "p2p weight"
            reading = f" ({paper.tables['table3_sensitivity']['values'][row_keys.index(key)].get('metapath', '?')} weight)"
        elif key == LEARN_KEY:
            reading = " (all fusion weights learned)"
        if use_paper and "table3_sensitivity" in used and key in row_keys:
            row_no = row_keys.index(key) + 1
            reading = f"{reading[:-1]}; paper Table 3 row {row_no}, by our reading of its lost symbols)"
        elif use_paper and "table3_sensitivity" in used:
            reading = f"{reading[:-1]}; paper Table 3, column 'learn')"
        title = f"Sensitivity to `{key}`{reading}: {where}{_title_suffix(synthetic)}"
        note = _source_note(paper, used, rows, synthetic, enabled, backbone is None)
        setting = {"backbone": backbone, "shots": shots, "dataset": dataset, "key": key}
        setting["values"] = {col: (p[0] if len(p) == 1 else list(p)) for (col, _), p in zip(columns, points)}
        tables.append(Table("sensitivity", title, note, setting, columns, rows, synthetic, _seeds(gs)))
    return tables


def _backbone_tables(groups: Sequence[_Group], paper: PaperResults, enabled: bool) -> list[Table]:
    t4 = paper.tables.get("table4_backbones") or {}
    dataset, shots = t4.get("dataset", "imagenet"), t4.get("shots", 16)
    gs = [g for g in groups if not g.params and not g.synthetic and g.backbone and g.dataset == dataset and g.shots == shots]
    if not gs:
        return []
    backbones = _ordered({g.backbone for g in gs}, paper.order("backbones"))
    rows = _method_rows({g.method for g in gs}, paper)
    used: set[str] = set()
    for row in rows:
        for b in backbones:
            values = [v for g in gs if (g.method, g.backbone) == (row.id, b) for v in g.per_seed("test_acc")]
            if values:
                found = paper.backbone(row.id, b, dataset, shots) if enabled else None
                if found:
                    used.add(found[1])
                row.cells[b] = _stat_cell(values, found)
    columns = [(b, paper.display("backbones", b)) for b in backbones]
    title = f"CLIP backbones: {paper.display('datasets', dataset)}, {shots}-shot"
    note = _source_note(paper, used, rows, False, enabled)
    return [Table("backbones", title, note, {"dataset": dataset, "shots": shots}, columns, rows, False, _seeds(gs))]


def _complexity_tables(groups: Sequence[_Group], paper: PaperResults, enabled: bool) -> list[Table]:
    """Table 5 per (dataset, backbone): training-loop seconds per epoch, selection seconds, epochs, trained parameters.

    Every method records the same timings (:mod:`hgadapter.runner`): ``train_seconds`` is its
    training loop (per-epoch validation included), ``select_seconds`` the hyper-parameter choice
    after it, each on ``threads`` threads of ``device``; the note says which threads and devices.
    """
    t5 = paper.tables.get("table5_complexity") or {}
    shots = t5.get("shots", 16)
    tables = []
    by_setting: dict[tuple, list[_Group]] = defaultdict(list)
    for g in groups:
        if not g.params and g.shots == shots:
            trained = [r for rs in g.by_seed.values() for r in rs if is_number(r.get("epochs")) and r["epochs"] > 0 and is_number(r.get("train_seconds"))]
            if trained:
                by_setting[(g.synthetic, g.dataset, g.backbone)].append(g)
    for (synthetic, dataset, backbone), gs in sorted(by_setting.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), _backbone_rank(paper, kv[0][2]))):
        use_paper = enabled and not synthetic and (dataset, backbone) == (t5.get("dataset"), t5.get("backbone"))
        rows = _method_rows({g.method for g in gs}, paper)
        used: set[str] = set()
        kept: list[dict] = []
        for row in rows:
            records = [r for g in gs if g.method == row.id for rs in g.by_seed.values() for r in rs if r.get("epochs")]
            kept += records
            published = (t5.get("values") or {}).get(row.id, {}) if use_paper else {}
            columns = (
                ("seconds_per_epoch", [r["train_seconds"] / r["epochs"] for r in records], "seconds_per_epoch"),
                ("select_seconds", [float(r["select_seconds"]) for r in records if is_number(r.get("select_seconds"))], None),
                ("epochs", [float(r["epochs"]) for r in records], None),
                ("params_millions", [r["trainable_params"] / 1e6 for r in records if is_number(r.get("trainable_params"))], "tunable_params_millions"),
            )
            for col, values, paper_key in columns:
                if values:
                    found = (published[paper_key], "table5_complexity") if paper_key in published else None
                    if found:
                        used.add(found[1])
                    row.cells[col] = cell = _stat_cell(values, found)
                    if col in ("epochs", "params_millions") and min(values) == max(values):
                        cell.std = None  # a setting, not a measurement: no spread to show
        title = f"Complexity (Table 5): {paper.display('datasets', dataset)}, {_backbone_label(backbone)}, {shots}-shot{_title_suffix(synthetic)}"
        note = _source_note(paper, used, rows, synthetic, enabled, backbone is None)
        devices = ", ".join(sorted({str(r.get("device", "?")) for r in kept}))
        threads = ", ".join(sorted({str(r["threads"]) for r in kept if r.get("threads") is not None}, key=int)) or "?"
        note += " Timings: training-loop seconds per epoch (per-epoch validation included) and seconds choosing hyper-parameters after training;"
        note += f" ours on {devices}"
        if "table5_complexity" in used:  # timings only compare on the same hardware
            note += f", the paper's on an {t5.get('device', 'unnamed device')}"
        note += f"; intra-op threads: {threads}."
        older = sum(1 for r in kept if not is_number(r.get("select_seconds")))
        if older:
            note += (
                f" {older} run(s) record no selection seconds (runs from before every method recorded them, whose"
                " training seconds also counted selection, or results files that do not keep them)."
            )
        columns = [("seconds_per_epoch", "train loop s / epoch"), ("select_seconds", "selection s"), ("epochs", "epochs"), ("params_millions", "trained params (M)")]
        tables.append(Table("complexity", title, note, {"dataset": dataset, "backbone": backbone, "shots": shots}, columns, rows, synthetic, _seeds(gs)))
    return tables


def _selection_tables(groups: Sequence[_Group], paper: PaperResults) -> list[Table]:
    """Per (dataset, backbone, shots): validation and test accuracy and training seconds per run.

    What ``hgadapter compare`` adds to the tables: how well validation predicted test, and cost.
    """
    tables = []
    by_setting: dict[tuple, list[_Group]] = defaultdict(list)
    for g in groups:
        if not g.params:
            by_setting[(g.synthetic, g.dataset, g.backbone, g.shots)].append(g)
    for (synthetic, dataset, backbone, shots), gs in sorted(by_setting.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), _backbone_rank(paper, kv[0][2]), kv[0][3])):
        rows = _method_rows({g.method for g in gs}, paper)
        for row in rows:
            group = next(g for g in gs if g.method == row.id)  # one per method: the rest is fixed
            for col in _RECORD_METRICS:
                values = group.per_seed(col)
                if values:
                    row.cells[col] = cell = _stat_cell(values, None)
                    if col == "train_seconds":
                        cell.std = None  # a timing: its spread over seeds says little
        columns = [("val_acc", "val acc (%)"), ("test_acc", "test acc (%)"), ("train_seconds", "train s / run")]
        title = f"Validation, test and time: {paper.display('datasets', dataset)}, {_backbone_label(backbone)}, {shots}-shot{_title_suffix(synthetic)}"
        note = "Validation accuracy chose each method's hyper-parameters; the test split was read once, afterwards."
        tables.append(Table("selection", title, note, {"dataset": dataset, "backbone": backbone, "shots": shots}, columns, rows, synthetic, _seeds(gs)))
    return tables


VAL_FROM_TEST_MARK = "†"


def _flag_val_from_test(tables: Sequence[Table], records: Sequence[Mapping[str, Any]]) -> None:
    """Mark every table holding runs whose cache drew validation from the test images
    (``--val-source test``, CoOp's ImageNet protocol; the record's ``val_from_test``): a † on the
    dataset's column where the columns are datasets, and a footnote in the table's note."""
    flagged = {(r.get("dataset") or "unknown", r.get("backbone")) for r in records if r.get("val_from_test")}
    for table in tables:
        cols = {c for c, _ in table.columns}
        setting = table.setting
        hit = sorted({
            d for d, b in flagged
            if (setting.get("dataset") in (d, AVERAGE) or d in cols)
            and ("backbone" not in setting or setting["backbone"] == b or b in cols)
        })
        if not hit:
            continue
        table.columns = [(c, f"{label} {VAL_FROM_TEST_MARK}" if c in hit else label) for c, label in table.columns]
        table.paper_note += (
            f" {VAL_FROM_TEST_MARK} Validation drawn from the test images (CoOp's ImageNet protocol, "
            f"`--val-source test`) for: {', '.join(hit)}."
        )


def _long_rows(table: Table) -> list[dict[str, Any]]:
    out = []
    for row in table.rows:
        for col, _ in table.columns:
            cell = row.cells.get(col)
            if cell is None:
                continue
            line = {
                "table": table.kind,
                "backbone": table.setting.get("backbone"),
                "dataset": table.setting.get("dataset"),
                "method": row.id,
                "shots": table.setting.get("shots"),
                "key": table.setting.get("key"),
                "value": None,
            }
            if table.kind == "fewshot":
                line["dataset"] = col
            elif table.kind == "shots":
                line["shots"] = int(col)
            elif table.kind == "dg":  # the column is the tested dataset; key/value name the training set
                line["dataset"], line["key"], line["value"] = col, "trained_on", table.setting["dataset"]
            elif table.kind == "sensitivity":
                line["value"] = table.setting["values"][col]
            elif table.kind == "backbones":
                line["backbone"] = col
            elif table.kind in ("complexity", "selection"):  # the column is the quantity: s/epoch, val_acc, ...
                line["key"] = col
            note = "; ".join(x for x in (cell.note, cell.paper_note and f"paper {cell.paper_note}") if x)
            line.update(mean=cell.mean, std=cell.std, n=cell.n, paper=cell.paper, diff=cell.diff, note=note)
            out.append(line)
    return out


def build_report(
    records: Sequence[Mapping[str, Any]],
    paper: Mapping[str, Any] | None,
    *,
    selection: bool = False,
    names: Mapping[str, Any] | None = None,
) -> Report:
    """Group ``records`` by (dataset, backbone, method, shots, params) and configuration (``config_id``),
    average over seeds, lay out tables.

    Args:
        records: run records (:func:`hgadapter.records.load_records`).
        paper: :func:`load_paper_results`'s answer, or ``None`` for no paper values.
        selection: add, per (dataset, backbone, shots), a table of validation accuracy, test
            accuracy and training seconds per method (``kind="selection"``; ``hgadapter compare``).
        names: where display names come from when ``paper`` is ``None`` (the paper results file
            without its values, :func:`display_names`); else the methods' registry ids show.

    Returns:
        The tables (accuracy vs shots, few-shot, domain generalisation, sensitivity, backbones,
        complexity, then selection; each only when some records fit it) and one long row per cell.
    """
    warnings: list[str] = []
    groups = _group(records, warnings)
    look = PaperResults(paper if paper is not None else names)
    enabled = paper is not None
    # Accuracy tables also show each grid's val-selected point beside the fixed defaults.
    accuracy_groups = groups + _group(val_selected_records(records), warnings)
    shots_tables = _shots_tables(accuracy_groups, look, enabled)
    # With one dataset the accuracy-vs-shots table already holds every per-shots cell; one-column
    # few-shot tables would only repeat it.
    single = {(t.synthetic, t.setting["backbone"]) for t in shots_tables if t.setting["dataset"] != AVERAGE}
    fewshot_tables = [t for t in _fewshot_tables(accuracy_groups, look, enabled) if (t.synthetic, t.setting["backbone"]) not in single]
    tables = [
        *shots_tables,
        *fewshot_tables,
        *_dg_tables(groups, look, enabled),
        *_sensitivity_tables(groups, look, enabled),
        *_backbone_tables(groups, look, enabled),
        *_complexity_tables(groups, look, enabled),
        *(_selection_tables(groups, look) if selection else []),
    ]
    _flag_val_from_test(tables, records)
    rows = [line for table in tables for line in _long_rows(table)]
    return Report(tables=tables, rows=rows, runs=len(records), warnings=warnings, paper_file=(paper or {}).get("_path"))


# --------------------------------------------------------------------------------------------
# Formatting and writing


def _signed(x: float) -> str:
    return f"+{x:.2f}" if x >= 0.005 else (f"−{-x:.2f}" if x <= -0.005 else "±0.00")


def format_cell(cell: Cell | None) -> str:
    """``65.20 ± 0.31 (n=2; paper 66.18, −0.98)``; ``—`` for no runs."""
    if cell is None:
        return "—"
    text = f"{cell.mean:.2f}" + (f" ± {cell.std:.2f}" if cell.std is not None else "")
    extra = []
    if not cell.average and cell.n < FULL_SEEDS:
        extra.append(f"n={cell.n}")
    if cell.note:
        extra.append(cell.note)
    if cell.paper is not None:
        same = f" {cell.paper_note}" if cell.paper_note else ""
        extra.append(f"paper {cell.paper:.2f}{same}, {_signed(cell.diff)}")
    return text + (f" ({'; '.join(extra)})" if extra else "")


def _escape(text: str) -> str:
    # a line break inside a name would end the table row
    return " ".join(text.replace("|", "\\|").splitlines())


def format_markdown(report: Report, *, title: str = "Results report") -> str:
    """All tables as markdown under ``# title``: per table a heading, one line on the paper values, the table."""
    lines = [
        f"# {title}",
        "",
        f"{report.runs} runs. Test accuracy (%), mean ± sample std over seeds; `n=` when fewer than {FULL_SEEDS} seeds. "
        "Beside a cell: the paper's value and ours minus the paper's.",
    ]
    if report.paper_file:
        lines.append(f"Paper values from `{report.paper_file}`.")
    for table in report.tables:
        lines += ["", f"## {_escape(table.title)}", "", _escape(table.paper_note), ""]
        head = ["Method", *(label for _, label in table.columns)]
        lines.append("| " + " | ".join(_escape(h) for h in head) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|")
        for row in table.rows:
            cells = [format_cell(row.cells.get(col)) for col, _ in table.columns]
            lines.append("| " + " | ".join(_escape(c) for c in [row.label, *cells]) + " |")
    if report.warnings:
        lines += ["", "## Notes", ""] + [f"- {w}" for w in report.warnings]
    return "\n".join(lines) + "\n"


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else (round(row[k], 4) if isinstance(row[k], float) else row[k]) for k in CSV_COLUMNS})
    return buffer.getvalue()


def display_names(paper_path: str | Path | None = None) -> dict[str, Any] | None:
    """The display names of the paper results file (methods, datasets, backbones), none of its values;
    ``None`` when the file cannot be read (the ids show instead)."""
    try:
        data = load_paper_results(paper_path)
    except ReportError:
        return None
    return {k: data[k] for k in ("methods", "datasets", "dg_targets", "backbones") if k in data}


def format_csv(report: Report) -> str:
    """One line per table cell (:data:`CSV_COLUMNS`), as ``report.csv`` holds it."""
    return _csv_text(report.rows)


def report_payload(report: Report) -> dict[str, Any]:
    """The machine-readable report, as ``report.json`` holds it: rows, tables, warnings."""
    return {
        "runs": report.runs,
        "paper_file": report.paper_file,
        "columns": list(CSV_COLUMNS),
        "rows": report.rows,
        "tables": [asdict(t) for t in report.tables],
        "warnings": report.warnings,
    }


def write_report(runs_dir: str | Path, out_dir: str | Path | None = None, *, paper_path: str | Path | None = None, use_paper: bool = True) -> Path:
    """Read the runs below ``runs_dir`` and write ``report.md``, ``report.csv``, ``report.json`` and ``report.tex``.

    Args:
        runs_dir: a folder of run directories (each with ``metrics.json``).
        out_dir: where to write; default ``runs_dir/report``.
        paper_path: the paper results file; default :func:`paper_results_path`.
        use_paper: ``False`` leaves the paper's values out (and reads no paper file).

    Returns:
        ``out_dir``.

    Raises:
        RecordError: ``runs_dir`` holds no run or a malformed metrics file.
        ReportError: the paper results file is missing or malformed.
        OutputError: ``out_dir`` cannot be created or written (checked first).
    """
    out = check_output_dir(out_dir if out_dir is not None else Path(runs_dir) / "report")
    records = load_records(runs_dir)
    paper = load_paper_results(paper_path) if use_paper else None
    report = build_report(records, paper, names=None if use_paper else display_names(paper_path))
    atomic_write_text(out / f"{REPORT_STEM}.md", format_markdown(report))
    atomic_write_text(out / f"{REPORT_STEM}.csv", format_csv(report))
    atomic_write_json(out / f"{REPORT_STEM}.json", report_payload(report))
    atomic_write_text(out / f"{REPORT_STEM}.tex", format_latex(report))
    return out


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``hgadapter report``'s arguments to ``parser``."""
    parser.add_argument("runs_dir", metavar="RUNS_DIR", help="folder of finished runs (searched recursively for metrics.json)")
    parser.add_argument("--out", type=output_path, default=None, help="output directory (default: RUNS_DIR/report)")
    parser.add_argument("--paper", default=None, metavar="PATH", help="paper results YAML (default: experiments/paper_results.yaml)")
    parser.add_argument("--no-paper", action="store_true", help="leave the paper's values out")


def run_report(args: argparse.Namespace) -> int:
    """Run ``hgadapter report`` from parsed arguments; prints where it wrote, then the markdown."""
    out = write_report(args.runs_dir, args.out, paper_path=args.paper, use_paper=not args.no_paper)
    print(f"wrote {', '.join(str(out / f'{REPORT_STEM}.{ext}') for ext in ('md', 'csv', 'json', 'tex'))}")
    print()
    print((out / f"{REPORT_STEM}.md").read_text(encoding="utf-8"), end="")
    return 0
