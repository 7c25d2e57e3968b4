"""viz.curves and viz.style: accuracy vs shots, sensitivity, training curves, the figures command.

Every test reads run directories written here with known accuracies, so each plotted value can
be checked against a mean computed by hand.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from matplotlib.colors import to_hex
from PIL import Image

from hgadapter.records import load_records
from viz import style
from viz.__main__ import main
from viz.curves import (
    add_figures_arguments,
    MAX_LINES,
    plot_accuracy_vs_shots,
    plot_figures,
    plot_sensitivity,
    plot_training_curves,
    run_figures_command,
)

DATASETS = ("caltech101", "dtd")
METHODS = ("hegraphadapter", "tip_adapter")
SHOTS = (1, 2, 4)
SEEDS = (1, 2, 3)
DPI = 40  # small images keep the tests fast; 7.2 in x 40 dpi = 288 px


def expected_acc(dataset: str, method: str, shots: int, seed: int) -> float:
    """Known test accuracies: over seeds 1, 2, 3 the mean adds 2 and the std is exactly 1."""
    return 50.0 + 10 * DATASETS.index(dataset) + 5 * METHODS.index(method) + 3 * shots + seed


def expected_mean(dataset: str, method: str, shots: int) -> float:
    return 50.0 + 10 * DATASETS.index(dataset) + 5 * METHODS.index(method) + 3 * shots + 2


def write_run(root: Path, rel: str, *, history: list[dict[str, Any]] | None = None, **record: Any) -> Path:
    run = root / rel
    run.mkdir(parents=True, exist_ok=True)
    record.setdefault("val_acc", record.get("test_acc", 0.0))
    (run / "metrics.json").write_text(json.dumps(record))
    if history is not None:
        (run / "history.json").write_text(json.dumps(history))
    return run


def history_of(seed: int, epochs: int = 4) -> list[dict[str, Any]]:
    return [{"epoch": e, "loss": 1.0 / (e + seed), "lr": 1e-3, "val_acc": 40.0 + 10 * e + seed} for e in range(epochs)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Few-shot runs of 2 methods x 2 datasets x 3 shots x 3 seeds, plus a sensitivity sweep."""
    root = tmp_path_factory.mktemp("runs")
    for dataset in DATASETS:
        for method in METHODS:
            for shots in SHOTS:
                for seed in SEEDS:
                    write_run(
                        root, f"fewshot/{dataset}/{method}/{shots}shot/seed{seed}",
                        method=method, dataset=dataset, backbone="RN50", shots=shots, seed=seed, params={},
                        test_acc=expected_acc(dataset, method, shots, seed), synthetic=True,
                        history=history_of(seed) if (method, dataset, shots) == ("hegraphadapter", "dtd", 4) else None,
                    )
    # a grid sweep: the same 4-shot setting, one key swept; must not enter accuracy vs shots
    for value, accs in ((0.1, (60.0, 62.0)), (0.2, (64.0, 64.0)), ("learn", (61.0, 63.0))):
        for seed, acc in zip((1, 2), accs):
            write_run(root, f"sens/w={value}/seed{seed}", method="hegraphadapter", dataset="caltech101", backbone="RN50",
                      shots=4, seed=seed, params={"model.fusion.w": value}, test_acc=acc, synthetic=True)
    return root


@pytest.fixture(scope="module")
def records(runs: Path) -> list[dict[str, Any]]:
    return load_records(runs)


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def lines_by_gid(figure: Any) -> dict[tuple[str, str], Any]:
    """(panel id: its gid, else its title; line gid) -> Line2D of every line with a gid."""
    return {(ax.get_gid() or ax.get_title(), line.get_gid()): line for ax in figure.axes for line in ax.lines if line.get_gid()}


# --- accuracy vs shots ------------------------------------------------------------------------


def test_accuracy_vs_shots_plots_the_seed_means(records: list[dict], tmp_path: Path) -> None:
    figure = plot_accuracy_vs_shots(records, tmp_path / "acc.png", dpi=DPI)
    lines = lines_by_gid(figure)
    assert set(lines) == {(panel, m) for panel in (*DATASETS, "Average") for m in METHODS}
    for dataset in DATASETS:
        for method in METHODS:
            line = lines[(dataset, method)]
            assert list(line.get_xdata()) == list(SHOTS)
            assert list(line.get_ydata()) == pytest.approx([expected_mean(dataset, method, s) for s in SHOTS])
    for method in METHODS:
        average = [sum(expected_mean(d, method, s) for d in DATASETS) / len(DATASETS) for s in SHOTS]
        assert list(lines[("Average", method)].get_ydata()) == pytest.approx(average)
    # the band is mean +- std, and the std over the three seeds is exactly 1
    band = figure.axes[0].collections[0].get_paths()[0].vertices[:, 1]
    low = expected_mean(DATASETS[0], METHODS[0], SHOTS[0]) - 1
    assert band.min() == pytest.approx(low)
    assert [ax.get_title() for ax in figure.axes if ax.get_visible()] == ["Caltech101", "DTD", "Average"]  # paper order and names
    assert figure.axes[0].get_xscale() == "log"
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["1", "2", "4"]
    assert figure.get_suptitle().endswith("(synthetic task)") and "RN50" in figure.get_suptitle()
    # files: the PNG is exactly inches x dpi, the PDF is a PDF, no temp files are left behind
    width, height = figure.get_size_inches()
    assert png_size(tmp_path / "acc.png") == (round(width * DPI), round(height * DPI))
    assert png_size(tmp_path / "acc.png")[0] == round(style.TEXT_WIDTH * DPI)
    assert (tmp_path / "acc.pdf").read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.pdf", "acc.png"]


def test_methods_keep_their_palette_colour_across_figures(records: list[dict], runs: Path) -> None:
    acc = lines_by_gid(plot_accuracy_vs_shots(records, None, dpi=DPI))
    for (_, method), line in acc.items():
        assert line.get_color() == style.method_style(method)["color"]
    curves = plot_training_curves(records, None, root=runs, dpi=DPI)
    colours = {to_hex(line.get_color()) for ax in curves.axes for line in ax.lines}
    assert colours == {to_hex(style.method_style("hegraphadapter")["color"])}


def test_single_dataset_filter_has_no_average_panel(records: list[dict]) -> None:
    figure = plot_accuracy_vs_shots(records, None, dataset="dtd", dpi=DPI)
    visible = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert visible == ["DTD"]  # the paper's name for the dataset
    assert figure.get_size_inches()[0] == pytest.approx(style.COLUMN_WIDTH)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dataset": "imagenet"}, r"unknown dataset 'imagenet'; the records hold \['caltech101', 'dtd'\]"),
        ({"backbone": "ViT-B/16"}, r"unknown backbone 'ViT-B/16'; the records hold \['RN50'\]"),
    ],
)
def test_accuracy_vs_shots_rejects_unknown_filters(records: list[dict], kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plot_accuracy_vs_shots(records, None, **kwargs)


def test_accuracy_vs_shots_rejects_bad_records(records: list[dict]) -> None:
    with pytest.raises(ValueError, match="no records to plot"):
        plot_accuracy_vs_shots([], None)
    swept = [r for r in records if r.get("params")]
    with pytest.raises(ValueError, match="grid points of a sweep"):
        plot_accuracy_vs_shots(swept, None)
    mixed = [dict(r, backbone="ViT-B/16") if r["seed"] == 1 else r for r in records]
    with pytest.raises(ValueError, match=r"records mix backbones \['RN50', 'ViT-B/16'\]; pass backbone="):
        plot_accuracy_vs_shots(mixed, None)
    assert plot_accuracy_vs_shots(mixed, None, backbone="RN50", dpi=DPI).axes


# --- sensitivity ------------------------------------------------------------------------------


def test_sensitivity_plots_means_per_value_and_the_paper(records: list[dict], tmp_path: Path) -> None:
    paper = {"model.fusion.w": {0.1: 65.0, 0.2: 66.5}}
    figure = plot_sensitivity(records, tmp_path / "sens.png", paper=paper, dpi=DPI)
    lines = lines_by_gid(figure)
    ours = lines[("model.fusion.w", "model.fusion.w|hegraphadapter")]
    # a non-numeric value ('learn') puts the values on evenly spaced ticks, numbers first
    assert list(ours.get_xdata()) == [0.0, 1.0, 2.0]
    assert list(ours.get_ydata()) == pytest.approx([61.0, 64.0, 62.0])
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["0.1", "0.2", "learn"]
    published = lines[("model.fusion.w", "model.fusion.w|paper")]
    assert published.get_label() == "paper" and published.get_linestyle() == "--"
    assert list(published.get_ydata()) == [65.0, 66.5]
    assert png_size(tmp_path / "sens.png")[0] == round(style.COLUMN_WIDTH * DPI)  # one panel: one column
    assert (tmp_path / "sens.pdf").read_bytes().startswith(b"%PDF")


def test_sensitivity_errors(records: list[dict]) -> None:
    plain = [r for r in records if not r.get("params")]
    with pytest.raises(ValueError, match="none of the .* records has sweep 'params'"):
        plot_sensitivity(plain, None)
    with pytest.raises(ValueError, match=r"paper values given for \['train.lr'\], but the records sweep only \['model.fusion.w'\]"):
        plot_sensitivity(records, None, paper={"train.lr": {0.1: 50.0}})


# --- training curves --------------------------------------------------------------------------


def test_training_curves_from_run_directories(runs: Path, tmp_path: Path) -> None:
    dirs = [runs / f"fewshot/dtd/hegraphadapter/4shot/seed{s}" for s in SEEDS]
    no_history = runs / "fewshot/dtd/tip_adapter/4shot/seed1"
    figure = plot_training_curves([*dirs, no_history], tmp_path / "train.png", dpi=DPI)
    loss_ax, acc_ax = figure.axes[:2]
    assert [line.get_gid() for line in loss_ax.lines] == [str(d) for d in dirs]  # the run without history is skipped
    assert [line.get_label() for line in loss_ax.lines] == [f"HeGraphAdapter / seed {s}" for s in SEEDS]
    assert list(loss_ax.lines[0].get_ydata()) == pytest.approx([h["loss"] for h in history_of(1)])
    by_gid = {line.get_gid(): line for line in acc_ax.lines}
    assert list(by_gid[str(dirs[2])].get_ydata()) == pytest.approx([h["val_acc"] for h in history_of(3)])
    # what the tables report (the record's val_acc, after selection) is drawn beside each curve
    for seed, run_dir in zip(SEEDS, dirs):
        star = by_gid[f"{run_dir}|reported"]
        assert star.get_marker() == "*" and list(star.get_ydata()) == [json.loads((run_dir / "metrics.json").read_text())["val_acc"]]
        assert star.get_xdata()[0] > history_of(seed)[-1]["epoch"]
    assert acc_ax.get_title() == "validation accuracy of the trained part"
    assert any("reported val acc" in t.get_text() for t in figure.legends[0].get_texts())
    assert len({line.get_linestyle() for line in loss_ax.lines}) == 3  # seeds of one method differ by style
    assert png_size(tmp_path / "train.png")[0] == round(style.TEXT_WIDTH * DPI)
    with pytest.raises(ValueError, match="none of the 1 runs has a history.json"):
        plot_training_curves([no_history], None)


def test_many_methods_are_grouped_by_family_with_the_others_in_grey() -> None:
    methods = ["zero_shot", "hegraphadapter", "hegraphadapter:t", "tip_adapter", "tip_adapter_f", "gda", "linear_probe", "lp_plus_plus", "taskres"]
    recs = [{"method": m, "dataset": "synthetic", "shots": k, "seed": 1, "val_acc": 1.0, "test_acc": 50.0 + i + k, "synthetic": True}
            for i, m in enumerate(methods) for k in (1, 2, 4)]
    figure = plot_accuracy_vs_shots(recs, None, dpi=DPI)
    panels = {ax.get_title(): ax for ax in figure.axes if ax.get_visible()}
    assert list(panels) == ["HeGraphAdapter and its ablation", "training-free caches", "linear probes", "adapters and residuals"]
    for title, ax in panels.items():
        coloured = {line.get_gid() for line in ax.lines if line.get_color() != "0.8"}
        family = {m for m in methods if style.method_family(m) == title}
        assert coloured == family | set(style.REFERENCE_METHODS)  # its family and the two references
        assert {line.get_gid() for line in ax.lines} == set(methods)  # the rest as grey context
        assert len(coloured) <= MAX_LINES
    assert "other methods in grey" in figure.get_suptitle() and figure.get_suptitle().count("synthetic") == 1


# --- plot_figures and the command line ----------------------------------------------------------


def test_plot_figures_writes_every_supported_figure(runs: Path, tmp_path: Path) -> None:
    written = plot_figures(runs, tmp_path / "figs", dpi=DPI)
    names = [p.name for p in written]
    assert names == [f"{n}.{ext}" for n in ("accuracy_vs_shots", "sensitivity", "training_curves") for ext in ("png", "pdf")]
    for path in written:
        assert path.is_file() and path.stat().st_size > 1000
        if path.suffix == ".pdf":
            assert path.read_bytes().startswith(b"%PDF")
        else:
            assert png_size(path)[0] in (round(style.TEXT_WIDTH * DPI), round(style.COLUMN_WIDTH * DPI))


def test_plot_figures_with_one_shot_count_and_no_history_has_nothing_to_draw(tmp_path: Path) -> None:
    write_run(tmp_path / "runs", "a/seed1", method="zero_shot", shots=16, seed=1, test_acc=50.0)
    with pytest.raises(ValueError, match=r"nothing to plot from 1 runs \(shots \[16\].*2 or more shot counts"):
        plot_figures(tmp_path / "runs", tmp_path / "figs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no run found"):
        plot_figures(tmp_path / "empty", tmp_path / "figs")


def test_figures_command(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser(prog="hgadapter figures")
    add_figures_arguments(parser)
    paper = tmp_path / "paper.json"
    paper.write_text(json.dumps({"model.fusion.w": {"0.1": 65.0, "learn": 65.68}}))
    args = parser.parse_args([str(runs), "--out", str(tmp_path / "figs"), "--formats", "png", "--dpi", str(DPI), "--paper", str(paper)])
    assert run_figures_command(args) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "figs" / f"{n}.png") for n in ("accuracy_vs_shots", "sensitivity", "training_curves")]


def test_python_m_viz_figures_reports_errors_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["figures", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("viz figures: error: ") and "no run found" in err[0]


def test_viz_does_not_import_torch() -> None:
    code = "import sys, viz, viz.curves, viz.tsne, viz.__main__; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- style ------------------------------------------------------------------------------------


def test_series_styles_are_distinct_and_from_the_palette() -> None:
    looks = [style.series_style(i) for i in range(32)]
    assert len({tuple(sorted(look.items())) for look in looks}) == 32
    assert {look["color"] for look in looks} == set(style.OKABE_ITO.values())
    assert len(style.PALETTE) == 8 and set(style.PALETTE) == set(style.OKABE_ITO.values())


def test_every_registered_method_has_its_own_stable_look() -> None:
    from hgadapter.methods import list_methods

    looks = {m: style.method_style(m) for m in list_methods()}
    assert len({tuple(sorted(look.items())) for look in looks.values()}) == len(looks)
    assert len({look["color"] for look in looks.values()}) == len(looks)  # colour alone tells them apart
    assert style.method_style("my_method") == style.method_style("my_method")


def test_output_paths_and_save_figure(tmp_path: Path) -> None:
    assert style.output_paths(tmp_path / "f.png", ("png", "pdf")) == [tmp_path / "f.png", tmp_path / "f.pdf"]
    assert style.output_paths(tmp_path / "f", (".pdf",)) == [tmp_path / "f.pdf"]
    assert style.output_paths(tmp_path / "f.svg", None) == [tmp_path / "f.svg"]
    with pytest.raises(ValueError, match=r"unsupported figure format '\.jpg'"):
        style.output_paths(tmp_path / "f.jpg")
    with pytest.raises(ValueError, match="unsupported figure format 'tiff'"):
        style.output_paths(tmp_path / "f.png", ("tiff",))
    with pytest.raises(ValueError, match="no suffix and no formats"):
        style.output_paths(tmp_path / "f")
    with style.style_context():
        figure = style.new_figure(style.COLUMN_WIDTH, 2.0, dpi=100)
        figure.subplots().plot([0, 1], [0, 1])
    written = style.save_figure(figure, tmp_path / "out" / "f.png", formats=style.DEFAULT_FORMATS)
    assert written == [tmp_path / "out" / "f.png", tmp_path / "out" / "f.pdf"]
    assert png_size(written[0]) == (350, 200)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f.pdf", "f.png"]


def test_imagenet_sweeps_get_the_papers_table3_line_and_synthetic_ones_do_not(tmp_path: Path) -> None:
    from viz.curves import paper_sensitivity, plot_figures

    key = "stages.1.metapaths.2.beta"  # p2p: Table 3's first row
    for value in (0.0, 0.06):
        write_run(tmp_path / "real", f"w={value}/seed1", method="hegraphadapter:t", dataset="imagenet", backbone="RN50",
                  shots=16, seed=1, params={key: value}, test_acc=60.0, synthetic=False)
        write_run(tmp_path / "synth", f"w={value}/seed1", method="hegraphadapter:t", dataset="synthetic",
                  shots=16, seed=1, params={key: value}, test_acc=60.0, synthetic=True)
    paper = paper_sensitivity(load_records(tmp_path / "real"))
    assert set(paper) == {key} and paper[key][0.06] == 66.06 and paper[key][0.0] == 65.96
    assert paper_sensitivity(load_records(tmp_path / "synth")) is None
    plot_figures(tmp_path / "real", tmp_path / "figs", formats=("png",))
    assert (tmp_path / "figs" / "sensitivity.png").is_file()
    from viz.curves import plot_sensitivity, sensitivity_labels

    labels = sensitivity_labels()
    assert labels[key] == "p2p weight" and labels["stages.1.metapaths.0.beta_test"] == "n2p (test time) weight"
    figure = plot_sensitivity(load_records(tmp_path / "real"), None, labels=labels)
    assert figure.axes[0].get_title() == "p2p weight"


def test_a_seed_run_twice_counts_once(tmp_path: Path) -> None:
    for sweep in ("fewshot", "ablation"):  # the same 16-shot runs, once from each sweep
        for seed, acc in ((1, 60.0), (2, 62.0), (3, 64.0)):
            write_run(tmp_path, f"{sweep}/s{seed}", method="hegraphadapter", dataset="dtd", shots=16, seed=seed, test_acc=acc)
    for seed in (1, 2, 3):
        write_run(tmp_path, f"fewshot/k1s{seed}", method="hegraphadapter", dataset="dtd", shots=1, seed=seed, test_acc=50.0)
    figure = plot_accuracy_vs_shots(load_records(tmp_path), None)
    line = lines_by_gid(figure)[("dtd", "hegraphadapter")]
    assert list(line.get_ydata()) == pytest.approx([50.0, 62.0])
    band = figure.axes[0].collections[0].get_paths()[0].vertices[:, 1]
    assert band.max() == pytest.approx(64.0)  # 62 + sample std 2 over three seeds, not over six runs (1.79)


def test_sensitivity_panels_follow_the_papers_rows(tmp_path: Path) -> None:
    from viz.curves import plot_sensitivity, sensitivity_labels

    keys = ["train.learn_betas", "stages.1.metapaths.0.beta_test", "stages.1.metapaths.2.beta", "zz.other"]
    for i, key in enumerate(keys):
        for value in (0.1, 0.2):
            write_run(tmp_path, f"{i}/{value}", method="hegraphadapter:t", dataset="synthetic", shots=16, seed=1,
                      params={key: value}, test_acc=60.0, synthetic=True)
    figure = plot_sensitivity(load_records(tmp_path), None, labels=sensitivity_labels())
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == ["p2p weight", "n2p (test time) weight", "all fusion weights learned", "zz.other"]
