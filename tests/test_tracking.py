"""Live tracking: real TensorBoard event files read back, W&B offline and MLflow file stores, and
tracking changing no result and no run hash."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from hgadapter.cli import main
from hgadapter.data.io import save_cache
from hgadapter.methods import create_method
from hgadapter.records import HISTORY_FILE, METRICS_FILE
from hgadapter.runner import run_method
from hgadapter.tracking import RunTracker, TrackingConfig, TrackingError, final_metrics, parse_track, track_name_for

from conftest import make_random_cache

EPOCHS = 3
TIMINGS = {"train_seconds", "select_seconds", "fit_seconds"}  # wall times differ between any two runs


def tiny_run(out: Path, tracking: TrackingConfig | None, **kwargs) -> dict:
    method = create_method("taskres", overrides=[f"epochs={EPOCHS}", "batch_size=8"])
    return run_method(method, make_random_cache(), shots=4, seed=1, out_dir=out, progress=False, tracking=tracking, **kwargs)


def without_timings(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMINGS}


def test_tensorboard_event_file_holds_every_epoch_and_the_final_metrics(tmp_path):
    pytest.importorskip("tensorboard", reason="needs the tensorboard package: pip install 'hgadapter[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    record = tiny_run(tmp_path / "run", TrackingConfig(backends=("tensorboard",), dir=str(tmp_path / "tb")))
    history = json.loads((tmp_path / "run" / HISTORY_FILE).read_text())
    logdir = tmp_path / "tb" / track_name_for("run", tmp_path / "run")  # named after the run directory
    assert logdir.name.startswith("run-")
    events = EventAccumulator(str(logdir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/acc", "final/test_acc", "final/val_acc", "final/epochs"} <= scalars
    for tag, key in (("train/loss", "loss"), ("train/lr", "lr"), ("val/acc", "val_acc")):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [1, 2, 3]
        assert [e.value for e in logged] == pytest.approx([h[key] for h in history], rel=1e-6)  # float32 in the file
    (final,) = events.Scalars("final/test_acc")
    assert (final.step, final.value) == (EPOCHS, pytest.approx(record["test_acc"], rel=1e-6))
    assert "config/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "epochs: 3" in text and "method: taskres" in text

    # Run again into the same run: its curves are replaced, not drawn twice.
    tiny_run(tmp_path / "run", TrackingConfig(backends=("tensorboard",), dir=str(tmp_path / "tb")))
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1


def test_tracking_changes_no_result_and_off_writes_nothing(tmp_path):
    pytest.importorskip("tensorboard", reason="needs the tensorboard package: pip install 'hgadapter[tensorboard]'")
    off = tiny_run(tmp_path / "off" / "run", None)
    empty = tiny_run(tmp_path / "empty" / "run", TrackingConfig(backends=(), dir=str(tmp_path / "empty" / "tb")))
    on = tiny_run(tmp_path / "on" / "run", TrackingConfig(backends=("tensorboard",), dir=str(tmp_path / "on" / "tb")))
    assert without_timings(on) == without_timings(off) == without_timings(empty)
    for name in ("on", "empty"):
        assert (tmp_path / name / "run" / HISTORY_FILE).read_bytes() == (tmp_path / "off" / "run" / HISTORY_FILE).read_bytes()
    assert sorted(p.name for p in (tmp_path / "on").iterdir()) == ["run", "tb"]
    assert [p.name for p in (tmp_path / "off").iterdir()] == ["run"] and [p.name for p in (tmp_path / "empty").iterdir()] == ["run"]
    files = {name: sorted(p.name for p in (tmp_path / name / "run").iterdir()) for name in ("off", "empty", "on")}
    assert files["on"] == files["off"] == files["empty"]  # nothing inside the run directory either


def test_a_tracked_sweep_has_the_untracked_hashes_and_skips_their_runs(tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="needs the tensorboard package: pip install 'hgadapter[tensorboard]'")
    save_cache(tmp_path / "features" / "toy", make_random_cache(shots=2))
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "sweep:\n  name: tiny\n  dataset: toy\n  features: toy\n  methods: [taskres, zero_shot]\n  shots: [2]\n  seeds: [1]\n"
        "  method_overrides: {taskres: [epochs=2]}\n"
    )
    base = ["sweep", str(exp), "--features-root", str(tmp_path / "features"), "--quiet"]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert main([*base, "--out", str(tmp_path / "plain"), "--track", "tensorboard"]) == 0
    assert "0 runs finished, 2 already done" in capsys.readouterr().out  # same hashes: nothing re-ran
    assert not (tmp_path / "plain" / "tracking").exists()  # and nothing ran to be tracked

    assert main([*base, "--out", str(tmp_path / "tracked"), "--track", "tensorboard"]) == 0
    for run in ("tiny/taskres/2shot-seed1", "tiny/zero_shot/2shot-seed1"):
        plain = json.loads((tmp_path / "plain" / run / METRICS_FILE).read_text())
        tracked = json.loads((tmp_path / "tracked" / run / METRICS_FILE).read_text())
        assert without_timings(tracked) == without_timings(plain)
        logdir = tmp_path / "tracked" / "tracking" / track_name_for(run, tmp_path / "tracked" / run)  # OUT/tracking/<run path>-<hash>
        assert list(logdir.glob("events.out.tfevents.*"))


def test_unknown_or_missing_trackers_are_one_line_errors(tmp_path, monkeypatch, capsys):
    assert parse_track(" tensorboard, wandb,tensorboard ") == ("tensorboard", "wandb")
    assert parse_track(None) == () and not TrackingConfig().enabled
    # As sweep workers get it: a plain dict whose backends may be a list (JSON, Ray).
    config = TrackingConfig(backends=("tensorboard",), dir="d", project="p")
    assert TrackingConfig(**{**dataclasses.asdict(config), "backends": ["tensorboard"]}) == config
    with pytest.raises(TrackingError, match=r"unknown tracker 'tensorbord'; available: \['tensorboard', 'wandb', 'mlflow'\]"):
        parse_track("tensorbord")
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(TrackingError, match=r"--track wandb needs the wandb package: pip install 'hgadapter\[wandb\]'"):
        TrackingConfig(backends=("wandb",)).check()
    save_cache(tmp_path / "c", make_random_cache())
    argv = ["run", "--features", str(tmp_path / "c"), "--shots", "4", "--seed", "1", "--out", str(tmp_path / "r"), "--quiet"]
    assert main([*argv, "--track", "wandb"]) == 2
    assert "pip install 'hgadapter[wandb]'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before training


def test_final_metrics_leave_out_what_a_run_could_not_measure():
    record = {"val_acc": None, "test_acc": 61.5, "epochs": 0, "targets": {"imagenet_a": 40.0, "bad": float("nan")}, "method": "x"}
    assert final_metrics(record) == {"final/test_acc": 61.5, "final/epochs": 0.0, "final/target/imagenet_a": 40.0}


def test_wandb_offline_run_holds_the_epochs_config_and_summary(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="needs the wandb package: pip install 'hgadapter[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):  # nothing outside tmp_path
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    tiny_run(tmp_path / "run", TrackingConfig(backends=("wandb",), dir=str(tmp_path / "track")), track_name="taskres/4shot-seed1")
    (log,) = (tmp_path / "track" / "wandb").glob("offline-run-*/run-*.wandb")
    data = log.read_bytes()  # W&B's own record log: the keys are stored as plain strings
    for key in (b"train/loss", b"train/lr", b"val/acc", b"final/test_acc", b"taskres/4shot-seed1", b"batch_size"):
        assert key in data, key


def test_mlflow_file_store_run_holds_the_epochs_params_and_config(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="needs the mlflow package: pip install 'hgadapter[mlflow]'")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what the tracker sets for its own file store, undone after the test
    record = tiny_run(tmp_path / "run", TrackingConfig(backends=("mlflow",), dir=str(tmp_path / "track"), project="toy"))
    client = MlflowClient(tracking_uri=(tmp_path / "track" / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("toy")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]
    assert run.data.metrics["final/test_acc"] == pytest.approx(record["test_acc"])
    assert run.data.params["epochs"] == "3" and run.data.params["run.method"] == "taskres"
    assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_a_failing_run_closes_its_tracker_as_failed(tmp_path):
    class Recorder:  # stands for a backend: what the RunTracker calls, in order
        def __init__(self):
            self.calls = []

        def log_scalars(self, values, step):
            self.calls.append(("scalars", step, dict(values)))

        def log_summary(self, values, step):
            self.calls.append(("summary", step, dict(values)))

        def close(self, failed):
            self.calls.append(("close", failed))

    backend = Recorder()
    with pytest.raises(RuntimeError):
        with RunTracker([backend]) as tracker:
            tracker.log_epoch({"epoch": 1, "loss": 0.5, "lr": 1e-3, "val_acc": 50.0})
            raise RuntimeError("a fit that fails")
    assert backend.calls == [("scalars", 1, {"train/loss": 0.5, "train/lr": 1e-3, "val/acc": 50.0}), ("close", True)]


def test_runs_of_two_folders_never_share_tracking_files(tmp_path):
    """Issue 21 item 16: expA/run and expB/run sharing one --track-dir deleted each other's event files."""
    pytest.importorskip("tensorboard", reason="needs the tensorboard package: pip install 'hgadapter[tensorboard]'")
    tracking = TrackingConfig(backends=("tensorboard",), dir=str(tmp_path / "tb"))
    tiny_run(tmp_path / "expA" / "run", tracking)
    tiny_run(tmp_path / "expB" / "run", tracking)
    logdirs = sorted(p for p in (tmp_path / "tb").iterdir())
    assert len(logdirs) == 2 and all(p.name.startswith("run-") for p in logdirs)
    assert all(len(list(p.glob("events.out.tfevents.*"))) == 1 for p in logdirs)
    assert track_name_for("run", tmp_path / "expA" / "run") != track_name_for("run", tmp_path / "expB" / "run")
    assert track_name_for("run", tmp_path / "expA" / "run") == track_name_for("run", tmp_path / "expA" / "x" / ".." / "run")
    assert track_name_for("m/1shot-seed1", None) == "m/1shot-seed1"


@pytest.mark.parametrize("command", ["run", "sweep", "compare"])
def test_an_empty_track_dir_is_refused(command, tmp_path, capsys):
    """Issue 21 item 16: --track-dir "" wrote event files into the current directory."""
    argv = {"run": ["run", "--features", "f", "--shots", "1", "--seed", "1", "--out", str(tmp_path / "r")],
            "sweep": ["sweep", "e.yaml", "--out", str(tmp_path / "r")],
            "compare": ["compare", "--features", "f", "--out", str(tmp_path / "r")]}[command]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--track", "tensorboard", "--track-dir", ""])
    assert exit_info.value.code == 2 and "--track-dir: expected a folder path, got an empty string" in capsys.readouterr().err
    with pytest.raises(TrackingError, match="--track-dir: expected a folder path"):
        TrackingConfig(backends=("tensorboard",), dir=" ")
