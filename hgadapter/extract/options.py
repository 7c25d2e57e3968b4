"""What one ``hgadapter extract`` run takes: :class:`ExtractOptions` and its command line.

The dataclass is the schema: each field's metadata carries its flag's help text and argument
group, and :func:`add_extract_arguments` / :func:`options_from_args` derive the command line
from it, so an option is declared once (``hgadapter extract --help`` lists them all).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hgadapter.extract.encoders import DEFAULT_ENCODER
from hgadapter.errors import UserError


class ExtractError(UserError):
    """A user error in an extraction request: bad arguments, unreadable images, a cache mismatch."""


def _cli(group: str, help: str, **argparse_kwargs: Any) -> dict[str, Any]:
    """Field metadata for the command line: argument group, help text, extra argparse keywords.

    ``flag`` in ``argparse_kwargs`` renames the flag (default: ``--field-name``).
    """
    return {"cli": {"group": group, "help": help, **argparse_kwargs}}


# Argument groups of ``hgadapter extract --help``, in this order.
_GROUPS = ("data", "model", "sets", "prompts", "run")


@dataclass(frozen=True, kw_only=True)
class ExtractOptions:
    """Everything a run needs, parsed from the command line (or built directly in code)."""

    # data
    dataset: str = field(metadata=_cli("data", "coop:<name>, imagefolder, or hf:<hub id or saved dir>", required=True))
    data_dir: str | None = field(default=None, metadata=_cli("data", "CoOp root folder (coop:) or image folder (imagefolder)"))
    classnames: str | None = field(default=None, metadata=_cli("data", "optional class list (one per line) checked against the dataset"))
    split_seed: int = field(default=1, metadata=_cli("data", "seed of the carved val/test split when a folder has none"))
    image_column: str = field(default="image", metadata=_cli("data", "hf: image column"))
    label_column: str = field(default="label", metadata=_cli("data", "hf: label column (ClassLabel)"))
    hf_splits: tuple[str, str, str] = field(
        default=("train", "validation", "test"), metadata=_cli("data", "hf: split names", metavar=("TRAIN", "VAL", "TEST"))
    )
    # model
    model: str = field(default=DEFAULT_ENCODER, metadata=_cli("model", "hub id or local folder of a CLIP, MetaCLIP 2, SigLIP or SigLIP 2 checkpoint, or open_clip:<arch>/<pretrained> / open_clip:hf-hub:<repo>"))
    revision: str | None = field(default=None, metadata=_cli("model", "hub branch, tag or commit"))
    device: str | None = field(default=None, metadata=_cli("model", "cpu, cuda, cuda:1 (default: cuda when available)"))
    precision: str = field(
        default="auto",
        metadata=_cli("model", "autocast dtype on CUDA; the CPU always runs fp32", choices=["auto", "fp32", "fp16", "bf16"]),
    )
    # sets
    shots: tuple[int, ...] = field(default=(1, 2, 4, 8, 16), metadata=_cli("sets", "K values (none: val/test only)", nargs="*"))
    seeds: tuple[int, ...] = field(default=(1, 2, 3), metadata=_cli("sets", "sampling seeds", nargs="+"))
    val_shots: int = field(default=4, metadata=_cli("sets", "validation images per class"))
    val_seed: int = field(default=1, metadata=_cli("sets", "seed of the validation sample"))
    val_source: str = field(
        default="auto",
        metadata=_cli(
            "sets",
            "where validation images come from: auto = the dataset's validation split, else train images held "
            "out of every few-shot set (ImageNet); test = CoOp's ImageNet protocol (validation from the test images)",
            choices=["auto", "train", "test"],
        ),
    )
    views: int = field(default=10, metadata=_cli("sets", "augmented views per training image (V)"))
    augment: str = field(
        default="random_resized_crop",
        metadata=_cli("sets", "augmentation of the training views", choices=["random_resized_crop", "none"]),
    )
    aug_scale: tuple[float, float] = field(
        default=(0.5, 1.0), metadata=_cli("sets", "area range of the random resized crop", metavar=("MIN", "MAX"))
    )
    aug_seed: int = field(default=0, metadata=_cli("sets", "seed of the augmentation draws"))
    # prompts
    pos_prompts: str = field(
        default="coop",
        metadata=_cli("prompts", "'+'-joined: coop, ensemble7, photo, template:<t>, templates:<file>, descriptions:<json>"),
    )
    neg_prompts: str = field(default="no", metadata=_cli("prompts", "'+'-joined: no, neg4, template:<t>, templates:<file>"))
    description_pad: str = field(
        default="cycle",
        metadata=_cli("prompts", "how classes with fewer descriptions reach the common count", choices=["cycle", "truncate"]),
    )
    # run
    out: Path = field(metadata=_cli("run", "cache directory", required=True))
    batch_size: int = field(default=64, metadata=_cli("run", "images (x views) per forward pass"))
    workers: int = field(default=4, metadata=_cli("run", "image-loading threads (0: load in the main thread)"))
    skip_bad: bool = field(default=False, metadata=_cli("run", "leave unreadable images out and record them"))
    overwrite: bool = field(default=False, metadata=_cli("run", "replace a cache built from different inputs"))
    progress: bool = field(default=True, metadata=_cli("run", "no progress bars or log lines", flag="--quiet"))
    # On the command line a string ("I/N" or "auto"), turned into (i, n) by options_from_args.
    shard: tuple[int, int] | None = field(
        default=None,
        metadata=_cli(
            "run",
            "encode only shard I of N (0-based) into OUT.shards/; 'auto' reads RANK and WORLD_SIZE as set by "
            "`accelerate launch` or torchrun",
            metavar="I/N",
            type=str,
        ),
    )
    merge: bool = field(default=False, metadata=_cli("run", "build the cache from the shard files of a sharded run"))

    def log(self, msg: str) -> None:
        """Print a progress line to stderr unless the run is quiet."""
        if self.progress:
            print(msg, file=sys.stderr, flush=True)


def _argparse_kwargs(f: dataclasses.Field, hint: Any) -> tuple[str, dict[str, Any]]:
    """The flag and ``add_argument`` keywords of one field, from its type, default and metadata."""
    spec = dict(f.metadata["cli"])
    spec.pop("group")
    flag = spec.pop("flag", "--" + f.name.replace("_", "-"))
    kwargs: dict[str, Any] = {"dest": f.name, **spec}
    if hint is bool:
        # A flag that is off by default switches the field on; one that is on by default (--quiet) off.
        kwargs["action"] = "store_false" if f.default else "store_true"
        return flag, kwargs
    if f.default is not dataclasses.MISSING:
        kwargs["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            kwargs.setdefault("nargs", "+")
        else:
            kwargs.setdefault("nargs", len(args))
        hint = args[0]
    elif typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    kwargs.setdefault("type", hint)
    if kwargs["type"] is str:
        del kwargs["type"]  # argparse's default
    default = kwargs.get("default")
    if default not in (None, [], "") and "default" not in kwargs.get("help", ""):  # the help says what leaving it out means
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        kwargs["help"] = f"{kwargs.get('help', '')} (default: {shown})"
    return flag, kwargs


def add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hgadapter extract``, one per :class:`ExtractOptions` field (docs/extraction.md)."""
    hints = typing.get_type_hints(ExtractOptions)
    groups = {name: parser.add_argument_group(name) for name in _GROUPS}
    for f in dataclasses.fields(ExtractOptions):
        flag, kwargs = _argparse_kwargs(f, hints[f.name])
        groups[f.metadata["cli"]["group"]].add_argument(flag, **kwargs)


def options_from_args(args: argparse.Namespace) -> ExtractOptions:
    """The options of a parsed ``hgadapter extract`` command line (see :func:`add_extract_arguments`).

    Raises:
        ExtractError: ``--shard`` is malformed, or ``auto`` without a launcher's environment.
    """
    hints = typing.get_type_hints(ExtractOptions)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ExtractOptions):
        if not hasattr(args, f.name):
            continue  # a parser built by other code may leave options out; they keep their defaults
        value = getattr(args, f.name)
        if typing.get_origin(hints[f.name]) is tuple and isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    shard, shard_device = _parse_shard(values.pop("shard", None))
    values["out"] = Path(values["out"])
    values["device"] = values.get("device") or shard_device
    return ExtractOptions(shard=shard, **values)


def _parse_shard(text: str | None) -> tuple[tuple[int, int] | None, str | None]:
    """``--shard`` -> ((i, n), device override) ; 'auto' follows the launcher's environment."""
    if text is None:
        return None, None
    if text == "auto":
        try:
            i, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        except (KeyError, ValueError):
            raise ExtractError("--shard auto needs RANK and WORLD_SIZE (run under `accelerate launch` or torchrun)") from None
        local = os.environ.get("LOCAL_RANK")
        device = f"cuda:{local}" if local is not None and torch.cuda.is_available() else None
        return (i, n), device
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ExtractError(f"--shard must look like 0/4 or 'auto', got {text!r}") from None
    return (i, n), None


def check_options(opts: ExtractOptions) -> None:
    """Raise an :class:`ExtractError` naming the flag when an option is out of range."""
    if opts.augment not in ("random_resized_crop", "none"):
        raise ExtractError(f"unknown augmentation {opts.augment!r}; available: ['random_resized_crop', 'none']")
    if opts.val_source not in ("auto", "train", "test"):
        raise ExtractError(f"unknown --val-source {opts.val_source!r}; available: ['auto', 'train', 'test']")
    if opts.views < 1:
        raise ExtractError(f"--views must be >= 1, got {opts.views}")
    if opts.augment == "none" and opts.views != 1:
        raise ExtractError("--augment none gives identical views; use --views 1")
    if any(k < 1 for k in opts.shots):
        raise ExtractError(f"--shots must be positive, got {list(opts.shots)}")
    if opts.val_shots < 0:
        raise ExtractError(f"--val-shots must be >= 0, got {opts.val_shots}")
    lo, hi = opts.aug_scale
    if not 0 < lo <= hi <= 1:
        raise ExtractError(f"--aug-scale must satisfy 0 < min <= max <= 1, got {lo} {hi}")
    if opts.batch_size < 1 or opts.workers < 0:
        raise ExtractError("--batch-size must be >= 1 and --workers >= 0")
    if opts.shard is not None and not 0 <= opts.shard[0] < opts.shard[1]:
        raise ExtractError(f"--shard i/n needs 0 <= i < n, got {opts.shard[0]}/{opts.shard[1]}")
    if opts.shard is not None and opts.merge:
        raise ExtractError("--shard and --merge are separate steps: run the shards, then --merge")
