"""Grouped bars of test accuracy: one group per shot count, one bar per method (``hgadapter compare``).

Each bar is the mean test accuracy over seeds with a ± one sample standard deviation error bar,
aggregated as every table and figure aggregates (:func:`hgadapter.records.seed_values`, then
:func:`hgadapter.records.mean_std`). Methods keep their colour from :func:`viz.style.method_style`;
methods that share a colour there (a method and its fine-tuned form) are told apart by a hatch
that stands for their line style in the curves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hgadapter.records import mean_std, seed_values
from viz import style

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_accuracy_bars"]

# A curve's line style, as a bar's hatch.
_HATCHES = {"-": "", "--": "//", "-.": "..", ":": "xx"}


def plot_accuracy_bars(
    records: Sequence[Mapping[str, Any]],
    out: str | Path | None,
    *,
    title: str | None = None,
    formats: Sequence[str] | None = style.DEFAULT_FORMATS,
    dpi: int = style.DPI,
) -> Figure:
    """Test accuracy (mean ± sample std over seeds) per shot count and method, as grouped bars.

    Args:
        records: run records of one dataset and backbone (:func:`hgadapter.records.load_records`).
        out: figure path (``runs/cmp/results.png``, or without suffix); ``None`` draws without saving.
        title: the figure's title; default names the datasets and says when the task is synthetic.
        formats: formats written beside ``out`` (:func:`viz.style.save_figure`).
        dpi: dots per inch of the PNG.

    Returns:
        The figure. Each method's bars have the method name as their ``gid``.

    Raises:
        ValueError: no records.
    """
    if not records:
        raise ValueError("no records to plot; run `hgadapter compare` or `hgadapter sweep` first")
    methods = sorted({str(r["method"]) for r in records}, key=style.method_order)
    shots = sorted({int(r["shots"]) for r in records})
    cells: dict[tuple[str, int], tuple[float, float, int]] = {}
    for m in methods:
        for k in shots:
            values = seed_values(r for r in records if r["method"] == m and int(r["shots"]) == k)
            if values:
                cells[(m, k)] = mean_std(values)

    with style.style_context():
        columns = min(4, len(methods))
        legend_rows = math.ceil(len(methods) / columns)
        width = min(style.TEXT_WIDTH * 1.5, max(style.COLUMN_WIDTH, 1.0 + 0.22 * len(methods) * len(shots)))
        title = title or _title(records)
        # wide enough for the legend's columns and the title (about 0.065 in per character at 9 pt)
        figure = style.new_figure(max(width, 1.6 * columns, 0.065 * len(title)), 2.4 + 0.2 * legend_rows, dpi=dpi)
        ax = figure.add_subplot()
        bar = 0.8 / len(methods)
        for i, m in enumerate(methods):
            present = [(j, cells[(m, k)]) for j, k in enumerate(shots) if (m, k) in cells]
            look = style.method_style(m)
            ax.bar(
                [j - 0.4 + bar * (i + 0.5) for j, _ in present],
                [c[0] for _, c in present],
                bar,
                yerr=[c[1] for _, c in present],
                capsize=2,
                label=style.method_label(m),
                gid=m,
                color=look["color"],
                hatch=_HATCHES.get(look["linestyle"], ""),
                edgecolor="white",
                linewidth=0.5,
                error_kw={"elinewidth": 0.8, "ecolor": "0.35"},  # grey: visible on the black bars too
            )
        ax.set_xticks(range(len(shots)), [f"{k} shot" + ("s" if k != 1 else "") for k in shots])
        ax.set_ylabel("test accuracy (%)")
        means = [c[0] for c in cells.values() if math.isfinite(c[0])]
        if means:  # bars start near the lowest one: the differences are what the chart is for
            ax.set_ylim(max(0.0, 5.0 * math.floor((min(means) - 5.0) / 5.0)), min(100.0, max(means) + 5.0))
        ax.grid(axis="x", visible=False)
        ax.set_axisbelow(True)
        ax.set_title(title)
        figure.legend(*ax.get_legend_handles_labels(), ncols=columns, loc="outside lower center")
        if out is not None:
            style.save_figure(figure, out, formats=formats)
    return figure


def _title(records: Sequence[Mapping[str, Any]]) -> str:
    datasets = sorted({str(r.get("dataset")) for r in records})
    synthetic = any(r.get("synthetic") for r in records)
    return f"{', '.join(datasets)}: test accuracy, mean ± std over seeds" + (" (synthetic task)" if synthetic else "")
