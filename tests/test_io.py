"""Tests for hgadapter/_io.py: the one atomic writer (fsync, rename, permissions) and read_yaml."""

from __future__ import annotations

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
