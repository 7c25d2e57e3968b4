"""viz.bars: the grouped bar chart of `hgadapter compare`, checked against means computed by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.colors import to_hex

import hgadapter
import viz
from viz import style
from viz.bars import plot_accuracy_bars


def record(method: str, shots: int, seed: int, test_acc: float) -> dict:
    return {"method": method, "shots": shots, "seed": seed, "val_acc": 50.0, "test_acc": test_acc, "dataset": "synthetic", "synthetic": True}


RECORDS = [
    *(record("tip_adapter", k, s, 60.0 + k + s) for k in (1, 4) for s in (1, 2, 3)),  # mean 62 + k, std 1
    *(record("tip_adapter_f", k, s, 70.0 + 2 * s) for k in (1, 4) for s in (1, 2, 3)),  # mean 74, std 2
    record("hegraphadapter", 4, 1, 80.0),
    record("hegraphadapter", 4, 1, 82.0),  # the same seed twice counts once, as its mean 81
    record("hegraphadapter", 4, 2, 85.0),
]


def bars(figure) -> dict[str, list[tuple[float, float, float]]]:
    """method -> [(x, height, half the error bar)] read back from the drawn figure."""
    ax = figure.axes[0]
    out = {}
    for container in ax.containers:
        if not hasattr(container, "patches"):
            continue
        segments = container.errorbar.lines[2][0].get_segments()
        out[container.patches[0].get_gid()] = [
            (p.get_x() + p.get_width() / 2, p.get_height(), (seg[1][1] - seg[0][1]) / 2) for p, seg in zip(container.patches, segments)
        ]
    return out


def test_bars_are_means_over_seeds_with_sample_std(tmp_path):
    figure = plot_accuracy_bars(RECORDS, tmp_path / "chart", formats=("png", "pdf"), dpi=40)
    got = bars(figure)
    assert list(got) == sorted(got, key=style.method_order) == ["hegraphadapter", "tip_adapter", "tip_adapter_f"]
    assert [(h, e) for _, h, e in got["tip_adapter"]] == [pytest.approx((63.0, 1.0)), pytest.approx((66.0, 1.0))]
    assert [(h, e) for _, h, e in got["tip_adapter_f"]] == [pytest.approx((74.0, 2.0))] * 2
    (x, height, err), = got["hegraphadapter"]  # only at 4 shots: no bar where a method has no runs
    assert x > 0.5 and height == pytest.approx(83.0) and err == pytest.approx(2 ** 0.5 * 2)  # seeds 81 and 85
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1 shot", "4 shots"]
    assert "(synthetic task)" in ax.get_title()
    for path in (tmp_path / "chart.png", tmp_path / "chart.pdf"):
        assert path.stat().st_size > 1000


def test_methods_keep_their_colour_and_a_shared_colour_gets_a_hatch():
    figure = plot_accuracy_bars(RECORDS, None, dpi=40)
    patches = {c.patches[0].get_gid(): c.patches[0] for c in figure.axes[0].containers if hasattr(c, "patches")}
    for method, patch in patches.items():
        assert to_hex(patch.get_facecolor()) == to_hex(style.method_style(method)["color"])
    assert patches["tip_adapter"].get_hatch() != patches["tip_adapter_f"].get_hatch()  # both blue


def test_no_records_is_a_clear_error():
    with pytest.raises(ValueError, match="no records to plot"):
        plot_accuracy_bars([], None)


def test_viz_is_this_projects_package():
    """`viz` is a generic top-level name (docs/viz.md): fail loudly if another project's shadows ours."""
    assert Path(viz.__file__).resolve().parent.parent == Path(hgadapter.__file__).resolve().parent.parent
    assert (Path(viz.__file__).parent / "bars.py").is_file()


def test_every_registered_method_has_its_own_colour():
    from hgadapter.methods import list_methods
    from hgadapter.config import list_variants

    methods = list(dict.fromkeys([*list_methods(), *(f"hegraphadapter:{v}" for v in list_variants() if v != "full")]))
    colours = {m: to_hex(style.method_style(m)["color"]) for m in methods}
    assert len(set(colours.values())) == len(methods), colours
    figure = plot_accuracy_bars([record(m, 16, 1, 50.0 + i) for i, m in enumerate(methods)], None, dpi=30)
    drawn = [to_hex(c.patches[0].get_facecolor()) for c in figure.axes[0].containers if hasattr(c, "patches")]
    assert len(drawn) == len(set(drawn))


def test_base_and_zero_shot_are_one_bar_when_they_agree():
    same = [record(m, 16, s, 56.5) for m in ("zero_shot", "hegraphadapter:base") for s in (1, 2)]
    ax = plot_accuracy_bars(same + [record("tip_adapter", 16, 1, 70.0)], None, dpi=30).axes[0]
    gids = [c.patches[0].get_gid() for c in ax.containers if hasattr(c, "patches")]
    assert gids.count("zero_shot") == 1 and "hegraphadapter:base" not in gids
    assert "Zero-shot CLIP (= Base)" in [t.get_text() for t in ax.figure.legends[0].get_texts()]
    differ = same + [record("hegraphadapter:base", 16, 3, 10.0)]  # not the same runs: both stay
    gids = [c.patches[0].get_gid() for c in plot_accuracy_bars(differ, None, dpi=30).axes[0].containers if hasattr(c, "patches")]
    assert {"zero_shot", "hegraphadapter:base"} <= set(gids)


def test_title_says_mean_and_std_only_with_several_seeds_and_the_axis_says_where_it_starts():
    one = [record(m, 16, 1, acc) for m, acc in (("tip_adapter", 73.0), ("zero_shot", 56.5))]
    ax = plot_accuracy_bars(one, None, dpi=30).axes[0]
    assert "seed 1" in ax.get_title() and "±" not in ax.get_title() and "std" not in ax.get_title()
    assert all(c.errorbar is None or not c.errorbar.lines[2] for c in ax.containers if hasattr(c, "patches"))
    bottom = ax.get_ylim()[0]
    assert bottom == 50 and "axis starts at 50" in ax.get_ylabel()
    ax = plot_accuracy_bars(RECORDS, None, dpi=30).axes[0]
    assert "mean ± std over seeds" in ax.get_title()
    low = plot_accuracy_bars([record("linear_probe", 1, 1, 17.0), *one], None, dpi=30).axes[0]
    assert low.get_ylim()[0] == 0 and "axis starts" not in low.get_ylabel()
