"""Tests for hgadapter/extract/options.py: the command line derived from ExtractOptions."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from hgadapter.extract.options import ExtractError, ExtractOptions, add_extract_arguments, check_options, options_from_args


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hgadapter extract")
    add_extract_arguments(parser)
    return parser


def _parse(*argv: str) -> ExtractOptions:
    return options_from_args(_parser().parse_args(list(argv)))


def test_every_field_has_a_flag_with_help_text() -> None:
    actions = {a.dest: a for a in _parser()._actions if a.dest != "help"}
    names = [f.name for f in dataclasses.fields(ExtractOptions)]
    assert sorted(actions) == sorted(names)
    for name, action in actions.items():
        assert action.help and action.help.strip(), f"--{name} has no help text"
    help_text = _parser().format_help()
    for action in actions.values():
        assert action.option_strings[0] in help_text


def test_command_line_defaults_are_the_dataclass_defaults() -> None:
    assert _parse("--dataset", "imagefolder", "--out", "c") == ExtractOptions(dataset="imagefolder", out=Path("c"))


def test_every_kind_of_option_converts_to_the_field_type() -> None:
    opts = _parse(
        "--dataset", "hf:x", "--out", "c", "--data-dir", "d", "--shots", "1", "4", "--seeds", "7",
        "--aug-scale", "0.3", "0.9", "--hf-splits", "a", "b", "c", "--quiet", "--skip-bad", "--views", "3",
        "--precision", "fp16", "--shard", "1/4",
    )
    assert opts.shots == (1, 4) and opts.seeds == (7,) and opts.aug_scale == (0.3, 0.9)
    assert opts.hf_splits == ("a", "b", "c") and opts.out == Path("c") and opts.data_dir == "d"
    assert opts.progress is False and opts.skip_bad is True and opts.overwrite is False
    assert opts.views == 3 and opts.precision == "fp16" and opts.shard == (1, 4)
    assert _parse("--dataset", "x", "--out", "c", "--shots").shots == ()


def test_bad_values_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ExtractError, match="--shard must look like 0/4 or 'auto', got 'x'"):
        _parse("--dataset", "x", "--out", "c", "--shard", "x")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ExtractError, match="--shard auto needs RANK and WORLD_SIZE"):
        _parse("--dataset", "x", "--out", "c", "--shard", "auto")
    with pytest.raises(SystemExit):
        _parse("--dataset", "x", "--out", "c", "--precision", "fp8")  # argparse lists the choices
    with pytest.raises(ExtractError, match="--views must be >= 1, got 0"):
        check_options(_parse("--dataset", "x", "--out", "c", "--views", "0"))


def test_shard_auto_reads_the_launcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    opts = _parse("--dataset", "x", "--out", "c", "--shard", "auto", "--device", "cpu")
    assert opts.shard == (2, 3) and opts.device == "cpu"
