"""`hgadapter demo` (hgadapter/demo.py): one comparison of the variants and baselines on the synthetic task."""

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
    for row in ("| HeGraphAdapter(T-N) |", "| HeGraphAdapter |", "| Tip-Adapter |", "| Zero-shot CLIP |"):
        assert row in report, row
    assert "synthetic task: says nothing about real CLIP" in report
    assert (tmp_path / "tsne_pos_full_seed1.png").stat().st_size > 0 and (tmp_path / "tsne_pos_full_seed1.pdf").is_file()
