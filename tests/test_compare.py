"""`hgadapter compare`: records, tables, charts, resuming, and a test split nobody reads early."""

from __future__ import annotations

import argparse
import csv
import io
import json
import functools

import pytest

from hgadapter.methods import list_methods, method_class
from hgadapter.compare import RECORD_KEYS, add_compare_arguments, compare, format_table, run_compare
from hgadapter.config import ConfigError
from hgadapter.data.cache import CacheError
from hgadapter.data.io import save_cache
from hgadapter.data.synthetic import build_synthetic_task
from hgadapter.records import CONFIG_FILE, METRICS_FILE, load_records

QUICK: dict[str, list[str]] = {
    "linear_probe": ["search_steps=1"],
    "tip_adapter": ["search_step=[10, 5]"],
    "tip_adapter_f": ["epochs=2", "search_step=[10, 5]"],
    "taskres": ["epochs=3"],
    "clip_adapter": ["epochs=3"],
    "graphadapter": ["epochs=3"],
}


def quick(methods):
    return {m: QUICK.get(m, ["train.epochs=1"] if m.startswith("hegraphadapter") else []) for m in methods}


@functools.lru_cache(maxsize=1)
def small_task():
    return build_synthetic_task(
        num_classes=12, dim=32, num_families=4, semantic_rank=16, family_rank=4, shots=(1, 2), seeds=(1, 2), test_per_class=4
    )


class GuardedCache:
    """A FeatureCache stand-in whose test split raises on any access while ``closed``."""

    def __init__(self, cache):
        self._cache = cache
        self.closed = True
        self.test_reads = 0

    def __getattr__(self, name):
        if name.startswith("test_"):
            if self.closed:
                raise AssertionError(f"the test split ({name}) was read during fitting or selection")
            self.test_reads += 1
        return getattr(self._cache, name)


def test_the_guard_trips():
    guarded = GuardedCache(small_task())
    with pytest.raises(AssertionError, match="test split"):
        guarded.test_features  # noqa: B018


def test_selection_never_reads_the_test_split(tmp_path, monkeypatch):
    """Every method fits and selects with the test split locked; only score_on_test opens it, once per run.

    compare goes through hgadapter.runner.run_method, the path `hgadapter run` and sweeps take too."""
    import hgadapter.runner as runner_module

    guarded = GuardedCache(small_task())
    real_score = runner_module.score_on_test
    scored = []

    def score_with_guard_open(fitted, cache, **kwargs):
        assert cache is guarded
        guarded.closed = False
        try:
            return real_score(fitted, cache, **kwargs)
        finally:
            guarded.closed = True
            scored.append(1)

    monkeypatch.setattr(runner_module, "score_on_test", score_with_guard_open)
    methods = list_methods()
    lines = []
    records = compare(guarded, methods, [2], [1], tmp_path, progress=False, device="cpu", overrides=quick(methods), log=lines.append)
    ran = [m for m in methods if not method_class(m).needs_encoder]  # CoOp needs a CLIP encoder: skipped here
    assert [r["method"] for r in records] == ran
    assert len(scored) == len(ran)
    assert guarded.test_reads == 2 * len(ran)  # test_features and test_labels, once per run
    assert [line.split()[0] for line in lines if "skipped:" in line] == [m for m in methods if m not in ran]


def on_disk(out_dir):
    """The records of the run directories below ``out_dir``, without the ``run_dir`` load_records adds."""
    return [{k: v for k, v in r.items() if k != "run_dir"} for r in load_records(out_dir)]


def test_results_records_are_complete(tmp_path):
    methods = ["zero_shot", "tip_adapter", "taskres"]
    records = compare(small_task(), methods, [1, 2], [1, 2], tmp_path, progress=False, device="cpu", overrides=quick(methods), log=None)
    key = lambda r: (r["method"], r["shots"], r["seed"])  # noqa: E731
    assert sorted(on_disk(tmp_path), key=key) == sorted(records, key=key)  # every record is a sweep-style run directory
    for m in methods:
        for k in (1, 2):
            for s in (1, 2):
                run = tmp_path / m / f"{k}shot-seed{s}"
                assert (run / METRICS_FILE).is_file() and (run / CONFIG_FILE).is_file()
    assert [(r["method"], r["shots"], r["seed"]) for r in records] == [(m, k, s) for m in methods for k in (1, 2) for s in (1, 2)]
    for r in records:
        assert set(RECORD_KEYS) <= set(r)
        assert 0.0 <= r["val_acc"] <= 100.0 and 0.0 <= r["test_acc"] <= 100.0
        assert r["dataset"] == "synthetic" and r["synthetic"] is True
        assert r["train_seconds"] >= 0.0 and isinstance(r["epochs"], int)
        assert isinstance(r["hparams"], dict) and r["experiment"] == "compare" and r["params"] == {}
    assert {r["epochs"] for r in records if r["method"] == "taskres"} == {3}
    assert {"alpha", "beta"} <= set(records[4]["hparams"]) <= {"alpha", "beta", "grid_extended"}  # tip_adapter's chosen pair (and any grid extension)
    table = (tmp_path / "results.md").read_text()
    assert "synthetic task" in table and "| Tip-Adapter |" in table and "| Method | 1-shot | 2-shot |" in table
    assert "| Method | val acc (%) | test acc (%) | train s / run |" in table
    tex = (tmp_path / "results.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and "Tip-Adapter" in tex and "ynthetic" in tex
    for suffix in ("png", "pdf"):
        assert (tmp_path / f"results.{suffix}").stat().st_size > 1000


def test_resume_skips_finished_records_and_reruns_changed_configs(tmp_path, monkeypatch):
    methods = ["zero_shot", "taskres"]
    first = compare(small_task(), methods, [2], [1, 2], tmp_path, progress=False, device="cpu", overrides=quick(methods), log=None)

    fits = []
    import hgadapter.methods._registry as registry

    for name in methods:
        cls = registry._REGISTRY[name][0]
        real_fit = cls.fit

        def counting_fit(self, data, *, _real=real_fit, **kwargs):
            fits.append((self.name, data.train_set.seed))
            return _real(self, data, **kwargs)

        monkeypatch.setattr(cls, "fit", counting_fit)

    again = compare(small_task(), methods, [2], [1, 2], tmp_path, progress=False, device="cpu", overrides=quick(methods), log=None)
    assert fits == [] and again == first

    changed = compare(small_task(), methods, [2], [1, 2], tmp_path, progress=False, device="cpu", overrides={"taskres": ["epochs=2"]}, log=None)
    assert fits == [("taskres", 1), ("taskres", 2)]
    assert [r["epochs"] for r in changed if r["method"] == "taskres"] == [2, 2]
    assert len(load_records(tmp_path)) == 4  # replaced, not appended
    assert on_disk(tmp_path) == sorted(changed, key=lambda r: (r["method"], r["shots"], r["seed"]))


def test_a_sweep_and_a_comparison_share_one_finished_run_test(tmp_path):
    """compare names, hashes and skips its runs with the sweep's functions: a run whose hash
    differs (here: another cache) is not finished, whatever its directory holds."""
    from hgadapter.sweep import is_finished

    first = compare(small_task(), ["zero_shot"], [1], [1], tmp_path, progress=False, device="cpu", log=None)[0]
    run = tmp_path / "zero_shot" / "1shot-seed1"
    assert is_finished(run, first["config_hash"]) and not is_finished(run, "0" * 16)
    other = build_synthetic_task(
        num_classes=12, dim=32, num_families=4, semantic_rank=16, family_rank=4, shots=(1,), seeds=(1,), test_per_class=4, seed=7
    )
    again = compare(other, ["zero_shot"], [1], [1], tmp_path, progress=False, device="cpu", log=None)[0]
    assert again["config_hash"] != first["config_hash"] and load_records(tmp_path)[0]["config_hash"] == again["config_hash"]


def test_errors_come_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'tip'; available"):
        compare(small_task(), ["zero_shot", "tip"], [1], [1], tmp_path, log=None)
    with pytest.raises(ConfigError, match=r"--set epochz"):
        compare(small_task(), ["taskres"], [1], [1], tmp_path, overrides={"taskres": ["epochz=1"]}, log=None)
    with pytest.raises(CacheError, match=r"shots=16, seed=1"):
        compare(small_task(), ["zero_shot"], [16], [1], tmp_path, log=None)
    assert list(tmp_path.iterdir()) == []  # no run directory, no table


def test_format_table_mean_and_sample_std():
    records = [
        {"method": "a", "shots": 4, "seed": s, "val_acc": v, "test_acc": t, "train_seconds": 1.0}
        for s, v, t in [(1, 60.0, 70.0), (2, 62.0, 72.0), (3, 64.0, 74.0)]
    ] + [{"method": "b", "shots": 4, "seed": s, "val_acc": 50.0, "test_acc": 50.0 + s, "train_seconds": 2.0} for s in (1, 2)]
    table = format_table(records, title="T")  # hgadapter.report's tables
    assert table.startswith("# T\n")
    assert "| a | 72.00 ± 2.00 |" in table  # sample std (n - 1) of 70, 72, 74
    assert "| b | 51.50 ± 0.71 (n=2) |" in table
    assert "| a | 62.00 ± 2.00 | 72.00 ± 2.00 | 1.00 |" in table  # val, test, seconds per run


def test_cli_compare_on_a_saved_cache(tmp_path, capsys):
    cache_dir = save_cache(tmp_path / "cache", small_task())
    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(
        ["--features", str(cache_dir), "--methods", "zero_shot", "tip_adapter", "taskres", "--seeds", "1", "2",
         "--out", str(out), "--device", "cpu", "--quiet", "--set", "taskres.epochs=2", "--set", "tip_adapter.search_step=[10, 5]"]
    )
    assert run_compare(args) == 0
    records = load_records(out)
    assert sorted({r["shots"] for r in records}) == [1, 2]  # every K the cache holds for seeds 1 and 2
    assert {r["epochs"] for r in records if r["method"] == "taskres"} == {2}
    printed = capsys.readouterr().out
    assert "SYNTHETIC" in printed and "| Zero-shot CLIP |" in printed and "results.png" in printed
    # the machine-readable summary beside results.md: one row per table cell, one entry per run
    summary = json.loads((out / "results.json").read_text())
    assert len(summary["run_records"]) == len(records) == 12 and summary["runs"] == 12
    cell = next(r for r in summary["rows"] if r["method"] == "tip_adapter" and r["table"] == "shots" and r["shots"] == 2)
    runs = [r["test_acc"] for r in summary["run_records"] if r["method"] == "tip_adapter" and r["shots"] == 2]
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(sum(runs) / 2)
    lines = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert {"method", "shots", "mean", "std", "n"} <= set(lines[0]) and len(lines) == len(summary["rows"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "tasres.epochs=2"], r"expected METHOD.KEY=VALUE with METHOD one of the compared methods"),
        (["--config", "taskres"], r"expected METHOD=PATH"),
        (["--methods", "taskres", "--seeds", "1", "--set", "tasres.epochs=2"], r"--set tasres.epochs: method 'taskres' has a flat config; valid keys"),  # one method: KEY=VALUE is its key
        (["--methods", "taskres", "--seeds", "1", "--config", "nowhere.yaml"], r"config file nowhere.yaml does not exist"),  # one method: FILE is its
    ],
)
def test_cli_argument_errors(tmp_path, argv, message):
    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    cache_dir = save_cache(tmp_path / "cache", small_task())
    args = parser.parse_args(["--features", str(cache_dir), "--methods", "taskres", "zero_shot", "--out", str(tmp_path / "o"), *argv])
    with pytest.raises(ConfigError, match=message):
        run_compare(args)


def test_trained_methods_report_their_parameter_count(tmp_path):
    from hgadapter.data.io import save_cache
    from hgadapter.sweep import run_sweep

    cache = small_task()
    save_cache(tmp_path / "features" / "toy", cache)
    (tmp_path / "exp.yaml").write_text(
        "train: {epochs: 1}\nsweep: {name: p, dataset: toy, features: toy, methods: [taskres, clip_adapter, hegraphadapter, zero_shot], "
        f"shots: [2], seeds: [1], method_overrides: {{taskres: {{epochs: 1}}, clip_adapter: {{epochs: 1}}}}}}\n"
    )
    records = {r["method"]: r for r in run_sweep([tmp_path / "exp.yaml"], out_root=tmp_path / "runs", features_root=tmp_path / "features", progress=False, log=None).finished}
    C, d = cache.num_classes, cache.dim
    assert records["taskres"]["trainable_params"] == C * d  # one residual per class
    # one d x d projection per stage and a C x d class-wise term per meta-path (6 in full)
    assert records["hegraphadapter"]["trainable_params"] == 3 * d * d + 6 * C * d
    assert records["clip_adapter"]["trainable_params"] > 0
    assert "trainable_params" not in records["zero_shot"]  # nothing trained
