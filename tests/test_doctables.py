"""hgadapter.doctables: the documentation's results tables are generated from committed records.

The first test is the guard CI relies on: a table in README.md or docs/*.md that no longer
matches its records fails here (run `make docs-tables` and commit).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hgadapter import doctables
from hgadapter.doctables import DocTablesError, load_manifest, main, render_table, update_text

ROOT = Path(__file__).resolve().parent.parent


def test_committed_tables_match_their_records(capsys):
    code = main(["--check", "--root", str(ROOT)])
    out, err = capsys.readouterr()
    assert code == 0, f"stale tables: run `make docs-tables` and commit\n{out}{err}"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run(method, shots, seed, test, val=50.0, dataset="synthetic"):
    return {"method": method, "dataset": dataset, "shots": shots, "seed": seed, "val_acc": val, "test_acc": test}


@pytest.fixture
def repo(tmp_path):
    """A tiny repository: a manifest, two records files (the second re-measures one method) and a README."""
    write_jsonl(tmp_path / "docs/results/a.jsonl", [
        *(run("tip_adapter", k, s, 60.0 + k + s) for k in (1, 4) for s in (1, 2, 3)),  # mean 62 + k, std 1
        *(run("linear_probe", k, s, 10.0) for k in (1, 4) for s in (1, 2, 3)),
    ])
    write_jsonl(tmp_path / "docs/results/b.jsonl", [run("linear_probe", 4, s, 40.0 + 2 * s) for s in (1, 2, 3)])  # mean 44, std 2
    (tmp_path / "docs/tables.yaml").write_text(
        "records:\n  demo: [docs/results/a.jsonl, docs/results/b.jsonl]\n"
        "tables:\n  fewshot: {records: demo, bold: true}\n"
    )
    (tmp_path / "README.md").write_text("# x\n\nbefore\n<!-- table:fewshot -->\nold\n<!-- /table:fewshot -->\nafter\n")
    return tmp_path


def table_rows(text: str) -> dict[str, list[str]]:
    return {cells[0]: cells[1:] for line in text.splitlines() if line.startswith("| ") for cells in [[c.strip() for c in line.strip("|").split("|")]]}


def test_means_over_seeds_precedence_and_bold(repo):
    manifest = load_manifest(root=repo)
    text = render_table(manifest, manifest.tables["fewshot"])
    rows = table_rows(text)
    assert rows["method"] == ["1-shot", "4-shot"]
    assert rows["Tip-Adapter"] == ["**63.00 ± 1.00**", "**66.00 ± 1.00**"]
    # b.jsonl comes later, so its 4-shot linear probe replaces a.jsonl's; its 1-shot stays
    assert rows["Linear Probe CLIP"] == ["10.00 ± 0.00", "44.00 ± 2.00"]
    assert list(rows) == ["method", "Linear Probe CLIP", "Tip-Adapter"]  # paper_results.yaml's order and names
    assert "mean ± sample std over seeds 1-3" in text and "`docs/results/b.jsonl`" in text


def test_check_fails_on_a_stale_table_and_the_rewrite_fixes_it(repo, capsys):
    assert main(["--check", "--root", str(repo)]) == 1
    assert "README.md (committed)" in capsys.readouterr().out
    assert main(["--root", str(repo)]) == 0
    text = (repo / "README.md").read_text()
    assert text.startswith("# x\n\nbefore\n<!-- table:fewshot -->\n") and text.endswith("<!-- /table:fewshot -->\nafter\n")
    assert main(["--check", "--root", str(repo)]) == 0
    (repo / "README.md").write_text(text.replace("66.00 ± 1.00", "66.10 ± 1.00"))  # a hand edit
    assert main(["--check", "--root", str(repo)]) == 1


def test_a_new_record_file_makes_the_table_stale(repo):
    assert main(["--root", str(repo)]) == 0
    write_jsonl(repo / "docs/results/c.jsonl", [run("tip_adapter", 4, 1, 99.0)])
    manifest = (repo / "docs/tables.yaml").read_text().replace("docs/results/b.jsonl]", "docs/results/b.jsonl, docs/results/c.jsonl]")
    (repo / "docs/tables.yaml").write_text(manifest)
    assert main(["--check", "--root", str(repo)]) == 1


def test_tasks_averaged_with_a_footnote_for_a_missing_task(tmp_path):
    write_jsonl(tmp_path / "s.jsonl", [
        {"label": "suite", "task": t, "method": m, "shots": 16, "seed": 1, "val": 1.0, "test": v}
        for t, m, v in [("a", "gda", 50.0), ("b", "gda", 70.0), ("a", "proker", 80.0)]
    ])
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/tables.yaml").write_text(
        "records: {suite: [s.jsonl]}\n"
        "tables:\n  mean: {records: suite}\n  per_task: {records: suite, columns: datasets, shots: [16], average: true}\n"
    )
    manifest = load_manifest(root=tmp_path)
    mean = render_table(manifest, manifest.tables["mean"])
    assert table_rows(mean)["GDA"] == ["60.00"] and table_rows(mean)["ProKeR"] == ["80.00†"]
    assert "† mean over the tasks it was run on; not run on b." in mean
    assert "mean over the 2 tasks" in mean and "seed 1" in mean
    per_task = table_rows(render_table(manifest, manifest.tables["per_task"]))
    assert per_task["method"] == ["a", "b", "average"]
    assert per_task["GDA"] == ["50.00", "70.00", "60.00"] and per_task["ProKeR"] == ["80.00", "not run", "–"]


def test_labels_table_is_the_choices_summary(tmp_path):
    write_jsonl(tmp_path / "c.jsonl", [
        {"label": lab, "task": t, "method": "hegraphadapter", "shots": k, "seed": 1, "val": v, "test": v - 1}
        for lab, base in [("E", 50.0), ("final", 60.0)] for t, dt in [("a", 0.0), ("b", 10.0)] for k, dk in [(1, 0.0), (16, 4.0)]
        for v in [base + dt + dk]
    ])
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/tables.yaml").write_text(
        "records: {c: [c.jsonl]}\n"
        "tables:\n  t: {records: c, rows: labels, method: hegraphadapter, value: val/test}\n"
    )
    manifest = load_manifest(root=tmp_path)
    rows = table_rows(render_table(manifest, manifest.tables["t"]))
    assert rows["choice"] == ["a", "b", "K=1", "K=16", "mean"]
    assert rows["E"] == ["52.00 / 51.00", "62.00 / 61.00", "55.00 / 54.00", "59.00 / 58.00", "**57.00** / 56.00"]
    assert rows["final"][-1] == "**67.00** / 66.00"


def test_collect_writes_one_record_per_run(tmp_path):
    for method, seed, acc in [("zero_shot", 1, 56.5), ("tip_adapter", 2, 73.0)]:
        run_dir = tmp_path / "runs" / method / f"16shot-seed{seed}"
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({**run(method, 16, seed, acc), "synthetic": True, "hparams": {"alpha": 1}}))
    out = tmp_path / "records.jsonl"
    assert main(["--collect", str(tmp_path / "runs"), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["method"], r["seed"], r["test_acc"], r["synthetic"]) for r in rows] == [("tip_adapter", 2, 73.0, True), ("zero_shot", 1, 56.5, True)]
    assert "hparams" not in rows[0] and rows[0]["run_dir"] == "tip_adapter/16shot-seed2"


@pytest.mark.parametrize(
    "text, match",
    [
        ("<!-- table:a -->\nx\n", "do not pair up"),
        ("<!-- table:nope -->\n<!-- /table:nope -->\n", "unknown table 'nope'"),
    ],
)
def test_malformed_markers_are_one_line_errors(text, match):
    with pytest.raises(DocTablesError, match=match):
        update_text(text, {"a": "A\n"})


@pytest.mark.parametrize(
    "manifest, match",
    [
        ("records: {r: [x.jsonl]}\ntables: {t: {records: r, colums: shots}}\n", r"tables.t.colums: unknown key; valid keys"),
        ("records: {r: [x.jsonl]}\ntables: {t: {records: q}}\n", r"unknown record set 'q'; available: \['r'\]"),
        ("records: {r: [x.jsonl]}\ntables: {t: {records: r, columns: rows}}\n", r"choose one of \['shots', 'datasets', 'splits'\]"),
        ("records: {r: [x.jsonl]}\ntables: {t: {records: r, columns: datasets}}\n", r"at one shot count"),
        ("records: {r: [x.jsonl]}\ntables: {t: {records: r, rows: labels}}\n", r"needs the method"),
    ],
)
def test_manifest_errors_name_the_key(tmp_path, manifest, match):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/tables.yaml").write_text(manifest)
    with pytest.raises(DocTablesError, match=match):
        load_manifest(root=tmp_path)


def test_a_table_in_no_document_is_an_error(repo):
    (repo / "README.md").write_text("# no markers\n")
    assert main(["--check", "--root", str(repo)]) == 2


def test_every_manifest_table_is_in_a_document():
    manifest = load_manifest(root=ROOT)
    text = "".join(p.read_text() for p in doctables._documents(ROOT))
    for name in manifest.tables:
        assert f"<!-- table:{name} -->" in text


# --- the README's facts that are not tables --------------------------------------------------


def readme() -> str:
    return " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())


def test_readme_names_every_method_compare_runs():
    from hgadapter.compare import DEFAULT_METHODS
    from hgadapter.paper_results import PaperResults, load_paper_results

    names = PaperResults(load_paper_results())
    missing = [m for m in DEFAULT_METHODS if m != "hegraphadapter" and names.display("methods", m) not in readme()]
    assert not missing, f"README's list of methods lacks {missing}"


@pytest.mark.parametrize(
    "files, what",
    [
        (["experiments/synthetic/fewshot.yaml"], "255 runs"),
        (["experiments/synthetic/fewshot.yaml", "experiments/synthetic/sensitivity.yaml"], "378 runs"),
        ([f"experiments/suite/sweep/{t}.yaml" for t in ("coarse20", "demo100", "fine37", "flat200", "many500", "poortext50")], "360 runs"),
    ],
)
def test_readme_run_counts_are_what_the_experiment_files_expand_to(files, what):
    from hgadapter.sweep import expand_experiment

    count = sum(len(expand_experiment(ROOT / f)) for f in files)
    assert what in readme() and what == f"{count} runs", f"{files} expand to {count} runs; README says {what}"


def test_a_cell_with_fewer_seeds_says_so(repo):
    write_jsonl(repo / "docs/results/b.jsonl", [run("gda", 4, 1, 40.0)])  # one seed where the rest have three
    manifest = load_manifest(root=repo)
    rows = table_rows(render_table(manifest, manifest.tables["fewshot"]))
    assert rows["GDA"] == ["not run", "40.00 (n=1)"]


def test_a_mean_over_fewer_tasks_is_not_bold(tmp_path):
    write_jsonl(tmp_path / "s.jsonl", [
        {"label": "suite", "task": t, "method": m, "shots": 16, "seed": 1, "val": 1.0, "test": v}
        for t, m, v in [("a", "gda", 50.0), ("b", "gda", 70.0), ("a", "proker", 80.0)]
    ])
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/tables.yaml").write_text("records: {s: [s.jsonl]}\ntables:\n  t: {records: s, bold: true}\n")
    manifest = load_manifest(root=tmp_path)
    rows = table_rows(render_table(manifest, manifest.tables["t"]))
    assert rows["GDA"] == ["**60.00**"] and rows["ProKeR"] == ["80.00†"]


def test_readme_demo_table_lists_what_the_quick_demo_runs():
    from hgadapter.demo import demo_methods

    assert list(load_manifest(root=ROOT).tables["demo"].methods) == demo_methods()
