"""Experiment files and sweeps: every shipped experiment resolves; tiny sweeps run, resume and
re-run exactly what changed; local processes and Ray give the same records as one process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from hgadapter.cli import main
from hgadapter.config import ConfigError, load_config, load_experiment
from hgadapter.data.cache import CacheError
from hgadapter.data.io import save_cache
from hgadapter.sweep import expand_experiment, plan_runs, run_sweep

from conftest import make_random_cache

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(
    p
    for p in (REPO / "experiments").glob("*/**/*.yaml")
    if p.parent.name not in ("methods", "configs", "_base_") and p != REPO / "experiments" / "suite" / "tasks.yaml"
)
DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")


# --------------------------------------------------------------------------------------------
# Shipped experiment files


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_experiment_file_loads_and_expands(path, tmp_path):
    specs = expand_experiment(path, out_root=tmp_path / "runs", features_root=tmp_path / "features")
    assert specs, path
    sweep = load_experiment(path).sweep
    assert {s.dataset for s in specs} == {sweep.dataset}
    assert len({s.out_dir for s in specs}) == len(specs)
    for spec in specs:
        assert Path(spec.out_dir).is_relative_to(tmp_path / "runs" / sweep.name)
        assert Path(spec.features).is_relative_to(tmp_path / "features")


@pytest.mark.parametrize("path", sorted((REPO / "experiments" / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_run_configs_load(path):
    assert load_config(config_file=path).train.epochs >= 1


def test_fewshot_files_cover_the_eleven_datasets_with_the_paper_schedule():
    files = {p.stem: p for p in (REPO / "experiments" / "fewshot").glob("*.yaml")}
    assert set(files) == set(DATASETS)
    for name, path in files.items():
        sweep = load_experiment(path).sweep
        assert (sweep.dataset, sweep.shots, sweep.seeds, sweep.backbone) == (name, (1, 2, 4, 8, 16), (1, 2, 3), "RN50")
        train = load_config(config_file=path).train
        epochs = 100 if name in ("eurosat", "dtd", "fgvc_aircraft") else 30
        lr = 1e-2 if name == "fgvc_aircraft" else 1e-3
        assert (train.epochs, train.lr, train.warmup_lr, train.cache_loss_weight) == (epochs, lr, 1e-5, 0.1), name


def test_ablation_dg_sensitivity_and_backbone_grids():
    ablation = expand_experiment(REPO / "experiments" / "ablation" / "eurosat.yaml", out_root="r", features_root="f")
    assert sorted({s.method for s in ablation}) == ["hegraphadapter", "hegraphadapter:base", "hegraphadapter:t", "hegraphadapter:t_n", "hegraphadapter:t_p"]
    assert {s.shots for s in ablation} == {16}
    dg = expand_experiment(REPO / "experiments" / "dg" / "vit_b16.yaml", out_root="r", features_root="f")
    assert set(dg[0].targets) == {"imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"}
    assert dg[0].targets["imagenet_a"] == str(Path("f", "imagenet_a-ViT-B-16")) and dg[0].features == str(Path("f", "imagenet-ViT-B-16"))
    sens = expand_experiment(REPO / "experiments" / "sensitivity" / "imagenet.yaml", out_root="r", features_root="f")
    keys = {k for s in sens for k in s.params}
    assert keys == {"stages.1.metapaths.0.beta", "stages.1.metapaths.1.beta", "stages.1.metapaths.2.beta", "stages.1.metapaths.0.beta_test", "train.learn_betas"}
    assert len(sens) == 41 * 3 and all(len(s.params) == 1 for s in sens)
    backbones = {load_experiment(p).sweep.backbone for p in (REPO / "experiments" / "backbones").glob("*.yaml")}
    assert backbones == {"RN50", "RN101", "ViT-B/32", "ViT-B/16"}


def test_grid_points_reach_the_resolved_config():
    sens = expand_experiment(REPO / "experiments" / "sensitivity" / "imagenet.yaml", out_root="r", features_root="f")
    spec = next(s for s in sens if s.params == {"stages.1.metapaths.0.beta_test": 0.4})
    cfg = load_config("t", config_file=spec.config_file, overrides=spec.overrides)
    n2p = cfg.variant.stages[1].metapaths[0]
    assert n2p.relations == ("n2p",) and n2p.beta_test == 0.4 and n2p.beta == 0.2


# --------------------------------------------------------------------------------------------
# _base_ inheritance


def test_base_files_merge_in_order_and_errors_name_the_file_that_set_a_key(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {epochs: 7, lr: 0.5}\neval: {alpha: 1.0}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("_base_: ../a.yaml\ntrain: {epochs: 9}\n")
    (tmp_path / "c.yaml").write_text("_base_: sub/b.yaml\ntrain: {lr: 0.25}\n")
    cfg = load_config(config_file=tmp_path / "c.yaml")
    assert (cfg.train.epochs, cfg.train.lr, cfg.eval.alpha) == (9, 0.25, 1.0)
    assert load_config(config_file=tmp_path / "c.yaml", overrides=["train.epochs=3"]).train.epochs == 3
    (tmp_path / "a.yaml").write_text("train: {epochs: -1}\n")
    (tmp_path / "sub" / "b.yaml").write_text("_base_: ../a.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: train\.epochs: must be >= 1"):
        load_config(config_file=tmp_path / "c.yaml")


@pytest.mark.parametrize(
    "files, message",
    [
        ({"x.yaml": "_base_: x.yaml\n"}, r"_base_ files form a cycle"),
        ({"x.yaml": "_base_: missing.yaml\n"}, r"x\.yaml: _base_: missing\.yaml does not exist"),
        ({"x.yaml": "_base_: {a: 1}\n"}, r"_base_: expected a file path or a list of file paths"),
    ],
)
def test_bad_base_files(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(config_file=tmp_path / "x.yaml")


@pytest.mark.parametrize(
    "sweep, message",
    [
        ("{features: x}", r"sweep\.dataset: missing"),
        ("{dataset: d, features: x, methodz: [a]}", r"sweep\.methodz: unknown key"),
        ("{dataset: d, features: x, methods: [nope]}", r"unknown method 'nope'; available: \["),
        ("{dataset: d, features: x, shots: [0]}", r"sweep\.shots\.0: must be >= 1"),
        ("{dataset: d, features: x, grid: {train.lr: 0.1}}", r"sweep\.grid\.0\.train\.lr: expected a non-empty list"),
        ("{dataset: d, features: x, methods: [tip_adapter], grid: {train.lr: [0.1]}}", r"grid \{.train.lr.: 0.1\}: method .tip_adapter.: .*train.*grid keys apply to every method"),
        ("{dataset: d, features: x, grid: {train.lrr: [0.1]}}", r"train\.lrr: unknown key"),
        ("{dataset: d, features: '{datset}'}", r"unknown placeholder \{datset\}"),
        ("{dataset: d, features: x, name: ../../x}", r"sweep\.name: must be a relative folder name under --out"),
        ("{dataset: d, features: x, name: /tmp/x}", r"sweep\.name: must be a relative folder name under --out"),
    ],
)
def test_bad_sweep_sections(tmp_path, sweep, message):
    path = tmp_path / "exp.yaml"
    path.write_text(f"sweep: {sweep}\n")
    with pytest.raises(ConfigError, match=message):
        expand_experiment(path, out_root=tmp_path / "runs", features_root=tmp_path)


# --------------------------------------------------------------------------------------------
# Tiny sweeps on real caches


@pytest.fixture
def tiny(tmp_path):
    """A saved random cache with two seeds, a DG target sharing its classes, and an experiment file."""
    cache = make_random_cache(num_classes=6, dim=16, shots=2)
    second = make_random_cache(num_classes=6, dim=16, shots=2, seed=0)
    train_sets = {(2, 1): cache.train_sets[(2, 1)]}
    other = second.train_sets[(2, 1)]
    train_sets[(2, 2)] = type(other)(shots=2, seed=2, features=other.features.flip(0), labels=other.labels.flip(0))
    cache = type(cache)(**{**cache.__dict__, "train_sets": train_sets})
    save_cache(tmp_path / "features" / "toy-RN50", cache)
    target = make_random_cache(num_classes=6, dim=16, shots=2, seed=5)
    target = type(target)(**{**target.__dict__, "train_sets": {}, "meta": {**target.meta, "class_subset": [0, 2, 4]}})
    save_cache(tmp_path / "features" / "toy_a-RN50", target)
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "train: {epochs: 2}\n"
        "sweep:\n"
        "  name: tiny\n"
        "  dataset: toy\n"
        "  backbone: RN50\n"
        "  features: '{dataset}-{backbone}'\n"
        "  methods: [hegraphadapter, hegraphadapter:t, tip_adapter]\n"
        "  shots: [2]\n"
        "  seeds: [1, 2]\n"
        "  targets: {toy_a: '{dataset}-{backbone}'}\n"
    )
    return tmp_path, exp


def _metrics(out: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(out)): json.loads(p.read_text()) for p in sorted(out.rglob("metrics.json"))}


def test_sweep_runs_interrupts_and_resumes_without_rerunning(tiny):
    root, exp = tiny
    out = root / "runs"
    calls = []

    def interrupt_after_two(line: str) -> None:
        calls.append(line)
        if "test" in line and sum("test" in c for c in calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C between runs

    first = run_sweep([exp], out_root=out, features_root=root / "features", progress=False, log=interrupt_after_two)
    assert first.interrupted and len(first.finished) == 2
    done_before = _metrics(out)
    assert len(done_before) == 2
    stamps = {k: (out / k / "metrics.json").stat().st_mtime_ns for k in done_before}
    # A run killed mid-way leaves files but no metrics.json: it is not finished.
    pending, _ = plan_runs(expand_experiment(exp, out_root=out, features_root=root / "features"))
    partial = Path(pending[0].out_dir)
    partial.mkdir(parents=True)
    (partial / "config.yaml").write_text("half written")

    second = run_sweep([exp], out_root=out, features_root=root / "features", progress=False, log=None)
    assert not second.interrupted and not second.failed
    assert len(second.skipped) == 2 and len(second.finished) == 4
    after = _metrics(out)
    assert len(after) == 6
    for key in done_before:
        assert (out / key / "metrics.json").stat().st_mtime_ns == stamps[key]  # not re-run
        assert after[key] == done_before[key]
    record = after["tiny/hegraphadapter-t/2shot-seed1"]
    assert (record["method"], record["variant"], record["dataset"], record["backbone"], record["experiment"]) == ("hegraphadapter:t", "t", "toy", "RN50", "tiny")
    assert set(record["targets"]) == {"toy_a"} and 0.0 <= record["targets"]["toy_a"] <= 100.0
    assert (out / "tiny/hegraphadapter/2shot-seed2/nodes.safetensors").is_file()
    assert run_sweep([exp], out_root=out, features_root=root / "features", progress=False, log=None).finished == []


def test_a_changed_config_reruns_only_the_runs_it_touches(tiny):
    root, exp = tiny
    out = root / "runs"
    run_sweep([exp], out_root=out, features_root=root / "features", progress=False, log=None)
    exp.write_text(exp.read_text().replace("epochs: 2", "epochs: 3"))
    again = run_sweep([exp], out_root=out, features_root=root / "features", progress=False, log=None)
    assert sorted(r["method"] for r in again.finished) == ["hegraphadapter", "hegraphadapter", "hegraphadapter:t", "hegraphadapter:t"]
    assert all(r["epochs"] == 3 for r in again.finished)
    assert {s.method for s in again.skipped} == {"tip_adapter"}


def test_target_accuracy_is_restricted_to_the_class_subset(tiny):
    root, exp = tiny
    result = run_sweep([exp], out_root=root / "runs", features_root=root / "features", progress=False, log=None)
    from hgadapter.data.io import load_cache

    target = load_cache(root / "features" / "toy_a-RN50", train_keys=[])
    in_subset = torch.isin(target.test_labels, torch.tensor([0, 2, 4]))
    share = 100.0 * in_subset.float().mean().item()
    for record in result.finished:
        # labels outside the subset can never be predicted: accuracy is at most their share
        assert record["targets"]["toy_a"] <= share + 1e-6


def test_missing_cache_fails_before_any_run(tiny):
    root, exp = tiny
    with pytest.raises(CacheError, match=r"hgadapter extract --out .*nowhere"):
        run_sweep([exp], out_root=root / "runs", features_root=root / "nowhere", progress=False, log=None)
    assert not (root / "runs").exists()


def test_parallel_processes_and_ray_match_one_process(tiny):
    root, exp = tiny
    serial = run_sweep([exp], out_root=root / "serial", features_root=root / "features", progress=False, log=None)
    pool = run_sweep([exp], out_root=root / "pool", features_root=root / "features", jobs=2, progress=False, log=None)
    assert not serial.failed and not pool.failed

    def key(records):
        return sorted((r["method"], r["seed"], r["val_acc"], r["test_acc"], r["targets"]["toy_a"], r["config_hash"]) for r in records)

    assert key(pool.finished) == key(serial.finished)
    pytest.importorskip("ray")
    ray_run = run_sweep([exp], out_root=root / "ray", features_root=root / "features", jobs=2, backend="ray", progress=False, log=None)
    assert not ray_run.failed and key(ray_run.finished) == key(serial.finished)


def test_cli_sweep_dry_run_and_run(tiny, capsys):
    root, exp = tiny
    args = ["sweep", str(exp), "--out", str(root / "runs"), "--features-root", str(root / "features"), "--quiet"]
    assert main([*args, "--dry-run"]) == 0
    assert "6 runs: 0 finished, 6 to run" in capsys.readouterr().out
    assert main(args) == 0
    assert "6 runs finished, 0 already done, 0 failed" in capsys.readouterr().out
    assert main([*args, "--dry-run"]) == 0
    assert "6 runs: 6 finished, 0 to run" in capsys.readouterr().out
    assert main(["sweep", str(root / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_dry_run_without_caches_still_lists_the_plan(tmp_path, capsys):  # 17 methods x 5 shots x 3 seeds
    path = REPO / "experiments" / "synthetic" / "fewshot.yaml"
    assert main(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "runs"), "--features-root", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert out.count("planned  ") == 255 and "cannot tell which are finished" in out and "hgadapter extract --out" in out


def test_cli_report_figures_and_tsne_on_a_swept_run(tiny, capsys):
    from PIL import Image

    root, exp = tiny
    runs = root / "runs"
    assert main(["sweep", str(exp), "--out", str(runs), "--features-root", str(root / "features"), "--quiet"]) == 0
    assert main(["report", str(runs)]) == 0
    table = (runs / "report" / "report.md").read_text()
    assert "HeGraphAdapter(T)" in table and "toy_a" in table
    assert main(["figures", str(runs), "--out", str(root / "figs")]) == 0
    assert (root / "figs" / "training_curves.pdf").read_bytes().startswith(b"%PDF")
    run = runs / "tiny" / "hegraphadapter" / "2shot-seed1"
    assert main(["tsne", "--run", str(run), "--out", str(root / "figs" / "tsne.png")]) == 0
    assert Image.open(root / "figs" / "tsne.png").size[0] > 0 and (root / "figs" / "tsne.pdf").is_file()
    (root / "plain.txt").write_text("x")  # atomic writes get the permissions open() gives, not mkstemp's 0600
    assert (runs / "report" / "report.md").stat().st_mode & 0o777 == (root / "plain.txt").stat().st_mode & 0o777
    capsys.readouterr()
    assert main(["report", str(root / "nothing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_a_failing_run_is_reported_and_the_others_go_on(tiny, capsys):
    root, exp = tiny
    other = make_random_cache(num_classes=6, dim=16, shots=2, seed=7)
    other = type(other)(**{**other.__dict__, "classnames": [f"other{i}" for i in range(6)], "train_sets": {}})
    save_cache(root / "features" / "bad-RN50", other)
    exp.write_text(exp.read_text().replace("toy_a: '{dataset}-{backbone}'", "bad: '{dataset}-{backbone}'"))
    code = main(["sweep", str(exp), "--out", str(root / "runs"), "--features-root", str(root / "features"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1
    assert "0 runs finished, 0 already done, 6 failed" in captured.out
    assert "class names differ" in captured.err
    assert not list((root / "runs").rglob("metrics.json"))  # nothing half-done counts as finished


def test_a_cache_of_another_backbone_is_refused(tiny):
    root, exp = tiny
    cache = make_random_cache(num_classes=6, dim=16, shots=2)
    cache = type(cache)(**{**cache.__dict__, "meta": {**cache.meta, "encoder": {"id": "openai/clip-vit-base-patch16"}}})
    exp.write_text(exp.read_text().replace("dataset: toy", "dataset: vit").replace("  targets: {toy_a: '{dataset}-{backbone}'}\n", "").replace("seeds: [1, 2]", "seeds: [1]"))
    save_cache(root / "features" / "vit-RN50", cache)
    with pytest.raises(CacheError, match=r"extracted with openai/clip-vit-base-patch16 \(ViT-B/16\), but the experiment says backbone RN50"):
        run_sweep([exp], out_root=root / "runs", features_root=root / "features", progress=False, log=None)
    exp.write_text(exp.read_text().replace("backbone: RN50", "backbone: null"))
    save_cache(root / "features" / "vit-none", cache)
    record = run_sweep([exp], out_root=root / "runs", features_root=root / "features", progress=False, log=None).finished[0]
    assert record["backbone"] == "ViT-B/16"  # named from the cache's encoder when the experiment does not say


@pytest.mark.parametrize(
    "encoder_id, backbone",
    [
        ("openai/clip-vit-base-patch16", "ViT-B/16"),
        ("openai/clip-vit-base-patch32", "ViT-B/32"),
        ("openai/clip-vit-large-patch14-336", "ViT-L/14@336px"),
        ("open_clip:RN50/openai", "RN50"),
        ("open_clip:RN101/openai", "RN101"),
        ("open_clip:ViT-B-16/laion2b_s34b_b88k", "ViT-B/16"),
        ("synthetic-clip", None),
        ("/models/my-clip", None),
    ],
)
def test_backbone_names_from_encoder_ids(encoder_id, backbone):
    from hgadapter.records import backbone_of_encoder

    assert backbone_of_encoder(encoder_id) == backbone


def test_a_variant_file_can_start_from_a_shipped_one(tmp_path):
    from hgadapter.config import load_variant, metapaths_dir

    path = tmp_path / "sparse8.yaml"
    path.write_text(f"_base_: {metapaths_dir() / 'full.yaml'}\nname: sparse8\ngraph: {{topk: 8}}\n")
    variant, full = load_variant(path), load_variant("full")
    assert variant.name == "sparse8" and variant.graph.topk == 8
    assert variant.stages == full.stages and variant.graph.relations == full.graph.relations


@pytest.mark.parametrize(
    "device, gpus, expected",
    [("cuda", 4, ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0"]), ("auto", 2, ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]),
     ("cuda", 1, ["cuda"] * 5), ("cuda:3", 4, ["cuda:3"] * 5), ("cpu", 4, ["cpu"] * 5), (None, 4, [None] * 5)],
)
def test_runs_are_dealt_over_gpus(device, gpus, expected):
    from hgadapter.sweep import spread_device

    assert [spread_device(device, i, gpus) for i in range(5)] == expected


def test_a_rewritten_target_cache_is_read_again_in_the_same_process(tiny):
    root, exp = tiny
    first = run_sweep([exp], out_root=root / "runs", features_root=root / "features", progress=False, log=None)
    # another target written in place (its sidecar differs, as a re-extraction's would): every run
    # re-runs and scores the new images, not a copy the process kept from the first sweep
    from hgadapter.data.io import load_cache

    target = load_cache(root / "features" / "toy_a-RN50", train_keys=[])
    meta = {**target.meta, "split_source": "relabelled"}
    relabelled = type(target)(**{**target.__dict__, "test_labels": torch.zeros_like(target.test_labels) + 2, "meta": meta})
    save_cache(root / "features" / "toy_a-RN50", relabelled, overwrite=True)
    second = run_sweep([exp], out_root=root / "runs", features_root=root / "features", progress=False, log=None)
    assert len(second.finished) == 6 and not second.skipped
    assert [r["targets"]["toy_a"] for r in second.finished] != [r["targets"]["toy_a"] for r in first.finished]


def test_a_grid_sweeps_any_methods_own_config_keys(tmp_path):
    """Grid keys are overrides of each method's config: a baseline's own keys can be swept too."""
    path = tmp_path / "exp.yaml"
    path.write_text("sweep: {dataset: d, features: x, methods: [taskres], shots: [1], seeds: [1], grid: {alpha: [0.25, 0.5]}}\n")
    specs = expand_experiment(path, out_root=tmp_path / "runs", features_root=tmp_path)
    assert sorted(s.params["alpha"] for s in specs) == [0.25, 0.5]
    assert all(s.config_file is None for s in specs)  # a baseline reads its own shipped config, not the experiment file


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (Linux /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_sweep_workers_die_with_their_parent(tmp_path, sig):
    """Killing `sweep --jobs 2` (SIGKILL or SIGTERM) leaves no worker writing runs (issue 14 item 11)."""
    import os
    import signal
    import subprocess
    import time

    from hgadapter.data.io import save_cache
    from hgadapter.data.synthetic import build_synthetic_task

    save_cache(tmp_path / "features" / "toy", build_synthetic_task(num_classes=12, num_families=3, dim=32, shots=(2,), seeds=(1, 2, 3, 4)))
    (tmp_path / "exp.yaml").write_text(
        "train: {epochs: 3000}\nsweep: {name: kill, dataset: toy, features: toy, methods: [hegraphadapter:t], shots: [2], seeds: [1, 2, 3, 4]}\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-m", "hgadapter", "sweep", str(tmp_path / "exp.yaml"), "--features-root", str(tmp_path / "features"),
         "--out", str(tmp_path / "runs"), "--jobs", "2", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        workers: set[int] = set()
        while time.time() < deadline and len(workers) < 2:  # the pool's workers (plus its resource tracker)
            workers = _children(parent.pid)
            time.sleep(0.2)
        assert workers, "the sweep started no worker"
        time.sleep(1.0)  # the workers are importing / training now
        parent.send_signal(getattr(signal, sig))
        parent.wait(timeout=30)
        deadline = time.time() + 15
        alive = set(workers)
        while alive and time.time() < deadline:
            alive = {p for p in alive if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]}
            time.sleep(0.2)
        assert not alive, f"workers {sorted(alive)} outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in _children(parent.pid) | locals().get("workers", set()):  # never leave an orphan behind a failure
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
