"""viz: the t-SNE figure of a run's node features, its coordinates and its command line.

Every test reads a fake run directory built here (clustered random features, no training).
"""

from __future__ import annotations

import argparse
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from viz import compute_tsne, load_run_nodes, plot_node_tsne, select_classes
from viz.__main__ import main
from viz.tsne import add_tsne_arguments, run_tsne_command, short_label

NUM_CLASSES = 12
DIM = 16
NUM_FAMILIES = 3


def make_run(
    root: Path,
    *,
    num_classes: int = NUM_CLASSES,
    adapted: tuple[str, ...] = ("pos", "neg"),
    synthetic: bool = True,
    names: list[str] | None = None,
) -> Path:
    """A run directory like ``hgadapter run`` writes: classes in families, adaptation spreads them."""
    rng = np.random.default_rng(0)
    family_of = np.arange(num_classes) % NUM_FAMILIES  # (C,)
    family_centre = 3 * rng.normal(size=(NUM_FAMILIES, DIM))  # (F, d)
    initial = {t: family_centre[family_of] + 0.5 * rng.normal(size=(num_classes, DIM)) for t in ("pos", "neg", "vis")}
    nodes = {f"initial.{t}": v for t, v in initial.items()}
    for t in adapted:
        nodes[f"adapted.{t}"] = initial[t] + 1.5 * (initial[t] - family_centre[family_of])  # (C, d)
    if adapted:
        nodes["vis_bias"] = 0.1 * rng.normal(size=(num_classes, DIM))
    root.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in nodes.items()}, str(root / "nodes.safetensors"))
    metrics = {"method": "hegraphadapter", "variant": "full" if adapted else "zs", "shots": 4, "seed": 1,
               "val_acc": 70.0, "test_acc": 68.25, "synthetic": synthetic}
    (root / "metrics.json").write_text(json.dumps(metrics))
    names = names or [f"class {c}" for c in range(num_classes)]
    (root / "classes.json").write_text(json.dumps(names))
    return root


def read_points(figure: Path) -> dict:
    return json.loads(figure.with_name(figure.stem + ".tsne.json").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "full-seed1")


@pytest.fixture(scope="module")
def default_figure(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plot_node_tsne(run, tmp_path_factory.mktemp("fig") / "tsne.png", figsize=(6, 3), dpi=50)


# --- the figure ------------------------------------------------------------------------------


def test_png_is_figsize_times_dpi_pixels(default_figure: Path) -> None:
    assert default_figure.stat().st_size > 1000
    with Image.open(default_figure) as image:
        assert image.format == "PNG"
        assert image.size == (6 * 50, 3 * 50)
    # atomic writes leave only the figure and its coordinates behind, no temp files
    assert sorted(p.name for p in default_figure.parent.iterdir()) == ["tsne.png", "tsne.tsne.json"]


def test_coordinates_file_describes_every_point(default_figure: Path) -> None:
    record = read_points(default_figure)
    points = record["points"]
    assert points["stage"] == ["initial"] * NUM_CLASSES + ["adapted"] * NUM_CLASSES
    assert set(points["ntype"]) == {"pos"}
    assert points["class_index"] == list(range(NUM_CLASSES)) * 2
    assert len(points["x"]) == len(points["y"]) == 2 * NUM_CLASSES
    assert np.isfinite(points["x"]).all() and np.isfinite(points["y"]).all()
    assert record["classes"][3] == "class 3"
    assert record["perplexity"] == pytest.approx((2 * NUM_CLASSES - 1) / 3)
    for part in ("variant full", "4-shot", "seed 1", "test 68.25%", "synthetic task"):
        assert part in record["title"]


def test_title_without_synthetic_flag(tmp_path: Path) -> None:
    run = make_run(tmp_path / "real", synthetic=False)
    record = read_points(plot_node_tsne(run, tmp_path / "real.png", figsize=(4, 2), dpi=40))
    assert "synthetic" not in record["title"]


def test_same_seed_same_figure_coordinates(run: Path, default_figure: Path, tmp_path: Path) -> None:
    again = read_points(plot_node_tsne(run, tmp_path / "again.png", figsize=(6, 3), dpi=50))["points"]
    other = read_points(plot_node_tsne(run, tmp_path / "other.png", seed=1, figsize=(6, 3), dpi=50))["points"]
    first = read_points(default_figure)["points"]
    assert again["x"] == first["x"] and again["y"] == first["y"]
    assert other["x"] != first["x"]


def test_several_ntypes_families_and_pdf(run: Path, tmp_path: Path) -> None:
    families = [c % NUM_FAMILIES for c in range(NUM_CLASSES)]
    out = plot_node_tsne(run, tmp_path / "all.pdf", ntypes=("pos", "neg", "vis"), families=families, figsize=(8, 4))
    assert out.read_bytes().startswith(b"%PDF")
    record = read_points(out)
    # the variant adapts pos and neg only, so vis appears in the initial panel alone
    pairs = list(zip(record["points"]["stage"], record["points"]["ntype"]))
    assert pairs.count(("initial", "vis")) == NUM_CLASSES and ("adapted", "vis") not in pairs
    assert len(pairs) == 5 * NUM_CLASSES
    assert record["families"] == families




def test_unknown_ntype_lists_the_available_ones(run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown ntype 'edge'.*available: \['neg', 'pos', 'vis'\]"):
        plot_node_tsne(run, tmp_path / "x.png", ntypes=("edge",))
    assert not list(tmp_path.iterdir())


def test_zero_shot_run_has_only_the_initial_stage(tmp_path: Path) -> None:
    run = make_run(tmp_path / "zs", adapted=())
    with pytest.raises(ValueError, match=r"no 'adapted' node features.*available stages: \['initial'\]"):
        plot_node_tsne(run, tmp_path / "zs.png")
    record = read_points(plot_node_tsne(run, tmp_path / "zs.png", stages=("initial",), figsize=(4, 3), dpi=40))
    assert record["points"]["stage"] == ["initial"] * NUM_CLASSES


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"families": [0, 1]}, "one non-negative integer per class"),
        ({"dpi": 0}, "must be positive"),
        ({"stages": ("initial", "adapted", "initial")}, "stages must not repeat a name"),
        ({"ntypes": ()}, "at least one ntype"),
    ],
)
def test_bad_plot_arguments(run: Path, tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plot_node_tsne(run, tmp_path / "x.png", **kwargs)


def test_unsupported_suffix(run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unsupported figure format '\.jpg'"):
        plot_node_tsne(run, tmp_path / "x.jpg")


# --- the paper's figure: 20 random classes, each point labelled ---------------------------------

MANY = 30
FOOD = [f"dish_{c:02d}" for c in range(MANY - 1)] + ["breakfast_burrito_with_extra_cheese"]


@pytest.fixture(scope="module")
def many_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("many") / "food-seed1", num_classes=MANY, names=FOOD)


def test_paper_figure_draws_20_of_many_classes_as_png_and_pdf(many_run: Path, tmp_path: Path) -> None:
    out = plot_node_tsne(many_run, tmp_path / "tsne_pos.png", formats=("png", "pdf"), figsize=(3.5, 2.5), dpi=40)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (140, 100)
    assert (tmp_path / "tsne_pos.pdf").read_bytes().startswith(b"%PDF")
    record = read_points(out)
    assert record["num_classes"] == 20 and record["class_seed"] == 0
    subset = record["class_subset"]
    assert len(subset) == 20 and subset == sorted(subset) and set(subset) <= set(range(MANY))
    assert subset == select_classes(MANY, 20, class_seed=0).tolist()
    # the t-SNE saw the chosen classes only, in both panels
    assert record["points"]["class_index"] == subset * 2
    assert record["perplexity"] == pytest.approx((40 - 1) / 3)
    assert "20 of 30 classes" in record["title"]


def test_class_subset_and_coordinates_follow_their_seeds(many_run: Path, tmp_path: Path) -> None:
    kwargs = {"figsize": (4, 2), "dpi": 30}
    a = read_points(plot_node_tsne(many_run, tmp_path / "a.png", class_seed=5, **kwargs))
    b = read_points(plot_node_tsne(many_run, tmp_path / "b.png", class_seed=5, **kwargs))
    c = read_points(plot_node_tsne(many_run, tmp_path / "c.png", class_seed=6, **kwargs))
    assert a["class_subset"] == b["class_subset"] and a["points"]["x"] == b["points"]["x"] and a["points"]["y"] == b["points"]["y"]
    assert c["class_subset"] != a["class_subset"]


def test_select_classes() -> None:
    np.testing.assert_array_equal(select_classes(30, 20, class_seed=3), select_classes(30, 20, class_seed=3))
    assert not np.array_equal(select_classes(30, 20, class_seed=3), select_classes(30, 20, class_seed=4))
    np.testing.assert_array_equal(select_classes(12, 20), np.arange(12))  # fewer classes than asked: all
    np.testing.assert_array_equal(select_classes(30, None), np.arange(30))
    with pytest.raises(ValueError, match="must be >= 1"):
        select_classes(30, 0)


def test_every_point_is_labelled_with_its_class_name(many_run: Path, tmp_path: Path) -> None:
    out = plot_node_tsne(many_run, tmp_path / "labels.svg", num_classes=10, class_seed=1, figsize=(7.2, 3.6), dpi=72)
    subset = read_points(out)["class_subset"]
    svg = out.read_text(encoding="utf-8")
    # viz writes SVG text as <text> elements (svg.fonttype "none"), so the labels can be read back
    labels = [html.unescape(t) for t in re.findall(r"<text[^>]*>(.*?)</text>", svg)]
    for c in range(MANY):
        assert labels.count(short_label(FOOD[c])) == (2 if c in subset else 0), FOOD[c]


def test_short_label() -> None:
    assert short_label("apple_pie") == "apple pie"
    long = short_label("breakfast_burrito_with_extra_cheese")
    assert len(long) <= 16 and long.endswith("…") and long.startswith("breakfast burri")


def test_tsne_command_defaults_to_png_and_pdf_in_the_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run", num_classes=MANY, names=FOOD)
    parser = argparse.ArgumentParser(prog="hgadapter tsne")
    add_tsne_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --run is required
    capsys.readouterr()
    args = parser.parse_args(["--run", str(run), "--classes", "6", "--class-seed", "2", "--dpi", "20", "--figsize", "5", "3"])
    assert run_tsne_command(args) == 0
    with Image.open(run / "tsne_pos.png") as image:
        assert image.size == (100, 60)
    assert (run / "tsne_pos.pdf").read_bytes().startswith(b"%PDF")
    record = read_points(run / "tsne_pos.png")
    assert record["class_subset"] == select_classes(MANY, 6, class_seed=2).tolist()
    printed = capsys.readouterr().out
    assert "6 of 30 classes" in printed and str(run / "tsne_pos.pdf") in printed


# --- compute_tsne ----------------------------------------------------------------------------


def clustered_points(n_per: int = 8, clusters: int = 3, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = 4 * rng.normal(size=(clusters, dim))  # (k, d)
    return np.repeat(centres, n_per, axis=0) + rng.normal(size=(clusters * n_per, dim))  # (k * n_per, d)


def test_compute_tsne_is_deterministic_per_seed() -> None:
    points = clustered_points()
    a, b, c = compute_tsne(points, seed=0), compute_tsne(points, seed=0), compute_tsne(points, seed=1)
    assert a.shape == (len(points), 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_compute_tsne_handles_three_points() -> None:
    coords = compute_tsne(np.eye(3, 4))
    assert coords.shape == (3, 2) and np.isfinite(coords).all()


@pytest.mark.parametrize(
    "points, kwargs, match",
    [
        (np.ones((2, 4)), {}, "at least 3 points, got 2"),
        (np.ones(5), {}, r"2-D \(n, d\) array"),
        (np.ones((5, 1)), {}, "at least 2 feature dimensions"),
        (np.where(np.eye(5, 4) > 0, np.nan, 1.0), {}, "4 non-finite values"),
        (np.full((5, 4), np.inf), {}, "non-finite"),
        (np.eye(5, 4), {"perplexity": 5.0}, r"perplexity must lie in \(0, n=5\)"),
    ],
)
def test_compute_tsne_rejects_bad_input(points: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compute_tsne(points, **kwargs)


# --- load_run_nodes --------------------------------------------------------------------------


def test_load_run_nodes(run: Path) -> None:
    node_dict, classnames, metrics = load_run_nodes(run)
    assert set(node_dict) == {"initial.pos", "initial.neg", "initial.vis", "adapted.pos", "adapted.neg", "vis_bias"}
    assert all(v.shape == (NUM_CLASSES, DIM) and v.dtype == np.float32 for v in node_dict.values())
    assert classnames == [f"class {c}" for c in range(NUM_CLASSES)]
    assert metrics["variant"] == "full" and metrics["synthetic"] is True


def test_load_run_nodes_falls_back_without_names_or_metrics(tmp_path: Path) -> None:
    run = make_run(tmp_path / "bare")
    (run / "classes.json").unlink()
    (run / "metrics.json").unlink()
    _, classnames, metrics = load_run_nodes(run)
    assert classnames == [str(c) for c in range(NUM_CLASSES)] and metrics == {}


def test_load_run_nodes_checks_the_class_count(tmp_path: Path) -> None:
    run = make_run(tmp_path / "short")
    (run / "classes.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(ValueError, match="lists 2 classes but nodes.safetensors has 12"):
        load_run_nodes(run)


# --- python -m viz ---------------------------------------------------------------------------


def test_cli_writes_the_figure(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli.png"
    code = main(["tsne", str(run), "--out", str(out), "--ntypes", "pos", "neg", "--seed", "2", "--dpi", "40", "--figsize", "5", "3"])
    assert code == 0
    with Image.open(out) as image:
        assert image.size == (200, 120)
    assert read_points(out)["seed"] == 2
    assert str(out) in capsys.readouterr().out


def _cli_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("viz tsne: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


def test_cli_missing_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    line = _cli_error(capsys, ["tsne", str(tmp_path / "nope"), "--out", str(tmp_path / "f.png")])
    assert "run directory not found" in line


def test_cli_missing_nodes_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    line = _cli_error(capsys, ["tsne", str(tmp_path / "empty"), "--out", str(tmp_path / "f.png")])
    assert "nodes.safetensors" in line


def test_cli_unknown_ntype(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    line = _cli_error(capsys, ["tsne", str(run), "--out", str(tmp_path / "f.png"), "--ntypes", "text"])
    assert "available: ['neg', 'pos', 'vis']" in line


def test_labels_drop_the_words_every_class_name_shares() -> None:
    from viz.tsne import _drop_shared_words

    names = ["synthetic_family3_class4", "synthetic_family0_class1", "synthetic_family3_class0"]
    assert _drop_shared_words(names) == ["family3 class4", "family0 class1", "family3 class0"]
    assert _drop_shared_words(["apple_pie", "baby_back_ribs"]) == ["apple_pie", "baby_back_ribs"]
    assert _drop_shared_words(["red wine", "red"]) == ["red wine", "red"]  # never empties a name


# --- issue 22: classes that read apart, families, a separation score ------------------------


def test_twenty_classes_never_share_colour_or_marker(many_run: Path, tmp_path: Path) -> None:
    from matplotlib.colors import to_hex

    from viz.tsne import class_looks

    looks = class_looks(np.arange(20))
    assert len({look["color"] for look in looks.values()}) == 20
    assert len({(look["color"], look["marker"]) for look in looks.values()}) == 20
    # and the drawn figure uses them: one scatter per class and panel, each class its own look
    from viz import style, tsne

    # draw in memory to read the artists back
    node_dict, classnames, metrics = load_run_nodes(many_run)
    chosen = select_classes(MANY, 20)
    coords = np.zeros((40, 2)) + np.arange(40)[:, None]
    with style.style_context():
        figure = tsne._draw(coords, ["initial"] * 20 + ["adapted"] * 20, ["pos"] * 40, np.tile(chosen, 2),
                            panels=[("initial", ["pos"]), ("adapted", ["pos"])], ntypes=["pos"], chosen=chosen,
                            classnames=classnames, groups=None, metrics=metrics, title="t", dpi=40, figsize=(6, 3),
                            separation={"initial": 0.5, "adapted": 0.4}, dim=DIM)
    drawn = {}
    for ax in figure.axes:
        for coll in ax.collections:
            stage, _, cls = coll.get_gid().split("|")
            path = coll.get_paths()[0]
            drawn.setdefault(stage, {})[int(cls)] = (to_hex(coll.get_facecolor()[0]), tuple(map(tuple, path.vertices.round(3))))
    for stage in ("initial", "adapted"):
        assert len(drawn[stage]) == 20 and len(set(drawn[stage].values())) == 20
    assert drawn["initial"] == drawn["adapted"]  # a class looks the same in both panels


def test_families_are_read_from_names_and_drawn_whole(tmp_path: Path) -> None:
    from viz.tsne import families_from_names, select_family_classes

    names = [f"synthetic_family{c % 6:02d}_class{c // 6}" for c in range(30)]  # 6 families of 5
    groups = families_from_names(names)
    assert groups.tolist() == [c % 6 for c in range(30)]
    assert families_from_names(["cat", "family01 dog"]) is None  # every name must name its family
    chosen = select_family_classes(groups, 20, class_seed=0)
    assert len(chosen) == 20
    counts = np.bincount(groups[chosen], minlength=6)
    assert sorted(counts.tolist()) == [0, 0, 5, 5, 5, 5]  # four whole families of five
    run = make_run(tmp_path / "fam", num_classes=30, names=names)
    record = read_points(plot_node_tsne(run, tmp_path / "fam.png", figsize=(6, 3), dpi=40))
    assert record["families"] == groups.tolist()
    assert record["class_subset"] == chosen.tolist()


def test_separation_score_in_each_panel_and_synthetic_once(run: Path, tmp_path: Path) -> None:
    from viz.tsne import nearest_class_cosine

    x = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # cosines: 0.707 between neighbours, 0 between ends
    assert nearest_class_cosine(x) == pytest.approx(2 ** -0.5)
    out = plot_node_tsne(run, tmp_path / "sep.svg", figsize=(6, 3), dpi=50)
    record = read_points(out)
    node_dict, _, _ = load_run_nodes(run)
    for stage in ("initial", "adapted"):
        assert record["nearest_class_cosine"][stage] == pytest.approx(nearest_class_cosine(node_dict[f"{stage}.pos"]))
    svg = html.unescape(out.read_text(encoding="utf-8"))
    for stage in ("initial", "adapted"):
        assert f"nearest-class cosine {record['nearest_class_cosine'][stage]:.3f}" in svg
    assert record["nearest_class_cosine"]["adapted"] < record["nearest_class_cosine"]["initial"]  # the fake adaptation spreads classes
    synthetic_named = make_run(tmp_path / "syn", synthetic=True)
    metrics = json.loads((synthetic_named / "metrics.json").read_text())
    (synthetic_named / "metrics.json").write_text(json.dumps({**metrics, "dataset": "synthetic"}))
    title = read_points(plot_node_tsne(synthetic_named, tmp_path / "syn.png", figsize=(4, 2), dpi=40))["title"]
    assert title.lower().count("synthetic") == 1
