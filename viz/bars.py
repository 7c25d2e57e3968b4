"""Grouped bars of test accuracy: one group per shot count, one bar per method (``hgadapter compare``).

Each bar is the mean test accuracy over seeds with a ± one sample standard deviation error bar
(no error bar, and no "± std" in the title, when there is one seed), aggregated as every table
and figure aggregates (:func:`hgadapter.records.seed_values`, then
:func:`hgadapter.records.mean_std`). Every registered method has its own colour
(:func:`viz.style.method_style`), and a variant's bars (a dashed line in the curves) are hatched.
``Base`` (the variant without adaptation) is zero-shot CLIP: when both ran and agree, one bar
stands for both. The y axis starts near the lowest bar so that differences show; the axis label
says where it starts.
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
_BASE, _ZERO_SHOT = "hegraphadapter:base", "zero_shot"  # the same classifier under two names


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
    labels = {m: style.method_label(m) for m in methods}
    if _BASE in methods and _ZERO_SHOT in methods and _same_bars(cells, _BASE, _ZERO_SHOT, shots):
        methods.remove(_BASE)  # one bar, not two identical ones
        labels[_ZERO_SHOT] = f"{labels[_ZERO_SHOT]} (= {labels[_BASE]})"
    several_seeds = any(n > 1 for (m, _), (_, _, n) in cells.items() if m in methods)

    with style.style_context():
        columns = min(4, len(methods))
        legend_rows = math.ceil(len(methods) / columns)
        width = min(style.TEXT_WIDTH * 1.5, max(style.COLUMN_WIDTH, 1.0 + 0.22 * len(methods) * len(shots)))
        title = title or _title(records, several_seeds=several_seeds)
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
                yerr=[c[1] for _, c in present] if several_seeds else None,
                capsize=2,
                label=labels[m],
                gid=m,
                color=look["color"],
                hatch=_HATCHES.get(look["linestyle"], ""),
                edgecolor="white",
                linewidth=0.5,
                error_kw={"elinewidth": 0.8, "ecolor": "0.35"},  # grey: visible on the black bars too
            )
        ax.set_xticks(range(len(shots)), [f"{k} shot" + ("s" if k != 1 else "") for k in shots])
        means = [c[0] for (m, _), c in cells.items() if m in methods and math.isfinite(c[0])]
        bottom = 0.0
        if means:  # bars start near the lowest one: the differences are what the chart is for
            bottom = max(0.0, 5.0 * math.floor((min(means) - 5.0) / 5.0))
            bottom = bottom if bottom >= 25.0 else 0.0  # a zoom that gains little is not worth a cut axis
            ax.set_ylim(bottom, min(100.0, max(means) + 5.0))
        ax.set_ylabel("test accuracy (%)" + (f"\naxis starts at {bottom:g}, not 0" if bottom > 0 else ""))
        ax.grid(axis="x", visible=False)
        ax.set_axisbelow(True)
        ax.set_title(title)
        figure.legend(*ax.get_legend_handles_labels(), ncols=columns, loc="outside lower center")
        if out is not None:
            style.save_figure(figure, out, formats=formats)
    return figure


def _same_bars(cells: Mapping[tuple[str, int], tuple[float, float, int]], a: str, b: str, shots: Sequence[int]) -> bool:
    """Whether methods ``a`` and ``b`` have the same bars (mean, std and count) at every shot count."""
    return all(
        ((a, k) in cells) == ((b, k) in cells)
        and ((a, k) not in cells or all(math.isclose(x, y, abs_tol=1e-9) for x, y in zip(cells[(a, k)], cells[(b, k)])))
        for k in shots
    )


def _title(records: Sequence[Mapping[str, Any]], *, several_seeds: bool) -> str:
    datasets = sorted({str(r.get("dataset")) for r in records})
    synthetic = any(r.get("synthetic") for r in records) or datasets == ["synthetic"]
    if several_seeds:
        what = "mean ± std over seeds"
    else:
        seeds = sorted({str(r.get("seed")) for r in records})
        what = ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(seeds)
    names = ", ".join(d for d in datasets if d != "synthetic")  # "synthetic" is said once, at the end
    return (f"{names}: test accuracy, {what}" if names else f"Test accuracy, {what}") + (" (synthetic task)" if synthetic else "")
