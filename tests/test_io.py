"""Tests for hgadapter/_io.py: the one atomic writer (fsync, rename, permissions) and read_yaml."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from hgadapter import _io
from hgadapter.config import load_config
from hgadapter.data.io import save_cache
from hgadapter.runner import run_experiment

# Not the usual 0o022 and not 0o077, so the expected mode 0o640 can be told apart both from
# open()'s default under a common umask (0o644) and from mkstemp's / safetensors' 0o600.
_UMASK = 0o027
_EXPECTED = 0o666 & ~_UMASK  # 0o640


@pytest.fixture
def umask(monkeypatch: pytest.MonkeyPatch) -> int:
    # _io reads the process umask once at import (os.umask can only be read by setting it, which
    # races with other threads); a test sets the value it read.
    monkeypatch.setattr(_io, "_UMASK", _UMASK)
    return _UMASK


def _modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in sorted(directory.iterdir()) if p.is_file()}


def test_atomic_write_gives_the_umask_permissions_and_leaves_no_temp_file(tmp_path: Path, umask: int) -> None:
    path = _io.atomic_write_text(tmp_path / "sub" / "a.txt", "hello\n")
    assert path.read_text() == "hello\n"
    assert _modes(tmp_path / "sub") == {"a.txt": _EXPECTED}


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")

    def fail(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _io.atomic_write(target, fail)
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"] and target.read_text() == "old"


def test_saved_cache_files_get_the_umask_permissions_not_0600(tmp_path: Path, umask: int, random_cache) -> None:
    # safetensors' own writer creates its files 0600; a cache shared between users must stay readable.
    out = save_cache(tmp_path / "cache", random_cache)
    modes = _modes(out)
    assert {"cache.json", "text.safetensors", "val.safetensors", "test.safetensors", "train_k4_s1.safetensors"} <= set(modes)
    assert modes == {name: _EXPECTED for name in modes}


def test_run_directory_files_get_the_umask_permissions_not_0600(tmp_path: Path, umask: int, random_cache) -> None:
    cfg = load_config("full", overrides=["train.epochs=1"])
    run_experiment(cfg, random_cache, shots=4, seed=1, out_dir=tmp_path / "run", progress=False)
    modes = _modes(tmp_path / "run")
    assert {"adapter.safetensors", "nodes.safetensors", "metrics.json"} <= set(modes)
    assert modes == {name: _EXPECTED for name in modes}


def test_atomic_save_tensors_round_trip(tmp_path: Path, umask: int) -> None:
    from safetensors.torch import load_file

    t = torch.arange(6.0).view(2, 3).t()  # not contiguous
    _io.atomic_save_tensors(tmp_path / "t.safetensors", {"t": t}, metadata={"k": "v"})
    assert torch.equal(load_file(tmp_path / "t.safetensors")["t"], t)
    assert _modes(tmp_path) == {"t.safetensors": _EXPECTED}


class _BadFile(ValueError):
    pass


def test_read_yaml_parses_and_names_the_file_and_line_on_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("a: [1, 2]\n")
    assert _io.read_yaml(good, _BadFile) == {"a": [1, 2]}
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [unclosed\n")
    with pytest.raises(_BadFile, match=r"bad\.yaml: not valid YAML \(line \d+\)$"):
        _io.read_yaml(bad, _BadFile)
    missing = tmp_path / "missing.yaml"
    with pytest.raises(_BadFile, match=r"missing\.yaml: cannot read the results: .*; pass --x$"):
        _io.read_yaml(missing, _BadFile, what="the results", hint="pass --x")
    with pytest.raises(_BadFile, match=r"missing\.yaml: cannot read: "):
        _io.read_yaml(missing, _BadFile)


# -- write_folder: whole folders staged beside the target -----------------------------------------


def _build(files: dict[str, str]):
    def build(folder: Path) -> None:
        for name, text in files.items():
            _io.atomic_write_text(folder / name, text)

    return build


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _accept(_: Path) -> None:
    pass


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_write_folder_replaces_the_whole_folder(tmp_path: Path, umask: int, monkeypatch, exchange: bool) -> None:
    if not exchange:  # the path every system without RENAME_EXCHANGE takes
        monkeypatch.setattr(_io, "_rename_exchange", lambda a, b: False)
    target = tmp_path / "out"
    _io.write_folder(target, _build({"a.txt": "old", "stale.txt": "gone"}), check_existing=_accept)
    _io.write_folder(target, _build({"a.txt": "new"}), check_existing=_accept)
    assert _contents(target) == {"a.txt": "new"}  # replaced as a whole: nothing of the old one stays
    assert _siblings(target) == []  # no staging or old folder left beside it
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~_UMASK and _modes(target) == {"a.txt": _EXPECTED}


def test_write_folder_keeps_the_old_folder_when_the_build_fails(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _io.write_folder(target, _build({"a.txt": "old"}), check_existing=_accept)

    def half_then_fail(folder: Path) -> None:
        _io.atomic_write_text(folder / "a.txt", "half")
        raise KeyboardInterrupt  # as Ctrl-C in the middle

    with pytest.raises(KeyboardInterrupt):
        _io.write_folder(target, half_then_fail, check_existing=_accept)
    assert _contents(target) == {"a.txt": "old"} and _siblings(target) == []


def test_write_folder_asks_before_replacing_and_builds_nothing_when_refused(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep")

    def refuse(folder: Path) -> None:
        raise FileExistsError(f"{folder} is not ours")

    built = []
    with pytest.raises(FileExistsError, match="not ours"):
        _io.write_folder(target, lambda folder: built.append(folder), check_existing=refuse)
    assert built == [] and _contents(target) == {"notes.txt": "keep"} and _siblings(target) == []


def test_strays_of_a_killed_writer_are_cleaned_and_an_old_folder_put_back(tmp_path: Path) -> None:
    target, dead = tmp_path / "out", _dead_pid()
    staging = tmp_path / f".out.staging-{dead}-abc"
    old = tmp_path / f".out.old-{dead}-def"
    live = tmp_path / f".out.staging-{os.getpid()}-xyz"  # a writer still at work: not touched
    for folder, text in ((staging, "half"), (old, "old"), (live, "busy")):
        folder.mkdir()
        (folder / "a.txt").write_text(text)
    # killed between moving the old folder aside and renaming the new one in: the old one returns
    assert sorted(p.name for p in _io.remove_stale_folders(target)) == sorted([old.name, staging.name])
    assert _contents(target) == {"a.txt": "old"} and _siblings(target) == [live.name]
    _io.write_folder(target, _build({"a.txt": "new"}), check_existing=_accept)
    assert _contents(target) == {"a.txt": "new"} and _siblings(target) == [live.name]


def test_read_regular_file_refuses_a_fifo_without_blocking_and_bounds_the_size(tmp_path: Path) -> None:
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        _io.read_regular_file(fifo, max_bytes=100)  # would block forever on open() or read()
    with pytest.raises(OSError, match="not a regular file"):
        _io.read_regular_file(tmp_path, max_bytes=100)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(OSError, match="101 bytes, more than the 100"):
        _io.read_regular_file(big, max_bytes=100)
    assert _io.read_regular_file(big, max_bytes=101) == b"x" * 101
