"""Run folders (issue 21 items 11-13, 15): one run per folder, one writer at a time, the output
folder checked before any work, and an empty test split reported as n/a. The lock is shown with
two real processes sweeping into one ``--out``."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from hgadapter._lock import LOCK_NAME, FolderBusy, folder_lock
from hgadapter.cli import build_parser, main
from hgadapter.data.io import save_cache
from hgadapter.data.synthetic import build_synthetic_task
from hgadapter.methods import create_method
from hgadapter.records import ADAPTER_FILE, METRICS_FILE, load_record
from hgadapter.rundir import RunBusyError, RunFolderError
from hgadapter.runner import run_method

from conftest import make_random_cache

REPO = Path(__file__).resolve().parents[1]
UNWRITABLE = "/proc/hgadapter-no-such-folder"  # even root cannot create a folder in /proc


def _tiny(**overrides):
    return build_synthetic_task(**{"num_classes": 4, "num_families": 2, "dim": 8, "shots": (1,), "seeds": (1, 2, 3), "test_per_class": 2, **overrides})


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("runfolders") / "cache"
    save_cache(path, _tiny())
    return path


# --------------------------------------------------------------------------------------------
# Item 11: an empty test split


def test_an_empty_test_split_prints_n_a_and_exits_0(tmp_path, capsys):
    cache = _tiny()
    empty = dataclasses.replace(cache, test_features=cache.test_features[:0], test_labels=cache.test_labels[:0])
    save_cache(tmp_path / "c", empty)
    argv = ["run", "--features", str(tmp_path / "c"), "--variant", "base", "--shots", "1", "--seed", "1",
            "--set", "train.epochs=1", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 0
    assert "test n/a%" in capsys.readouterr().out
    record = load_record(tmp_path / "run")
    assert record["test_acc"] is None and any("test split is empty" in n for n in record["notes"])


# --------------------------------------------------------------------------------------------
# Item 12: every --out is checked before any work


def _commands_with_out() -> set[str]:
    from hgadapter._cli import fill_all

    parser = build_parser()
    fill_all(parser)  # subcommands add their arguments lazily
    sub = parser._subparsers._group_actions[0]  # test-only look into argparse
    return {name for name, parser in sub.choices.items() if "--out" in parser._option_string_actions}


OUT_COMMANDS = {
    "run": lambda c, out: ["run", "--features", str(c), "--shots", "1", "--seed", "1", "--out", out],
    "synth": lambda c, out: ["synth", "--out", out],
    "sweep": lambda c, out: ["sweep", str(REPO / "experiments" / "synthetic" / "fewshot.yaml"), "--out", out],
    "compare": lambda c, out: ["compare", "--features", str(c), "--methods", "zero_shot", "--seeds", "1", "--out", out],
    "demo": lambda c, out: ["demo", "--out", out],
    "report": lambda c, out: ["report", str(c), "--out", out],
    "figures": lambda c, out: ["figures", str(c), "--out", out],
    "tsne": lambda c, out: ["tsne", "--run", str(c), "--out", f"{out}/tsne.png"],
    "extract": lambda c, out: ["extract", "--dataset", "coop:dtd", "--data-dir", str(c), "--out", out],
    "export": lambda c, out: ["export", str(c), "--out", out],
    "predict": lambda c, out: ["predict", "--classifier", str(c), "--out", f"{out}/p.csv", str(c)],
}


def test_every_command_with_an_out_is_covered():
    assert _commands_with_out() == set(OUT_COMMANDS)


@pytest.mark.parametrize("command", sorted(OUT_COMMANDS))
def test_an_unwritable_out_is_refused_before_any_work(command, cache_dir, monkeypatch, capsys):
    import hgadapter.runner

    def no_work(*args, **kwargs):
        raise AssertionError("training started before the output folder was checked")

    monkeypatch.setattr(hgadapter.runner, "_run_method", no_work)
    assert main(OUT_COMMANDS[command](cache_dir, UNWRITABLE)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"hgadapter {command}: error: ") and UNWRITABLE in err, err


def test_a_missing_parent_is_created_only_where_documented(cache_dir, tmp_path, capsys):
    run = tmp_path / "new" / "parents" / "run"
    assert main(["run", "--features", str(cache_dir), "--variant", "base", "--shots", "1", "--seed", "1",
                 "--set", "train.epochs=1", "--out", str(run), "--quiet"]) == 0  # documented: created with its parents
    assert (run / METRICS_FILE).is_file()
    assert main(["predict", "--classifier", str(run), "--out", str(tmp_path / "missing" / "p.csv"), str(run)]) == 2
    assert f"its folder {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()


# --------------------------------------------------------------------------------------------
# Item 13: a run folder holds one run


def _run(cache, out, method="tip_adapter", seed=1, overrides=(), **kwargs):
    return run_method(create_method(method, overrides=list(overrides)), cache, shots=1, seed=seed, out_dir=out, progress=False, **kwargs)


def test_a_run_folder_holds_one_run(tmp_path, capsys):
    cache = _tiny()
    out = tmp_path / "run"
    first = _run(cache, out, "hegraphadapter", overrides=["train.epochs=1"])
    assert (out / ADAPTER_FILE).is_file()
    again = _run(cache, out, "hegraphadapter", overrides=["train.epochs=1"])  # the same run again: replaced
    assert again["config_id"] == first["config_id"]
    with pytest.raises(RunFolderError, match=r"holds a finished run of another configuration \(method 'hegraphadapter' -> 'zero_shot'.*--overwrite"):
        _run(cache, out, "zero_shot")
    with pytest.raises(RunFolderError, match=r"seed 1 -> 2"):
        _run(cache, out, "hegraphadapter", seed=2, overrides=["train.epochs=1"])
    with pytest.raises(RunFolderError, match="the method's config or the feature cache"):
        _run(cache, out, "hegraphadapter", overrides=["train.epochs=2"])
    assert load_record(out)["config_id"] == first["config_id"]  # nothing was touched
    replaced = _run(cache, out, "zero_shot", overwrite=True)
    assert load_record(out)["method"] == "zero_shot" and replaced["config_id"] != first["config_id"]
    assert not (out / ADAPTER_FILE).exists()  # the old run's files went first: export cannot mix them
    # the command line: one line, and --overwrite
    argv = ["run", "--features", str(tmp_path / "c"), "--variant", "base", "--shots", "1", "--seed", "1", "--out", str(out), "--quiet"]
    save_cache(tmp_path / "c", cache)
    assert main([*argv, "--set", "train.epochs=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "choose another --out, or pass --overwrite" in err
    assert main([*argv, "--set", "train.epochs=1", "--overwrite"]) == 0 and load_record(out)["method"] != "zero_shot"


def test_a_folder_that_holds_no_run_keeps_its_files(tmp_path):
    out = tmp_path / "checkpoint"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"weights")
    _run(_tiny(), out, "zero_shot")
    assert (out / "model.safetensors").read_bytes() == b"weights" and (out / "config.json").read_text() == "{}"


def test_one_config_id_across_seeds_and_another_for_another_config():
    cache = _tiny()
    a1, a2 = _run(cache, None, seed=1), _run(cache, None, seed=2)
    b1 = _run(cache, None, seed=1, overrides=["alpha=0.5"])
    assert a1["config_id"] == a2["config_id"] != b1["config_id"]


# --------------------------------------------------------------------------------------------
# Item 15: one writer per run folder


def _hold(folder: Path):
    """Lock ``folder`` as another process would: a separate open file description."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"4242\n")
    return fd


def test_a_run_into_a_folder_someone_writes_is_refused(tmp_path, cache_dir, capsys):
    out = tmp_path / "run"
    fd = _hold(out)
    try:
        with pytest.raises(FolderBusy, match="process 4242 is writing"):
            with folder_lock(out):
                pass
        with pytest.raises(RunBusyError):
            _run(_tiny(), out, "zero_shot")
        assert main(["run", "--features", str(cache_dir), "--shots", "1", "--seed", "1", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "process 4242 is writing this folder" in err and "choose another --out" in err
        assert not (out / METRICS_FILE).exists()
    finally:
        os.close(fd)
    with folder_lock(out), folder_lock(out):  # free again, and re-entrant within a process
        pass


_HOLDER = textwrap.dedent("""
    import sys, time, pathlib
    import hgadapter.runner as runner
    go = pathlib.Path(sys.argv[1])
    original = runner._run_method
    def wait_for_go(*args, **kwargs):  # inside the run folder's lock, before fitting
        while not go.exists():
            time.sleep(0.05)
        return original(*args, **kwargs)
    runner._run_method = wait_for_go
    from hgadapter.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def _held_folders(root: Path) -> list[Path]:
    held = []
    for lock in root.rglob(LOCK_NAME):
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(lock.parent)
        finally:
            os.close(fd)
    return held


def test_two_sweeps_into_one_out_share_the_runs_and_never_mix(tmp_path, cache_dir, capsys):
    """A sweep in a second process holds one run folder (it waits inside the run until told to go);
    a sweep in this process, into the same --out meanwhile, leaves that run to it and runs the
    rest; the first then finds those finished. Every run is executed once, by one process."""
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"sweep: {{name: s, dataset: synthetic, features: {cache_dir}, methods: [tip_adapter], shots: [1], seeds: [1, 2, 3]}}\n")
    out, go = tmp_path / "runs", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = ["sweep", str(exp), "--out", str(out), "--quiet"]
    first = subprocess.Popen([sys.executable, "-c", _HOLDER, str(go), *argv], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not _held_folders(out) and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        (held,) = _held_folders(out)  # the first sweep sits inside its first run, holding the folder
        assert main(argv) == 0  # the second sweep, in this process
        second = capsys.readouterr().out
        assert f"{held}: process {first.pid} is writing this folder; left to it" in second
        assert "2 runs finished, 0 already done, 1 left to another process" in second
    finally:
        go.touch()
        first_out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, first_out
    assert "1 runs finished, 2 already done" in first_out  # it ran its run and took none of the others twice
    assert first_out.count("finished by another process meanwhile") == 2
    for seed in (1, 2, 3):
        run = out / "s" / "tip_adapter" / f"1shot-seed{seed}"
        record = load_record(run)
        log = (run / "log.txt").read_text().splitlines()
        assert record["seed"] == seed and log[0].endswith(f"tip_adapter shots 1 seed {seed}")
        assert sum(line.endswith("shots 1 seed 1") or line.endswith("shots 1 seed 2") or line.endswith("shots 1 seed 3") for line in log) == 1
        head = json.loads((run / "head.json").read_text())
        assert head["features"]["dim"] == 8
