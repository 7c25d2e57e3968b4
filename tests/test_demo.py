"""`hgadapter demo` (hgadapter/demo.py): one comparison of the ablation and the strongest baselines on the synthetic task."""

from __future__ import annotations

from hgadapter.records import load_records


def test_demo_writes_tables_report_and_tsne(tmp_path, monkeypatch, capsys):
    """The demo end to end on a small synthetic task (the real one takes about two minutes)."""
    import hgadapter.cli as cli
    import hgadapter.demo as demo
    import hgadapter.data.synthetic as synthetic

    real = synthetic.build_synthetic_task
    small = synthetic.SyntheticTaskConfig(num_classes=24, num_families=4, dim=32, shots=(2,), seeds=(1, 2), test_per_class=10)
    monkeypatch.setattr(synthetic, "build_synthetic_task", lambda cfg=None: real(small))
    monkeypatch.setattr(demo, "DEMO_SHOTS", 2)
    monkeypatch.setattr(demo, "DEMO_SEEDS", (1, 2))
    assert cli.main(["demo", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC task" in out and "demo finished" in out
    results = (tmp_path / "results.md").read_text()  # hgadapter.report's tables, one comparison
    assert "| HeGraphAdapter | " in results and "(n=2" in results and "| Tip-Adapter |" in results
    runs = {r["run_dir"] for r in load_records(tmp_path)}
    assert runs == {f"{m.replace(':', '-')}/2shot-seed{s}" for m in demo.demo_methods() for s in (1, 2)}  # sweep-style run directories
    report = (tmp_path / "report" / "report.md").read_text()
    for row in ("| Base |", "| HeGraphAdapter(T-N) |", "| HeGraphAdapter |", "| Tip-Adapter |", "| LP++ |", "| GDA |"):
        assert row in report, row
    assert "| Zero-shot CLIP |" not in report and "| ProKeR |" not in report  # --all runs them
    assert (tmp_path / "results.json").is_file() and (tmp_path / "results.csv").is_file()
    assert "synthetic task: says nothing about real CLIP" in report
    assert (tmp_path / "tsne_pos_full_seed1.png").stat().st_size > 0 and (tmp_path / "tsne_pos_full_seed1.pdf").is_file()


def test_demo_methods_default_all_and_none():
    from hgadapter.compare import DEFAULT_METHODS
    from hgadapter.demo import DEMO_BASELINES, demo_methods
    from hgadapter.methods import list_methods

    ablation = ["hegraphadapter:base", "hegraphadapter:t_n", "hegraphadapter:t_p", "hegraphadapter:t", "hegraphadapter"]
    assert demo_methods(baselines=False) == ablation
    assert demo_methods() == ablation + list(DEMO_BASELINES) and set(DEMO_BASELINES) <= set(list_methods())
    from hgadapter.methods import method_class

    needs_encoder = [m for m in DEFAULT_METHODS if method_class(m).needs_encoder]
    assert needs_encoder == ["coop"]  # the synthetic task has no encoder to run it
    assert demo_methods(baselines="all") == ablation + [m for m in DEFAULT_METHODS if m not in ablation and m not in needs_encoder]


def test_demo_all_follows_compares_default_list(tmp_path, monkeypatch, capsys):
    """`demo --all` runs what compare runs by default (a method added there joins the demo's full table)."""
    import hgadapter.cli as cli
    import hgadapter.compare as compare
    import hgadapter.data.synthetic as synthetic
    import hgadapter.demo as demo

    real = synthetic.build_synthetic_task
    small = synthetic.SyntheticTaskConfig(num_classes=12, num_families=3, dim=16, shots=(1,), seeds=(1,), test_per_class=4)
    monkeypatch.setattr(synthetic, "build_synthetic_task", lambda cfg=None: real(small))
    monkeypatch.setattr(demo, "DEMO_SHOTS", 1)
    monkeypatch.setattr(demo, "DEMO_SEEDS", (1,))
    monkeypatch.setattr(demo, "DEMO_VARIANTS", ("base", "full"))  # full: the t-SNE figure draws its run
    monkeypatch.setattr(compare, "DEFAULT_METHODS", ("zero_shot", "tip_adapter"))
    assert cli.main(["demo", "--all", "--out", str(tmp_path), "--quiet"]) == 0
    assert {r["method"] for r in load_records(tmp_path)} == {"hegraphadapter:base", "hegraphadapter", "zero_shot", "tip_adapter"}
