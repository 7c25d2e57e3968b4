"""Curves of a folder of runs: accuracy vs shots, hyper-parameter sensitivity, training curves.

- :func:`plot_accuracy_vs_shots`: the paper's Figure 2 (Sec. 4.2), few-shot test accuracy against
  the number of shots per class, one panel per dataset plus their average;
- :func:`plot_sensitivity`: the paper's Table 3 (Sec. 4.3) as curves, test accuracy against the
  value of each swept hyper-parameter (a sweep's ``params``);
- :func:`plot_training_curves`: loss and validation accuracy per epoch from ``history.json``;
- :func:`plot_figures`: every figure a folder of runs supports (``hgadapter figures RUNS_DIR``).

Everything here reads records through :mod:`hgadapter.records` (no torch) and only plots them.
Means are over the seeds of the records that share a point (a seed run twice counts once,
:func:`hgadapter.records.seed_values`) with their sample standard deviation (n - 1), as
:func:`hgadapter.records.mean_std` computes for every table and figure.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hgadapter._cli import output_path  # torch-free
from hgadapter.records import HISTORY_FILE, METRICS_FILE, load_history, load_record, load_records, mean_std, seed_values
from viz import style

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "plot_accuracy_vs_shots",
    "plot_sensitivity",
    "plot_training_curves",
    "plot_figures",
    "add_figures_arguments",
    "run_figures_command",
    "load_paper_values",
    "paper_sensitivity",
    "sensitivity_labels",
    "dataset_names",
    "MAX_TRAINING_RUNS",
    "MAX_LINES",
]

Record = Mapping[str, Any]

MAX_TRAINING_RUNS = 12  # more lines than this in one training-curve figure cannot be told apart
MAX_LINES = 6  # more methods than this in one accuracy-vs-shots panel: one panel per method family
_PANEL_HEIGHT = 1.8  # inches per row of small multiples
_MAX_COLUMNS = 4  # small multiples per row at the text width
_AVERAGE = "Average"


# --- accuracy vs shots (Figure 2) -------------------------------------------------------------


def plot_accuracy_vs_shots(
    records: Sequence[Record],
    out: str | Path | None,
    *,
    dataset: str | Sequence[str] | None = None,
    backbone: str | None = None,
    formats: Sequence[str] | None = style.DEFAULT_FORMATS,
    dpi: int = style.DPI,
) -> Figure:
    """Test accuracy against shots per class, one line per method, one panel per dataset.

    Only records without sweep ``params`` count (a grid point of a sensitivity sweep is not the
    method's result). Each point is the mean test accuracy over the records of one (dataset,
    method, shots), usually the seeds, with a band of one standard deviation. The x axis is
    log2 with a tick at each shot count present (1, 2, 4, 8, 16 in the paper). With several
    datasets a last panel, "Average", shows per method and shot count the mean over datasets of
    the per-dataset means, at the shot counts where the method has every dataset (no band).

    More than :data:`MAX_LINES` methods cannot be told apart in one panel: then the methods are
    grouped by family (:data:`viz.style.METHOD_FAMILIES`). One dataset gets one panel per family,
    its members in colour, zero-shot CLIP and full HeGraphAdapter in colour as references, every
    other method as a thin grey line for context. Several datasets get their per-dataset panels
    with only the references and the HeGraphAdapter family in colour, and the average one panel
    per family.

    Args:
        records: run records (:func:`hgadapter.records.load_records`).
        out: figure path (``figs/acc.png``, or without suffix); ``None`` draws without saving.
        dataset: keep only this dataset (or these datasets); ``None`` keeps all.
        backbone: keep only this backbone; needed when the records hold several.
        formats: formats written beside ``out`` (:func:`viz.style.save_figure`).
        dpi: dots per inch of the PNG.

    Returns:
        The figure. Each method's line in a panel has the method name as its ``gid``.

    Raises:
        ValueError: no records, none without ``params``, an unknown dataset or backbone, or
            several backbones and no ``backbone``.
    """
    plain = [r for r in _check_records(records) if not r.get("params")]
    if not plain:
        raise ValueError(
            f"all {len(records)} records are grid points of a sweep (they have 'params'); "
            "accuracy vs shots needs runs without params (hgadapter run, or a sweep without a grid)"
        )
    plain = _filter(plain, "backbone", backbone, single=True)
    plain = _filter(plain, "dataset", dataset)
    names = dataset_names()
    order = list(names)  # the paper's column order, then other datasets by name
    datasets = sorted({_value(r, "dataset") for r in plain}, key=lambda d: (order.index(d) if d in order else len(order), d))

    # (dataset, method) -> {shots: (mean, std, n)}
    table: dict[tuple[str, str], dict[int, tuple[float, float, int]]] = {}
    for (name, method, shots), accs in _group(plain, lambda r: (_value(r, "dataset"), r["method"], _shots(r))).items():
        table.setdefault((name, method), {})[shots] = mean_std(accs)
    methods = sorted({m for _, m in table}, key=style.method_order)
    all_shots = sorted({s for series in table.values() for s in series})

    Series = dict[str, dict[int, tuple[float, float, int]]]
    per_dataset: list[tuple[str, Series]] = [(name, {m: table[(name, m)] for m in methods if (name, m) in table}) for name in datasets]
    average: Series | None = None
    if len(datasets) > 1:
        average = {}
        for m in methods:
            common = [s for s in all_shots if all(s in table.get((name, m), {}) for name in datasets)]
            if common:
                average[m] = {s: (sum(table[(name, m)][s][0] for name in datasets) / len(datasets), 0.0, len(datasets)) for s in common}
    # (gid, title, series, the methods drawn in colour)
    panels: list[tuple[str, str, Series, set[str]]]
    if len(methods) <= MAX_LINES:
        panels = [(name, names.get(name, name), series, set(methods)) for name, series in per_dataset]
        if average is not None:
            panels.append((_AVERAGE, _AVERAGE, average, set(methods)))
    else:
        families = list(dict.fromkeys(style.method_family(m) for m in methods if m not in style.REFERENCE_METHODS))
        refs = set(style.REFERENCE_METHODS)
        if average is None:
            name, series = per_dataset[0]
            panels = [(f"{name}|{f}", f, series, refs | {m for m in methods if style.method_family(m) == f}) for f in families]
        else:
            own = refs | {m for m in methods if style.method_family(m) == style.method_family("hegraphadapter")}
            panels = [(name, names.get(name, name), series, own) for name, series in per_dataset]
            panels += [(f"{_AVERAGE}|{f}", f"{_AVERAGE}: {f}", average, refs | {m for m in methods if style.method_family(m) == f}) for f in families]

    with style.style_context():
        figure, axes = _grid(len(panels), dpi=dpi)
        for ax, (gid, name, series, coloured) in zip(axes, panels):
            # context first (grey, thin, no legend entry), then the coloured lines on top
            for method, points in sorted(series.items(), key=lambda item: item[0] in coloured):
                shots = sorted(points)
                means = [points[s][0] for s in shots]
                stds = [points[s][1] for s in shots]
                look = style.method_style(method)
                if method not in coloured:
                    ax.plot(shots, means, color="0.8", linewidth=0.7, marker="", gid=method, label="_other methods", zorder=1)
                    continue
                ax.plot(shots, means, label=style.method_label(method), gid=method, zorder=3, **look)
                if any(sd > 0 for sd in stds):
                    ax.fill_between(shots, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                    color=look["color"], alpha=0.15, linewidth=0)
            _shots_axis(ax, all_shots)
            ax.set_title(name)
            ax.set_gid(gid)  # the dataset id (or "Average"; "<dataset>|<family>" for a family panel), for whoever reads the figure back
        _label_outer(axes[: len(panels)], figure, xlabel="shots per class", ylabel="test accuracy (%)")
        _legend_below(figure, *axes[: len(panels)])
        parts = ["Few-shot test accuracy vs shots"]
        if len(methods) > MAX_LINES and len(datasets) == 1:
            if datasets[0] != "synthetic":  # the synthetic task is named once, at the end
                parts.append(names.get(datasets[0], datasets[0]))
        if len(methods) > MAX_LINES:
            parts.append("other methods in grey")
        backbones = sorted({_value(r, "backbone") for r in plain})
        if backbones != ["unknown"]:
            parts.append(", ".join(backbones))
        figure.suptitle(" · ".join(parts) + _synthetic_note(plain))
        if out is not None:
            style.save_figure(figure, out, formats=formats)
    return figure


def _shots_axis(ax: Axes, shots: list[int]) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(shots))
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.xaxis.set_minor_locator(NullLocator())
    if len(shots) == 1:
        ax.set_xlim(shots[0] / 1.5, shots[0] * 1.5)
    else:
        ax.set_xlim(shots[0] / 1.25, shots[-1] * 1.25)


# --- sensitivity (Table 3) --------------------------------------------------------------------


def plot_sensitivity(
    records: Sequence[Record],
    out: str | Path | None,
    *,
    paper: Mapping[str, Mapping[float, float]] | None = None,
    labels: Mapping[str, str] | None = None,
    dataset: str | Sequence[str] | None = None,
    backbone: str | None = None,
    formats: Sequence[str] | None = style.DEFAULT_FORMATS,
    dpi: int = style.DPI,
) -> Figure:
    """Test accuracy against the value of each swept hyper-parameter, one panel per key.

    Only records with sweep ``params`` (dotted config key -> value) count. A panel's point at
    value v is the mean (± one standard deviation, as a band) of the records whose ``params``
    set that key to v; when a grid sweeps several keys at once, the other keys are averaged
    over. One line per method (and per dataset and backbone when the records hold several).
    Numeric values get a numeric axis; a key with any other value (``"learn"``, ``true``) gets
    one evenly spaced tick per value.

    Args:
        records: run records (:func:`hgadapter.records.load_records`).
        out: figure path; ``None`` draws without saving.
        labels: panel titles by key (e.g. ``{"stages.1.metapaths.2.beta": "p2p weight"}``); the
            key itself otherwise.
        paper: optional published numbers, ``{key: {value: accuracy}}``, drawn dashed in black
            and labelled "paper" in the panel of that key.
        dataset: keep only this dataset (or these); ``None`` keeps all.
        backbone: keep only this backbone; ``None`` keeps all.
        formats: formats written beside ``out``.
        dpi: dots per inch of the PNG.

    Returns:
        The figure. A line's ``gid`` is ``"<key>|<method>"`` (``"<key>|paper"`` for the paper).

    Raises:
        ValueError: no records, none with ``params``, an unknown dataset or backbone, or paper
            values for a key that no record sweeps.
    """
    swept = [r for r in _check_records(records) if r.get("params")]
    if not swept:
        raise ValueError(
            f"none of the {len(records)} records has sweep 'params'; a sensitivity figure needs the runs of a sweep "
            "with a grid (e.g. hgadapter sweep experiments/sensitivity/...)"
        )
    swept = _filter(swept, "backbone", backbone)
    swept = _filter(swept, "dataset", dataset)
    for r in swept:
        if not isinstance(r["params"], Mapping):
            raise ValueError(f"record {r.get('run_dir', '?')}: 'params' should map config keys to values, got {r['params']!r}")
    order = list(labels or {})  # labelled keys in the labels' order (the paper's rows), then the rest by name
    keys = sorted({k for r in swept for k in r["params"]}, key=lambda k: (order.index(k) if k in order else len(order), k))
    paper = dict(paper or {})
    unknown = sorted(set(paper) - set(keys))
    if unknown:
        raise ValueError(f"paper values given for {unknown}, but the records sweep only {keys}")

    series_keys = ("method", "dataset", "backbone")
    varying = [k for k in series_keys if len({_value(r, k) for r in swept}) > 1] or ["method"]
    # one look per series across all panels: the method's own when only methods vary
    idents = sorted({tuple(_value(r, k) for k in series_keys) for r in swept}, key=lambda i: (style.method_order(i[0]), i[1:]))

    with style.style_context():
        figure, axes = _grid(len(keys), dpi=dpi, max_columns=3)
        for ax, key in zip(axes, keys):
            having = [r for r in swept if key in r["params"]]
            values = [r["params"][key] for r in having] + list(paper.get(key, {}))
            position = _value_positions(values)
            grouped = _group(having, lambda r: (tuple(_value(r, k) for k in series_keys), _hashable(r["params"][key])))
            lines: dict[tuple[str, ...], list[tuple[float, float, float]]] = defaultdict(list)
            for (ident, value), accs in grouped.items():
                mean, std, _ = mean_std(accs)
                lines[ident].append((position[value], mean, std))
            for ident in [i for i in idents if i in lines]:
                pts = sorted(lines[ident])
                xs, means, stds = [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]
                method = ident[0]
                parts = {"method": style.method_label(method), "dataset": ident[1], "backbone": ident[2]}
                look = style.method_style(method) if varying == ["method"] else style.series_style(idents.index(ident))
                ax.plot(xs, means, label=" · ".join(parts[k] for k in varying), gid=f"{key}|{method}", **look)
                if len(xs) == 1 and stds[0] > 0:  # a band needs two points: one value gets an error bar
                    ax.errorbar(xs, means, yerr=stds, color=look["color"], capsize=3, linewidth=1)
                elif any(sd > 0 for sd in stds):
                    ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                    color=look["color"], alpha=0.15, linewidth=0)
            if key in paper:
                pts = sorted((position[_hashable(v)], float(acc)) for v, acc in paper[key].items())
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=style.OKABE_ITO["black"], linestyle="--",
                        marker="x", label="paper", gid=f"{key}|paper")
            _value_axis(ax, position, numeric=_all_numeric(values))
            ax.set_title((labels or {}).get(key, key))
        _label_outer(axes[: len(keys)], figure, xlabel="value", ylabel="test accuracy (%)")
        _legend_below(figure, *axes[: len(keys)])
        figure.suptitle("Sensitivity to swept hyper-parameters" + _synthetic_note(swept))
        if out is not None:
            style.save_figure(figure, out, formats=formats)
    return figure


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _all_numeric(values: Sequence[Any]) -> bool:
    return all(_is_number(v) for v in values)


def _value_positions(values: Sequence[Any]) -> dict[Any, float]:
    """x position of each value: itself when all are numbers, else its rank (numbers first)."""
    unique = {_hashable(v) for v in values}
    if _all_numeric(list(unique)):
        return {v: float(v) for v in unique}
    ordered = sorted((v for v in unique if _is_number(v)), key=float) + sorted((v for v in unique if not _is_number(v)), key=str)
    return {v: float(i) for i, v in enumerate(ordered)}


def _value_axis(ax: Axes, position: dict[Any, float], *, numeric: bool) -> None:
    """A tick per value when there are few; log scale for positive values spanning 100x or more."""
    ordered = sorted(position, key=position.get)
    xs = [position[v] for v in ordered]
    if numeric and min(xs) > 0 and max(xs) >= 100 * min(xs):
        ax.set_xscale("log")
    if not numeric or len(ordered) <= 8:
        from matplotlib.ticker import NullLocator

        ax.set_xticks(xs, [_format_value(v) for v in ordered])
        ax.xaxis.set_minor_locator(NullLocator())


def _format_value(value: Any) -> str:
    return f"{value:g}" if _is_number(value) else str(value)


# --- training curves --------------------------------------------------------------------------


def plot_training_curves(
    runs: Sequence[str | Path | Record],
    out: str | Path | None,
    *,
    root: str | Path | None = None,
    title: str | None = None,
    formats: Sequence[str] | None = style.DEFAULT_FORMATS,
    dpi: int = style.DPI,
) -> Figure:
    """Training loss and validation accuracy per epoch, one line per run, from ``history.json``.

    A run's colour and marker are its method's (:func:`viz.style.method_style`); runs of one
    method differ by line style. Runs without a history (``zero_shot``, older runs) are skipped. Entries
    without a loss or a validation accuracy leave a gap in that panel only.

    The per-epoch validation accuracy is that of the part being trained (for HeGraphAdapter the
    adapted text classifier alone); the number a table reports is the run's ``val_acc`` after
    its selection step (HeGraphAdapter: the text classifier fused with the cache, alpha and beta
    chosen on validation). Each run's reported number is drawn as a star just right of its last
    epoch, joined to the curve's end by a dotted line, and the panel says so.

    Args:
        runs: run directories, or records whose ``run_dir`` is relative to ``root`` (as
            :func:`hgadapter.records.load_records` gives them).
        out: figure path; ``None`` draws without saving.
        root: the folder records' ``run_dir`` is relative to; the current directory if ``None``.
        title: figure title; default "Training curves".
        formats: formats written beside ``out``.
        dpi: dots per inch of the PNG.

    Returns:
        The figure. A line's ``gid`` is its run directory.

    Raises:
        ValueError: no runs, or none with a history.
    """
    if not runs:
        raise ValueError("no runs to plot; pass run directories or the records of load_records(RUNS_DIR)")
    base = Path(root) if root is not None else Path(".")
    curves = []
    for run in runs:
        if isinstance(run, Mapping):
            run_dir, record = base / str(run.get("run_dir", ".")), run
        else:
            run_dir = Path(run)
            record = load_record(run_dir) if (run_dir / METRICS_FILE).is_file() else {}
        history = load_history(run_dir)
        if history:
            curves.append((run_dir, record, history))
    if not curves:
        raise ValueError(
            f"none of the {len(runs)} runs has a {HISTORY_FILE} with per-epoch entries; "
            "runs of trained methods write one (zero_shot does not)"
        )

    by_method: dict[str, int] = defaultdict(int)
    reported_any = False
    with style.style_context():
        figure = style.new_figure(style.TEXT_WIDTH, 2.6, dpi=dpi)
        loss_ax, acc_ax = figure.subplots(1, 2)
        for run_dir, record, history in curves:
            method = str(record.get("method", run_dir.name))
            look = dict(style.method_style(method))
            look["linestyle"] = style.LINESTYLES[by_method[method] % len(style.LINESTYLES)]
            by_method[method] += 1
            label = style.method_label(method) + (f" / seed {record['seed']}" if "seed" in record else "")
            for ax, key in ((loss_ax, "loss"), (acc_ax, "val_acc")):
                pts = [(h["epoch"], h[key]) for h in history if _is_number(h.get(key)) and math.isfinite(h[key])]
                # the method's marker every ~8 points: colours alone repeat beyond eight methods
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, gid=str(run_dir),
                        color=look["color"], linestyle=look["linestyle"], marker=look["marker"],
                        markevery=max(1, len(pts) // 8), markersize=3.5)
                reported = record.get("val_acc")
                if key == "val_acc" and pts and _is_number(reported):
                    last = max(p[0] for p in pts)
                    end = next(p[1] for p in reversed(pts) if p[0] == last)
                    ax.plot([last, last + 0.04 * last + 0.5], [end, reported], color=look["color"], linestyle=":", linewidth=0.8,
                            marker="", gid=f"{run_dir}|reported-link")
                    ax.plot([last + 0.04 * last + 0.5], [reported], color=look["color"], marker="*", markersize=7, linestyle="",
                            markeredgecolor="0.2", markeredgewidth=0.4, gid=f"{run_dir}|reported", label="_reported")
                    reported_any = True
        loss_ax.set(xlabel="epoch", ylabel="training loss", title="loss")
        acc_ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy of the trained part")
        handles, labels = loss_ax.get_legend_handles_labels()
        if reported_any:
            from matplotlib.lines import Line2D

            handles.append(Line2D([], [], color="0.3", marker="*", linestyle="", markersize=7))
            labels.append("reported val acc\n(after selection,\nas in the tables)")
        if len(curves) <= 2 * MAX_TRAINING_RUNS:
            figure.legend(handles, labels, loc="outside right center")
        figure.suptitle((title or "Training curves") + _synthetic_note([c[1] for c in curves]))
        if out is not None:
            style.save_figure(figure, out, formats=formats)
    return figure


# --- every figure of a folder of runs ---------------------------------------------------------


def plot_figures(
    runs_dir: str | Path,
    out_dir: str | Path,
    *,
    formats: Sequence[str] = style.DEFAULT_FORMATS,
    paper: Mapping[str, Mapping[float, float]] | None = None,
    dpi: int = style.DPI,
) -> list[Path]:
    """Draw every figure the records under ``runs_dir`` support into ``out_dir``.

    - ``accuracy_vs_shots``: when the runs without ``params`` span two or more shot counts (one
      figure per backbone, ``accuracy_vs_shots_<backbone>``, when there are several);
    - ``sensitivity``: when some runs have sweep ``params`` (``paper`` values are drawn too);
    - ``training_curves``: the runs with a ``history.json``, runs without ``params`` first. When
      there are more than :data:`MAX_TRAINING_RUNS`, those of one setting: the largest shot
      count, then the first dataset and backbone by name (the title names it), at most
      :data:`MAX_TRAINING_RUNS` of them.

    Args:
        runs_dir: a folder of run directories (searched recursively).
        out_dir: where the figures go; created if missing.
        formats: one file per format and figure, e.g. ``("png", "pdf")``.
        paper: published sensitivity numbers for :func:`plot_sensitivity`; ``None`` takes the
            paper's Table 3 when the swept runs are real ImageNet runs (:func:`paper_sensitivity`),
            ``{}`` draws none.
        dpi: dots per inch of the PNGs.

    Returns:
        The written paths, in the order above.

    Raises:
        ValueError: ``runs_dir`` holds no run, a record is malformed, or no figure applies.
    """
    if not formats:
        raise ValueError(f"no figure formats given; use some of {list(style.FIGURE_FORMATS)}")
    root, out_root = Path(runs_dir), Path(out_dir)
    records = load_records(root)
    written: list[Path] = []

    plain = [r for r in records if not r.get("params")]
    backbones = sorted({_value(r, "backbone") for r in plain})
    for bb in backbones:
        group = [r for r in plain if _value(r, "backbone") == bb]
        if len({_shots(r) for r in group}) > 1:
            name = "accuracy_vs_shots" if len(backbones) == 1 else f"accuracy_vs_shots_{_slug(bb)}"
            figure = plot_accuracy_vs_shots(group, None, dpi=dpi)
            written += style.save_figure(figure, out_root / name, formats=formats)

    if any(r.get("params") for r in records):
        if paper is None:
            paper = paper_sensitivity(records)
        figure = plot_sensitivity(records, None, paper=paper, labels=sensitivity_labels(), dpi=dpi)
        written += style.save_figure(figure, out_root / "sensitivity", formats=formats)

    # training-free methods write an empty history: only runs with epochs to draw count
    trained = [r for r in records if (root / r["run_dir"] / HISTORY_FILE).is_file() and load_history(root / r["run_dir"])]
    chosen = [r for r in trained if not r.get("params")] or trained
    if chosen:
        chosen, setting = _one_setting(chosen)
        title = "Training curves" + (f" · {setting}" if setting else "")
        figure = plot_training_curves(chosen, None, root=root, title=title, dpi=dpi)
        written += style.save_figure(figure, out_root / "training_curves", formats=formats)

    if not written:
        shots = sorted({_shots(r) for r in records})
        raise ValueError(
            f"{root}: nothing to plot from {len(records)} runs (shots {shots}, no sweep params, no {HISTORY_FILE}); "
            "accuracy vs shots needs runs at 2 or more shot counts"
        )
    return written


def paper_sensitivity(records: Sequence[Record], path: str | Path | None = None) -> dict[str, dict[float, float]] | None:
    """The paper's Table 3 (``experiments/paper_results.yaml``) for the keys ``records`` sweep.

    Only for real ImageNet runs: the paper swept the weights there, and a synthetic task or
    another dataset has nothing to compare with. ``None`` when nothing applies.
    """
    swept = [r for r in records if r.get("params")]
    if not swept or any(r.get("synthetic") or r.get("dataset") != "imagenet" for r in swept):
        return None
    from hgadapter.paper_results import load_paper_results  # torch-free

    table = load_paper_results(path)["tables"].get("table3_sensitivity", {})
    keys = {k for r in swept for k in r["params"]}
    paper = {
        row["key"]: {float(w): float(a) for w, a in zip(row["weights"], row["accuracy"])}
        for row in table.get("values", [])
        if row.get("key") in keys
    }
    return paper or None


def dataset_names(path: str | Path | None = None) -> dict[str, str]:
    """Dataset id -> the paper's name (``oxford_flowers`` -> ``Flowers102``), in the paper's order;
    ``{}`` without a readable paper results file."""
    from hgadapter.paper_results import ReportError, load_paper_results  # torch-free

    try:
        data = load_paper_results(path)
    except ReportError:
        return {}
    return {**data.get("datasets", {}), **data.get("dg_targets", {})}


def sensitivity_labels(path: str | Path | None = None) -> dict[str, str]:
    """Readable panel titles for the config keys the paper's Table 3 sweeps ("p2p weight" ...)."""
    from hgadapter.paper_results import LEARN_KEY, ReportError, load_paper_results  # torch-free

    try:
        rows = load_paper_results(path)["tables"].get("table3_sensitivity", {}).get("values", [])
    except ReportError:  # a missing or broken paper file: the swept keys stay as titles
        rows = []
    labels = {row["key"]: f"{row['metapath']} weight" for row in rows if "key" in row and "metapath" in row}
    return {**labels, LEARN_KEY: "all fusion weights learned"}


def _one_setting(records: list[Record]) -> tuple[list[Record], str]:
    """At most MAX_TRAINING_RUNS records, of one (shots, dataset, backbone) when there are more."""
    if len(records) <= MAX_TRAINING_RUNS:
        return records, ""
    settings = sorted({(-_shots(r), _value(r, "dataset"), _value(r, "backbone")) for r in records})
    neg_shots, dataset, backbone = settings[0]
    picked = [r for r in records if (-_shots(r), _value(r, "dataset"), _value(r, "backbone")) == settings[0]]
    picked.sort(key=lambda r: (style.method_order(r["method"]), str(r["seed"]), r.get("run_dir", "")))
    parts = [p for p in (dataset, backbone) if p != "unknown"] + [f"{-neg_shots}-shot"]
    note = "" if len(picked) <= MAX_TRAINING_RUNS else f", first {MAX_TRAINING_RUNS} of {len(picked)} runs"
    return picked[:MAX_TRAINING_RUNS], ", ".join(parts) + note


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-") or "unknown"


# --- command line -----------------------------------------------------------------------------


def add_figures_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``hgadapter figures RUNS_DIR`` and ``python -m viz figures RUNS_DIR``."""
    parser.add_argument("runs_dir", metavar="RUNS_DIR", help="folder of run directories (each with metrics.json), searched recursively")
    parser.add_argument("--out", type=output_path, default=None, metavar="DIR", help="folder for the figures (default: RUNS_DIR/figures)")
    parser.add_argument("--formats", nargs="+", default=list(style.DEFAULT_FORMATS), choices=style.FIGURE_FORMATS,
                        metavar="FMT", help="one file per format and figure (default: png pdf)")
    parser.add_argument("--paper", default=None, metavar="JSON",
                        help='sensitivity values to draw dashed, {"key": {"value": accuracy}} (default: the paper\'s Table 3 for ImageNet runs)')
    parser.add_argument("--no-paper", action="store_true", help="draw no published values")
    parser.add_argument("--dpi", type=int, default=style.DPI, help=f"dots per inch of PNGs (default: {style.DPI})")


def run_figures_command(args: argparse.Namespace) -> int:
    """Draw the figures :func:`add_figures_arguments`' options describe; print each path.

    Returns 0. Bad input raises ``ValueError`` (or ``OSError``) with a one-line message, for the
    caller to print.
    """
    from hgadapter._io import check_output_dir  # torch-free

    out = check_output_dir(args.out if args.out else Path(args.runs_dir) / "figures")
    paper = load_paper_values(args.paper) if args.paper else ({} if getattr(args, "no_paper", False) else None)
    for path in plot_figures(args.runs_dir, out, formats=args.formats, paper=paper, dpi=args.dpi):
        print(path)
    return 0


def load_paper_values(path: str | Path) -> dict[str, dict[float, float]]:
    """Read ``{"key": {"value": accuracy}}`` from a JSON file; values are numbers or names."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f'{path}: should be a JSON object {{"key": {{"value": accuracy, ...}}, ...}}')
    result: dict[str, dict[Any, float]] = {}
    for key, points in data.items():
        result[key] = {}
        for value, acc in points.items():
            if not _is_number(acc):
                raise ValueError(f"{path}: {key}[{value!r}] should be an accuracy in percent, got {acc!r}")
            try:
                parsed: Any = float(value)
            except ValueError:
                parsed = value  # a named setting such as "learn"
            result[key][parsed] = float(acc)
    return result


# --- shared helpers ---------------------------------------------------------------------------


def _check_records(records: Sequence[Record]) -> Sequence[Record]:
    if not records:
        raise ValueError("no records to plot; pass load_records(RUNS_DIR) of a folder that holds runs")
    return records


def _value(record: Record, key: str) -> str:
    value = record.get(key)
    return str(value) if value not in (None, "") else "unknown"


def _shots(record: Record) -> int:
    shots = record["shots"]
    if isinstance(shots, bool) or not isinstance(shots, (int, float)) or shots != int(shots) or shots < 1:
        raise ValueError(f"record {record.get('run_dir', '?')}: shots should be a positive integer, got {shots!r}")
    return int(shots)


def _filter(records: list[Record], key: str, wanted: str | Sequence[str] | None, *, single: bool = False) -> list[Record]:
    """Records whose ``key`` is one of ``wanted``; unknown names raise with the available ones."""
    available = sorted({_value(r, key) for r in records})
    if wanted is None:
        if single and len(available) > 1:
            raise ValueError(f"records mix {key}s {available}; pass {key}= one of them (each gets its own figure)")
        return records
    names = [wanted] if isinstance(wanted, str) else list(wanted)
    for name in names:
        if name not in available:
            raise ValueError(f"unknown {key} '{name}'; the records hold {available}")
    return [r for r in records if _value(r, key) in names]


def _group(records: Sequence[Record], key_of: Any) -> dict[Any, list[float]]:
    """Test accuracies by ``key_of(record)``, one value per seed (:func:`hgadapter.records.seed_values`,
    as in the report)."""
    groups: dict[Any, list[Record]] = defaultdict(list)
    for r in records:
        groups[key_of(r)].append(r)
    return {key: seed_values(rs) for key, rs in groups.items()}


def _synthetic_note(records: Sequence[Record]) -> str:
    flags = [bool(r.get("synthetic")) for r in records]
    if flags and all(flags):
        return " (synthetic task)"
    return " (partly synthetic task)" if any(flags) else ""


def _grid(panels: int, *, dpi: int, max_columns: int = _MAX_COLUMNS) -> tuple[Figure, list[Axes]]:
    """Small multiples: one column-wide panel alone, else rows of up to ``max_columns`` at text width."""
    columns = min(panels, max_columns)
    rows = math.ceil(panels / columns)
    width = style.COLUMN_WIDTH if columns == 1 else style.TEXT_WIDTH
    height = (2.4 if rows == 1 and columns == 1 else _PANEL_HEIGHT * rows) + 0.7  # + title and legend
    figure = style.new_figure(width, height, dpi=dpi)
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes[panels:]:
        ax.set_visible(False)
    return figure, axes


def _label_outer(axes: Sequence[Axes], figure: Figure, *, xlabel: str, ylabel: str) -> None:
    """Axis labels on the bottom row and the left column only: small multiples share them."""
    for ax in axes:
        spec = ax.get_subplotspec()
        if spec.is_first_col():
            ax.set_ylabel(ylabel)
        last_in_column = not any(
            other.get_subplotspec().colspan.start == spec.colspan.start and other.get_subplotspec().rowspan.start > spec.rowspan.start
            for other in axes
        )
        if last_in_column:
            ax.set_xlabel(xlabel)


def _legend_below(figure: Figure, *axes: Axes) -> None:
    """One legend for all panels, below them, each label once."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        # about 1.75 in per entry ("Linear Probe CLIP" and its handle): never wider than the figure
        ncols = max(1, min(len(seen), 4, int(figure.get_figwidth() // 1.75)))
        figure.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=ncols)
