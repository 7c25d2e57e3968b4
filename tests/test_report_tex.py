"""``report.tex``: the report's tables in LaTeX, checked on hand-made records (and compiled when pdflatex is there)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hgadapter.paper_results import load_paper_results
from hgadapter.report import build_report, format_markdown, write_report
from hgadapter.report_tex import format_latex, format_latex_table, latex_escape, rank_marks


def record(method: str, dataset: str, seed: int, acc: float, **extra) -> dict:
    return {
        "method": method, "shots": 16, "seed": seed, "test_acc": acc, "val_acc": 50.0, "dataset": dataset,
        "backbone": "RN50", "params": {}, "synthetic": False, **extra,
    }


# test accuracy per (method, dataset), seeds 1-3 at acc - 1, acc, acc + 1 (mean acc, std 1); not
# ImageNet, which would add a backbones table
MEANS = {
    "tip_adapter": {"sun397": 63.0, "dtd": 55.0},
    "taskres": {"sun397": 64.0, "dtd": 50.0},
    "hegraphadapter": {"sun397": 66.0, "dtd": 52.0},
}


def fewshot_records() -> list[dict]:
    return [
        record(m, d, seed, acc + delta)
        for m, row in MEANS.items()
        for d, acc in row.items()
        for seed, delta in zip((1, 2, 3), (-1.0, 0.0, 1.0))
    ]


def table_lines(tex: str, label: str) -> list[str]:
    """The lines of the table environment labelled ``label``."""
    lines = tex.splitlines()
    end = lines.index(next(line for line in lines if line == rf"\label{{{label}}}"))
    start = max(i for i in range(end) if lines[i].startswith(r"\begin{table}"))
    stop = next(i for i in range(end, len(lines)) if lines[i] == r"\end{table}")
    return lines[start : stop + 1]


def row_cells(lines: list[str], label: str) -> list[str]:
    row = next(line for line in lines if line.startswith(f"{label} & "))
    return [c.strip() for c in row.removesuffix(r" \\").split(" & ")][1:]


@pytest.fixture(scope="module")
def paper():
    return load_paper_results()


def test_best_is_bold_second_underlined_per_column(paper):
    report = build_report(fewshot_records(), paper)
    (table,) = report.tables
    marks = rank_marks(table)
    # SUN397: HeGraphAdapter 66 > TaskRes 64 > Tip-Adapter 63; DTD: Tip-Adapter 55 > HeGraphAdapter 52 > TaskRes 50;
    # Average: HeGraphAdapter and Tip-Adapter both 59 (a tie shares the bold), TaskRes 57.
    assert marks[("hegraphadapter", "sun397")] == "bold" and marks[("taskres", "sun397")] == "underline"
    assert ("tip_adapter", "sun397") not in marks
    assert marks[("tip_adapter", "dtd")] == "bold" and marks[("hegraphadapter", "dtd")] == "underline"
    assert ("taskres", "dtd") not in marks
    assert marks[("hegraphadapter", "average")] == marks[("tip_adapter", "average")] == "bold"
    assert marks[("taskres", "average")] == "underline"

    lines = table_lines(format_latex(report), "tab:hgadapter-fewshot-1")
    assert row_cells(lines, "HeGraphAdapter") == [r"\textbf{66.00}{\scriptsize$\pm$1.00}", r"\underline{52.00}{\scriptsize$\pm$1.00}", r"\textbf{59.00}$^{\ast}$"]
    assert row_cells(lines, "TaskRes") == [r"\underline{64.00}{\scriptsize$\pm$1.00}", r"50.00{\scriptsize$\pm$1.00}", r"\underline{57.00}$^{\ast}$"]
    assert row_cells(lines, "Tip-Adapter")[0] == r"63.00{\scriptsize$\pm$1.00}"


def test_booktabs_layout_and_caption(paper):
    report = build_report(fewshot_records(), paper)
    tex = format_latex(report)
    assert tex.count(r"\begin{table}") == len(report.tables) == 1
    lines = table_lines(tex, "tab:hgadapter-fewshot-1")
    rules = [line for line in lines if line in (r"\toprule", r"\midrule", r"\bottomrule")]
    assert rules == [r"\toprule", r"\midrule", r"\bottomrule"]
    assert r"\begin{tabular}{lccc}" in lines
    assert lines[lines.index(r"\toprule") + 1] == r"Method & SUN397 & DTD & Average \\"
    body = lines[lines.index(r"\midrule") + 1 : lines.index(r"\bottomrule")]
    labels = [row.split(" & ")[0] for row in body]
    assert labels[::2] == ["TaskRes", "Tip-Adapter", "HeGraphAdapter"]  # the paper's order
    assert set(labels[1::2]) == {r"\quad{\scriptsize paper}"}  # each with the paper's row under it
    caption = next(line for line in lines if line.startswith(r"\caption{"))
    assert "seeds 1, 2, 3" in caption and "validation split" in caption and "read once" in caption
    assert "Best per column in bold and second best underlined." in caption
    assert "Not synthetic" in caption and "Synthetic task" not in caption
    assert r"\usepackage{booktabs}" in tex and tex.rstrip().endswith(r"\end{document}")
    assert "\u2212" not in tex and "\u00b1" not in tex  # ASCII for pdflatex


def test_paper_values_and_difference_in_a_row_under_the_method(paper):
    report = build_report(fewshot_records(), paper)
    lines = table_lines(format_latex(report), "tab:hgadapter-fewshot-1")
    hg = next(i for i, line in enumerate(lines) if line.startswith("HeGraphAdapter & "))
    # Table 2: HeGraphAdapter SUN397 72.28, DTD 69.15; ours 66.00 and 52.00.
    assert row_cells(lines[hg + 1 :], r"\quad{\scriptsize paper}")[:2] == [r"{\scriptsize 72.28 ($-$6.28)}", r"{\scriptsize 69.15 ($-$17.15)}"]
    caption = next(line for line in lines if line.startswith(r"\caption{"))
    assert "Small rows: the paper's value (ours minus the paper's)." in caption and "Table 2" in caption
    assert "mean over the same columns" in caption  # 2 of 11 datasets: the paper's mean over the same two


def test_fewer_seeds_are_marked_and_single_rows_rank_nothing():
    records = [record("hegraphadapter", "imagenet", 1, 60.0)]
    (table,) = [t for t in build_report(records, None).tables if t.kind == "fewshot"]
    assert rank_marks(table) == {}  # one method: nothing to be best among
    tex = format_latex_table(table, label="t")
    assert r"60.00$^{\dagger}$" in tex and r"$^{\dagger}$ fewer than 3 seeds." in tex and "Best per" not in tex
    assert "seed 1." in tex


def test_sensitivity_ranks_along_the_row():
    key = "stages.1.metapaths.2.beta"
    records = [
        record("hegraphadapter:t", "imagenet", seed, acc, params={key: beta})
        for beta, acc in ((0.0, 65.0), (0.06, 66.5), (0.12, 66.0), (0.3, 64.0))
        for seed in (1, 2, 3)
    ]
    (table,) = [t for t in build_report(records, None).tables if t.kind == "sensitivity"]
    assert rank_marks(table) == {("hegraphadapter:t", "0.06"): "bold", ("hegraphadapter:t", "0.12"): "underline"}
    tex = format_latex_table(table, label="s")
    assert r"\texttt{stages.1.metapaths.2.beta}" in tex  # the title's code span
    assert "Best per row (over the swept values) in bold and second best underlined." in tex


def test_synthetic_tables_say_so_in_the_caption():
    records = [{**record(m, "synthetic", s, acc + s), "synthetic": True, "backbone": None} for m, acc in (("zero_shot", 40.0), ("hegraphadapter", 45.0)) for s in (1, 2)]
    tex = format_latex(build_report(records, None))
    caption = next(line for line in tex.splitlines() if line.startswith(r"\caption{"))
    assert r"\textbf{Synthetic task}: these numbers say nothing about real CLIP." in caption
    assert "synthetic task: says nothing" not in caption  # the markdown title's suffix is not repeated


def test_latex_specials_are_escaped():
    assert latex_escape("a_b & c% $d #e {f} ~g ^h \\i") == (
        r"a\_b \& c\% \$d \#e \{f\} \textasciitilde{}g \textasciicircum{}h \textbackslash{}i"
    )
    assert latex_escape("not shown (--no-paper)") == "not shown (-{}-no-paper)"
    assert latex_escape("`a_b` x") == r"\texttt{a\_b} x"
    assert latex_escape("\u2212 1 \u00b1 2 \u2014") == r"$-$ 1 $\pm$ 2 ---"
    records = [record("my_method&co", "my_data%set", s, 50.0 + s) for s in (1, 2, 3)]
    records += [record("zero_shot", "my_data%set", s, 40.0) for s in (1, 2, 3)]
    tex = format_latex(build_report(records, None))
    assert r"my\_method\&co & " in tex and r"my\_data\%set" in tex
    assert "my_method&co" not in tex and "my_data%set" not in tex


def test_write_report_writes_tex_beside_unchanged_markdown(tmp_path):
    runs = tmp_path / "runs"
    for i, r in enumerate(fewshot_records()):
        (runs / str(i)).mkdir(parents=True)
        (runs / str(i) / "metrics.json").write_text(json.dumps(r), encoding="utf-8")
    out = write_report(runs, use_paper=False)
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.json", "report.md", "report.tex"]
    from hgadapter.records import load_records

    from hgadapter.report import display_names

    report = build_report(load_records(runs), None, names=display_names())  # --no-paper keeps the display names
    assert "| SUN397 | DTD |" in format_markdown(report)
    assert (out / "report.md").read_text(encoding="utf-8") == format_markdown(report)
    assert (out / "report.tex").read_text(encoding="utf-8") == format_latex(report)
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["tables"][0]["seeds"] == [1, 2, 3]


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no TeX installation (pdflatex not on PATH)")
def test_report_tex_compiles_with_pdflatex(tmp_path, paper):
    records = fewshot_records()
    records += [record("my_method&co", "imagenet", s, 61.0 + s) for s in (1, 2)]  # fewer seeds, escaping
    records += [{**record("zero_shot", "synthetic", s, 40.0), "synthetic": True, "backbone": None} for s in (1, 2, 3)]
    records += [record("hegraphadapter", d, 1, 60.0, shots=4) for d in paper["datasets"]]  # a wide table
    records += [record("hegraphadapter", "imagenet", 1, 60.0, epochs=10, train_seconds=20.0, trainable_params=10_000_000, threads=1, device="cpu")]
    report = build_report(records, paper, selection=True)
    assert {t.kind for t in report.tables} >= {"fewshot", "shots", "complexity", "selection", "backbones"}
    (tmp_path / "report.tex").write_text(format_latex(report), encoding="utf-8")
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    errors = re.findall(r"^!.*$", done.stdout, flags=re.M)
    assert done.returncode == 0, errors or done.stdout[-2000:]
    assert (tmp_path / "report.pdf").stat().st_size > 0


def test_line_breaks_and_control_characters_never_reach_the_tex_raw():
    """Issue 21 item 17: a newline in a dataset or backbone name put a blank line inside a tabular
    header or caption; NUL and ESC were written raw."""
    assert latex_escape("a\nb\r\n\nc\td") == "a b   c d"
    assert latex_escape("x\x00y\x1bz\x7f") == r"x\textbackslash{}x00y\textbackslash{}x1bz\textbackslash{}x7f"
    assert latex_escape("`k\ney`") == r"\texttt{k ey}"
    odd = "data\n\nset\x1b[31m\x00"
    records = [record(m, odd, s, acc + s, backbone="RN\n\n50\x00") for m, acc in (("zero_shot", 40.0), ("tip_adapter", 50.0)) for s in (1, 2, 3)]
    tex = format_latex(build_report(records, None))
    assert not any(ch in tex for ch in "\x00\x1b\r\t")
    body = tex[tex.index(r"\begin{document}"):]
    assert "\n\n\\" in body  # blank lines only between environments ...
    for env in body.split(r"\begin{table}")[1:]:  # ... never inside one
        assert "\n\n" not in env.split(r"\end{table}")[0]
    assert r"data  set\textbackslash{}x1b[31m\textbackslash{}x00" in tex
    # the markdown keeps one heading and one table row per line as well
    clean = [{**r, "dataset": "dataset", "backbone": "RN50"} for r in records]
    lines = format_markdown(build_report(records, None)).splitlines()
    assert len(lines) == len(format_markdown(build_report(clean, None)).splitlines())
