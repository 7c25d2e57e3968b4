"""The report's table model: what ``hgadapter report`` computes and every rendering reads.

:func:`hgadapter.report.build_report` fills these from run records; ``report.md``
(:func:`hgadapter.report.format_markdown`), ``report.csv`` / ``report.json`` and ``report.tex``
(:mod:`hgadapter.report_tex`) are renderings of the same :class:`Report`, so they never disagree.
Plain dataclasses and constants only: both the builder and the LaTeX renderer import this module,
and it imports neither (imports run one way). No torch, no dgl.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SYNTHETIC_NOTE", "FULL_SEEDS", "VAL_SELECTED", "Cell", "Row", "Table", "Report"]

SYNTHETIC_NOTE = "(synthetic task: says nothing about real CLIP)"
FULL_SEEDS = 3  # fewer seeds than this and a cell shows its n
VAL_SELECTED = " (val-selected)"  # the row of a grid's point chosen per dataset and shots on validation


@dataclass
class Cell:
    """One table cell: our mean ± std over n seeds, the paper's value and ours minus the paper's.

    ``std`` is ``None`` for one seed and for an ``average`` over columns (the columns' seeds need
    not match; ``n`` then counts columns). ``note`` says when an average is incomplete (``avg of
    3/11``), ``paper_note`` when the paper's value is its mean over the same columns (``on the same 3``).
    """

    mean: float
    std: float | None
    n: int
    paper: float | None = None
    diff: float | None = None
    note: str = ""
    paper_note: str = ""
    average: bool = False


@dataclass
class Row:
    """One table row: ``id`` (a method id, or a label), its display name and cells by column id."""

    id: str
    label: str
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass
class Table:
    """One table in the paper's layout.

    Attributes:
        kind: ``shots``, ``fewshot``, ``dg``, ``sensitivity``, ``backbones``, ``complexity`` or ``selection``.
        title: the markdown heading (ends in :data:`SYNTHETIC_NOTE` for synthetic tasks).
        paper_note: one line saying where the paper values come from (or why there are none).
        setting: what the table holds fixed (``backbone``, ``shots``, ``dataset``, ``method``, ``key``).
        columns: ``(column id, display name)`` in order.
        rows: the rows in order.
        synthetic: whether the table reports a synthetic task.
        seeds: the seeds of the runs the table holds, sorted (the LaTeX caption names them).
    """

    kind: str
    title: str
    paper_note: str
    setting: dict[str, Any]
    columns: list[tuple[str, str]]
    rows: list[Row]
    synthetic: bool = False
    seeds: list[Any] = field(default_factory=list)


@dataclass
class Report:
    """Every table, one long row per cell (``CSV_COLUMNS``), and notes on the records."""

    tables: list[Table]
    rows: list[dict[str, Any]]
    runs: int
    warnings: list[str] = field(default_factory=list)
    paper_file: str | None = None
