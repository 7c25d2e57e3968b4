"""The report's tables as LaTeX (booktabs), laid out as the paper's, for pasting into a paper.

:func:`format_latex` renders the tables :func:`hgadapter.report.build_report` computed, the same
:class:`~hgadapter.tables.Table` data ``report.md`` is written from, so the two never disagree:

- one ``table`` environment per table, ``\\toprule`` / ``\\midrule`` / ``\\bottomrule`` rules
  (booktabs), methods as rows in the paper's order;
- a cell is ``mean`` with its sample std in small type (``65.20{\\scriptsize$\\pm$0.31}``);
- per column the best mean in bold and the second best underlined, as the paper's tables mark
  them (Sec. 4.2-4.3), compared at the two decimals printed; ties share the mark. A second best
  is marked only among three or more rows, where it says more than "the other one". The
  sensitivity tables rank along each row instead (which swept value is best for a method);
  complexity tables (timings, parameter counts) and the selection table's seconds rank nothing;
- where the paper reports the cell, a small row under the method's holds the paper's value and
  ours minus the paper's;
- the caption: the table's title, the protocol (hyper-parameters chosen on validation, the test
  split read once), the seeds, which cells have fewer seeds, where the paper's values come from,
  and whether the numbers come from a synthetic task.

Names are escaped for LaTeX (:func:`latex_escape`); the output is plain ASCII apart from the
names themselves, and the document needs only ``booktabs`` and ``graphicx`` (for wide tables).
This module imports neither torch nor dgl.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hgadapter.tables import FULL_SEEDS, SYNTHETIC_NOTE, VAL_SELECTED, Cell, Report, Table

__all__ = ["latex_escape", "rank_marks", "format_latex_table", "format_latex"]

WIDE_COLUMNS = 7  # tables with more data columns than this are scaled to the text width
FLUSH_EVERY = 10  # a \clearpage after this many tables: LaTeX holds at most 18 unplaced floats
FEWER_SEEDS = r"$^{\dagger}$"  # marks a cell with fewer than FULL_SEEDS seeds
PARTIAL = r"$^{\ast}$"  # marks an average over fewer columns than the paper's
# Which cells compete for bold and underline: "column" (methods within a column, the paper's
# way), "row" (the swept values of one method) or nothing. Of the selection table only the
# accuracies compete; the seconds are a cost, not a score.
_RANKING: dict[str, str] = {"shots": "column", "fewshot": "column", "dg": "column", "backbones": "column", "selection": "column", "sensitivity": "row"}
_UNRANKED_COLUMNS = {"train_seconds"}

_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    # What the markdown report writes outside ASCII; pdflatex's default input encoding does not
    # know U+2212 or U+00B1.
    "\u2212": "$-$",
    "\u00b1": r"$\pm$",
    "\u2014": "---",
    "\u2013": "--",
    "\u00d7": r"$\times$",
    "\u2026": r"\ldots{}",
}


def _control(ch: str) -> str | None:
    """What a control character becomes: a line break or tab a space (a blank line would end a
    tabular row or a caption), any other one (NUL, ESC, DEL, C1) its code, visibly and inertly."""
    if ch in "\t\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029":
        return " "
    code = ord(ch)
    if code < 0x20 or 0x7F <= code < 0xA0:
        return rf"\textbackslash{{}}x{code:02x}"
    return None


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped; ``--`` stays two hyphens (``-{}-``).

    Line breaks and tabs become spaces and other control characters (NUL, ESC, ...) their code
    (``\\x1b``), so a name from a run record can neither end a table row nor reach the output raw.
    Markdown code spans (`` `key` ``), which the report's titles use for config keys, become
    ``\\texttt{key}``.
    """
    parts = str(text).split("`")
    if len(parts) % 2 == 0:  # an unmatched backtick: not a code span
        parts = ["`".join(parts)]
    out = []
    for i, part in enumerate(parts):
        # "-{}-": two hyphens in a name stay two hyphens, not an en dash
        escaped = "".join("{}-" if ch == "-" and prev == "-" else _SPECIALS.get(ch) or _control(ch) or ch for prev, ch in zip(" " + part, part))
        out.append(rf"\texttt{{{escaped}}}" if i % 2 else escaped)
    return "".join(out)


def _score(cell: Cell | None) -> float | None:
    return None if cell is None else round(cell.mean, 2)  # what the reader sees decides the rank


def _marks(cells: dict[tuple[str, str], Cell]) -> dict[tuple[str, str], str]:
    """``bold`` for the best score among ``cells``, ``underline`` for the second (three or more)."""
    scores = {key: _score(cell) for key, cell in cells.items()}
    distinct = sorted(set(scores.values()), reverse=True)
    if len(scores) < 2:
        return {}
    marks = {key: "bold" for key, s in scores.items() if s == distinct[0]}
    if len(scores) >= 3 and len(distinct) >= 2:
        marks.update({key: "underline" for key, s in scores.items() if s == distinct[1]})
    return marks


def rank_marks(table: Table) -> dict[tuple[str, str], str]:
    """``(row id, column id) -> "bold" | "underline"`` for ``table``'s best and second-best cells.

    Higher is better. Which cells compete depends on the table's kind (see the module docstring).
    """
    how = _RANKING.get(table.kind)
    columns = [col for col, _ in table.columns if col not in _UNRANKED_COLUMNS]
    marks: dict[tuple[str, str], str] = {}
    if how == "column":
        for col in columns:
            marks.update(_marks({(row.id, col): row.cells[col] for row in table.rows if col in row.cells}))
    elif how == "row":
        for row in table.rows:
            marks.update(_marks({(row.id, col): row.cells[col] for col in columns if col in row.cells}))
    return marks


def _number(x: float) -> str:
    return f"{x:.2f}"


def _signed(x: float) -> str:
    return f"+{x:.2f}" if x >= 0.005 else (f"$-${-x:.2f}" if x <= -0.005 else r"$\pm$0.00")


def _cell(cell: Cell | None, mark: str | None) -> str:
    if cell is None:
        return "--"
    mean = _number(cell.mean)
    if mark == "bold":
        mean = rf"\textbf{{{mean}}}"
    elif mark == "underline":
        mean = rf"\underline{{{mean}}}"
    text = mean + (rf"{{\scriptsize$\pm${_number(cell.std)}}}" if cell.std is not None else "")
    if not cell.average and cell.n < FULL_SEEDS:
        text += FEWER_SEEDS
    if cell.note:
        text += PARTIAL
    return text


def _paper_cell(cell: Cell | None) -> str:
    if cell is None or cell.paper is None:
        return ""
    return rf"{{\scriptsize {_number(cell.paper)} ({_signed(cell.diff)})}}"


def _seeds_text(seeds: Sequence) -> str:
    if not seeds:
        return "seeds not recorded"
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(latex_escape(str(s)) for s in seeds)


def _what(table: Table) -> str:
    """What the numbers are, and how they were chosen."""
    seeds = _seeds_text(table.seeds)
    if table.kind == "complexity":
        return f"Mean over {seeds} (std where the runs differ)."
    if table.kind == "selection":
        return f"Validation and test accuracy (\\%), mean $\\pm$ sample std over {seeds}; training seconds per run, mean over seeds."
    return (
        f"Test accuracy (\\%), mean $\\pm$ sample std over {seeds}. Every method chose its hyper-parameters "
        "on the few-shot validation split; the test split was read once per run, afterwards."
    )


def _caption(table: Table, marks: dict, rows_with_paper: bool) -> str:
    title = table.title.removesuffix(f" {SYNTHETIC_NOTE}")
    parts = [latex_escape(title) + ".", _what(table)]
    if any(row.id.endswith(VAL_SELECTED) for row in table.rows):
        parts.append(
            "Rows marked (val-selected): per dataset, shots and seed, the grid point with the best validation accuracy; "
            "only its test accuracy is shown."
        )
    if marks:
        along = "row (over the swept values)" if _RANKING.get(table.kind) == "row" else "column"
        second = " and second best underlined" if "underline" in marks.values() else ""
        parts.append(f"Best per {along} in bold{second}.")
    cells = [c for row in table.rows for c in row.cells.values()]
    if any(not c.average and c.n < FULL_SEEDS for c in cells):
        parts.append(f"{FEWER_SEEDS} fewer than {FULL_SEEDS} seeds.")
    partial = [c for c in cells if c.note]
    if partial:
        same = "; the paper's value under it is its mean over the same columns" if any(c.paper_note for c in partial) else ""
        parts.append(f"{PARTIAL} average over fewer columns than the paper's ({latex_escape(partial[0].note)}){same}.")
    if rows_with_paper:
        parts.append("Small rows: the paper's value (ours minus the paper's).")
    parts.append(latex_escape(table.paper_note))
    if table.synthetic:
        parts.append(r"\textbf{Synthetic task}: these numbers say nothing about real CLIP.")
    else:
        parts.append("Not synthetic: features of a real CLIP model.")
    return " ".join(parts)


def format_latex_table(table: Table, *, label: str) -> str:
    """One booktabs ``table`` environment for ``table``, labelled ``label``."""
    marks = rank_marks(table)
    paper_rows = {row.id for row in table.rows if any(row.cells.get(col) is not None and row.cells[col].paper is not None for col, _ in table.columns)}
    spec = "l" + "c" * len(table.columns)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_caption(table, marks, bool(paper_rows))}}}",
        rf"\label{{{label}}}",
    ]
    wide = len(table.columns) > WIDE_COLUMNS
    if wide:
        lines.append(r"\resizebox{\textwidth}{!}{%")
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    lines.append(" & ".join(["Method", *(latex_escape(name) for _, name in table.columns)]) + r" \\")
    lines.append(r"\midrule")
    for row in table.rows:
        cells = [_cell(row.cells.get(col), marks.get((row.id, col))) for col, _ in table.columns]
        lines.append(" & ".join([latex_escape(row.label), *cells]) + r" \\")
        if row.id in paper_rows:
            paper = [_paper_cell(row.cells.get(col)) for col, _ in table.columns]
            lines.append(" & ".join([r"\quad{\scriptsize paper}", *paper]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if wide:
        lines.append("}")
    lines.append(r"\end{table}")
    return "\n".join(lines)


def _labels(tables: Iterable[Table]) -> list[str]:
    counts: dict[str, int] = {}
    out = []
    for table in tables:
        counts[table.kind] = counts.get(table.kind, 0) + 1
        out.append(f"tab:hgadapter-{table.kind}-{counts[table.kind]}")
    return out


def format_latex(report: Report, *, title: str = "Results report") -> str:
    """Every table of ``report`` in a standalone document (``pdflatex report.tex`` compiles it).

    Each ``table`` environment can be pasted into a paper whose preamble loads ``booktabs`` (and
    ``graphicx`` for the wide tables, which are scaled to the text width).
    """
    lines = [
        f"% {latex_escape(title)}: written by `hgadapter report` from {report.runs} runs (hgadapter/report_tex.py).",
        "% Each table environment needs \\usepackage{booktabs} (and graphicx for \\resizebox).",
        r"\documentclass{article}",
        r"\usepackage[T1]{fontenc}",
        r"\usepackage{booktabs}",
        r"\usepackage{graphicx}",
        r"\begin{document}",
        rf"\section*{{{latex_escape(title)}}}",
    ]
    if report.paper_file:
        lines.append(rf"Paper values from \texttt{{{latex_escape(report.paper_file)}}}.")
    for i, (table, label) in enumerate(zip(report.tables, _labels(report.tables)), start=1):
        lines += ["", format_latex_table(table, label=label)]
        if i % FLUSH_EVERY == 0:
            lines.append(r"\clearpage")
    if report.warnings:
        lines += ["", r"\section*{Notes}", r"\begin{itemize}"]
        lines += [rf"\item {latex_escape(w)}" for w in report.warnings]
        lines.append(r"\end{itemize}")
    lines += ["", r"\end{document}"]
    return "\n".join(lines) + "\n"
