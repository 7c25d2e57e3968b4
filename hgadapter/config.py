"""Configuration: YAML -> frozen dataclasses. The only module that parses YAML.

Precedence, lowest first: dataclass defaults < meta-path variant file (``metapaths/NAME.yaml``)
< the experiment file's ``_base_`` files < experiment config file (``--config``) < command-line
overrides (``--set train.lr=0.01``). Any YAML file may name ``_base_: path`` (or a list of
paths, relative to the file); the bases are merged first, mappings key by key and lists as a
whole, so a per-dataset experiment file states only what differs from its base. An experiment
file's ``sweep`` section (:class:`SweepConfig`) describes a grid of runs for ``hgadapter sweep``.
Every error is a :class:`ConfigError` naming the file (or ``--set``), the key path and the
valid choices; nothing is asserted, and echoed values are cut short.

The mechanism is public and the method configs (:mod:`hgadapter.methods`) use it too:
:func:`read_config_layers` (a file after its ``_base_`` files), :class:`ConfigTree` (merged
layers and ``--set`` overrides, with the source of every key) and :class:`ConfigParser`, which
builds a dataclass field by field from each field's :func:`hparam` metadata (docs/config.md).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from collections.abc import Mapping
from typing import Any

import yaml

from hgadapter._resources import resource_path
from hgadapter.errors import UserError
from hgadapter.metapaths import (
    ACTIVATIONS,
    CANONICAL_ETYPES,
    CONTRAST_MODES,
    DEFAULT_WEIGHT_KIND,
    ETYPES,
    NORMS,
    NTYPES,
    STAGE_MODES,
    WEIGHT_KINDS,
    MetaPath,
)

__all__ = [
    "ConfigError",
    "GraphConfig",
    "StageConfig",
    "VariantConfig",
    "TrainConfig",
    "EvalConfig",
    "RunConfig",
    "load_config",
    "load_variant",
    "list_variants",
    "variant_path",
    "metapaths_dir",
    "config_to_dict",
    "to_plain",
    "SweepConfig",
    "ExperimentConfig",
    "load_experiment",
    "read_config_layers",
    "ConfigTree",
    "ConfigParser",
    "parse_override",
    "hparam",
    "field_names",
    "echo",
    "backbone_slug",
]

CLASSIFIERS: tuple[str, ...] = ("zero_shot", "text", "text_cache")
ENGINES: tuple[str, ...] = ("auto", "torch", "dgl")
INITS: tuple[str, ...] = ("identity", "zeros", "xavier")
# Keys a run's config.yaml records beside the config; ignored when it is loaded back as --config.
RECORD_KEYS: tuple[str, ...] = ("run", "environment")
# An experiment file's grid of runs (hgadapter sweep); load_config skips it.
SWEEP_KEY = "sweep"
# Names the files a YAML file inherits from (merged before it).
BASE_KEY = "_base_"
# Which trained weights a method keeps: the last epoch's (Dassl's default), or the epoch with the
# best validation accuracy (Tip-Adapter-F keeps its best epoch; we judge it on val, not test).
# Defined here, not in hgadapter.train, so that reading a config imports no torch.
CHECKPOINTS: tuple[str, ...] = ("last", "best_val")


class ConfigError(UserError):
    """A configuration value is unknown, of the wrong type or impossible."""


def hparam(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    low: float | None = None,
    positive: bool = False,
    choices: tuple[str, ...] | None = None,
    length: int | None = None,
) -> Any:
    """A config dataclass field with its validation rule (read by :meth:`ConfigParser.dataclass`).

    Args:
        default: the default value (omit it for a required field).
        default_factory: for mutable defaults, as in :func:`dataclasses.field`.
        low: smallest allowed value (numbers and integers; every item of a tuple).
        positive: the value (every item of a tuple) must be > 0.
        choices: allowed strings.
        length: exact length of a tuple.
    """
    meta = {"low": low, "positive": positive, "choices": choices, "length": length}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def field_names(cls: type) -> tuple[str, ...]:
    """The field names of config dataclass ``cls``: the keys its YAML section may hold."""
    return tuple(f.name for f in dataclasses.fields(cls))


# --------------------------------------------------------------------------------------------
# Dataclasses. One field per line, each with its meaning and unit.


@dataclass(frozen=True)
class GraphConfig:
    """How the heterograph's edges and weights are built from the initial node features."""

    relations: tuple[str, ...] = ETYPES  # relations present in the graph
    weights: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_WEIGHT_KIND))  # relation -> cosine|contrast
    contrast: str = hparam("one_minus_cos", choices=CONTRAST_MODES)  # same-class contrast weight: one_minus_cos (1 - cos) | neg_cos (-cos)
    topk: int | None = hparam(None, low=1)  # keep each destination's top-k sources by weight; None = dense (all C sources)
    topk_by_relation: dict[str, int | None] = field(default_factory=dict)  # relation -> its own top-k (None = dense), over topk
    self_loops: bool = hparam(False)  # keep the i -> i edge on p2p and v2v
    clamp_negative: bool = hparam(False)  # clamp negative edge weights to 0 (GraphAdapter does)


@dataclass(frozen=True)
class StageConfig:
    """One stage of the hierarchical aggregation (negative -> positive -> visual)."""

    target: str = hparam(choices=NTYPES)  # node type renewed (residual) or biased (bias) by this stage
    metapaths: tuple[MetaPath, ...]  # meta-paths aggregated into the target, fused by their betas
    mode: str = hparam("residual", choices=STAGE_MODES)  # residual: h' = h + sum beta z ; bias: b = gamma * sum beta z
    norm: str = hparam("gcn", choices=NORMS)  # per-destination normalisation of incoming weights: gcn | row
    activation: str = hparam("tanh", choices=ACTIVATIONS)  # applied to each meta-path's aggregate before fusion
    gamma: float = hparam(1.0, low=0.0)  # scale of the visual bias (bias mode only)


@dataclass(frozen=True)
class VariantConfig:
    """A meta-path variant: the graph, its aggregation stages and the classifier used."""

    name: str = hparam()  # registry name (file stem under metapaths/)
    description: str = hparam("")  # one line shown by `hgadapter variants`
    classifier: str = hparam("text_cache", choices=CLASSIFIERS)  # zero_shot | text | text_cache
    graph: GraphConfig = field(default_factory=GraphConfig)  # edge construction
    stages: tuple[StageConfig, ...] = ()  # in order; node features are renewed between stages


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of the stage projections (AdamW, warmup, cosine decay)."""

    lr: float = hparam(1e-3, positive=True)  # peak learning rate after warmup
    epochs: int = hparam(30, low=1)  # passes over the C x K training images
    batch_size: int = hparam(256, low=1)  # training images per step
    weight_decay: float = hparam(0.01, low=0.0)  # AdamW weight decay
    warmup_epochs: int = hparam(1, low=0)  # linear warmup length, in epochs
    warmup_lr: float = hparam(1e-5, positive=True)  # learning rate at the first warmup step
    cache_loss_weight: float = hparam(0.1, low=0.0)  # lambda in CE_text + lambda * CE_cache
    cache_beta: float = hparam(5.5, positive=True)  # cache sharpness used during training
    init: str = hparam("identity", choices=INITS)  # initial stage projections: identity | zeros | xavier
    learn_betas: bool = hparam(False)  # learn every fusion weight, starting at its beta (paper Table 3, "learn"); beta_test unused
    classwise_bias: bool = hparam(True)  # a learnable, zero-initialised C x d term per meta-path inside its activation (METHOD.md; chosen on the suite, docs/method.md)
    checkpoint: str = hparam("best_val", choices=CHECKPOINTS)  # keep the epoch with the best validation accuracy (text classifier), or the last one


@dataclass(frozen=True)
class EvalConfig:
    """Choice of the cache weight alpha and sharpness beta on the validation split."""

    alpha_grid: tuple[float, ...] = hparam((0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0), low=0.0)  # candidate alphas
    beta_grid: tuple[float, ...] = hparam((1.0, 2.0, 3.0, 4.0, 5.5, 7.0, 9.0, 12.0), low=0.0)  # candidate cache sharpness values
    alpha: float | None = hparam(None, low=0.0)  # fix alpha instead of searching
    beta: float | None = hparam(None, low=0.0)  # fix beta instead of searching
    extend_rounds: int = hparam(4, low=0)  # times a grid is extended outward when the optimum lies on its edge (0: never)
    smooth: int = hparam(0, low=0)  # score each (alpha, beta) by the mean val accuracy within this many grid steps (0: plain argmax)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run besides the data."""

    variant: VariantConfig  # graph, stages and classifier
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation
    eval: EvalConfig = field(default_factory=EvalConfig)  # alpha/beta selection on validation
    engine: str = hparam("auto", choices=ENGINES)  # message-passing engine: auto | torch | dgl
    device: str = hparam("auto")  # auto | cpu | cuda | cuda:N


@dataclass(frozen=True)
class SweepConfig:
    """The grid of runs an experiment file describes (its ``sweep`` section; ``hgadapter sweep``)."""

    name: str  # experiment name; its runs go to OUT/<name>/<method>/...
    dataset: str  # dataset id recorded with every run: imagenet, caltech101, ..., synthetic
    features: str  # feature cache folder; {dataset} and {backbone} are filled in; relative to the features root
    backbone: str | None = None  # CLIP backbone recorded with every run: RN50, RN101, ViT-B/32, ViT-B/16
    methods: tuple[str, ...] = ("hegraphadapter",)  # registry names (`hgadapter compare --help`)
    shots: tuple[int, ...] = (1, 2, 4, 8, 16)  # K, images per class
    seeds: tuple[int, ...] = (1, 2, 3)  # few-shot sampling seeds
    grid: tuple[dict[str, tuple[Any, ...]], ...] = ()  # union of products: dotted config key -> values (HeGraphAdapter only)
    targets: dict[str, str] = field(default_factory=dict)  # domain-generalisation dataset -> feature cache folder
    method_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)  # method -> key=value for its config


@dataclass(frozen=True)
class ExperimentConfig:
    """An experiment file: a run config (train / eval / graph / ...) plus its ``sweep`` grid."""

    path: Path  # the experiment YAML; HeGraphAdapter runs resolve their RunConfig from it
    sweep: SweepConfig  # the grid of runs


VARIANT_KEYS: tuple[str, ...] = field_names(VariantConfig)  # the keys of a variant file


def backbone_slug(backbone: str | None) -> str:
    """A backbone name as a path component: ``ViT-B/16`` -> ``ViT-B-16``; ``None`` -> ``none``."""
    return "none" if backbone is None else backbone.replace("/", "-").replace(" ", "_")


# --------------------------------------------------------------------------------------------
# Variant registry: metapaths/*.yaml


def metapaths_dir() -> Path:
    """The directory of shipped variants: ``$HGADAPTER_METAPATHS``, ``<repo>/metapaths`` or the installed copy."""
    return resource_path("metapaths", "HGADAPTER_METAPATHS")


def list_variants() -> list[str]:
    """Names of the shipped meta-path variants (the values ``--variant`` takes)."""
    root = metapaths_dir()
    if not root.is_dir():
        return []
    return sorted(p.stem for p in root.glob("*.yaml"))


def _shipped_variants() -> dict[str, Path]:
    """Variant name -> its shipped file: what ``_base_: full`` in a variant file means."""
    return {name: metapaths_dir() / f"{name}.yaml" for name in list_variants()}


def variant_path(name_or_path: str | os.PathLike) -> Path:
    """Resolve a variant name (``full``) or a YAML path to a file; unknown names list the choices."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"variant file {text} does not exist")
        return path
    path = metapaths_dir() / f"{text}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown variant {echo(text)}; available: {list_variants()}")
    return path


# --------------------------------------------------------------------------------------------
# The one config mechanism: YAML files (with their `_base_` files) are merged into a ConfigTree
# that remembers which file (or --set) set each key; a ConfigParser then builds dataclasses from
# it, reading each field's rule (range, choices, length) from its `hparam(...)` metadata. The
# method configs (hgadapter.methods) use the same three pieces.

# Bounds on what a file may ask of us, so that a hostile or broken file gives a ConfigError
# instead of a RecursionError or a message the size of an expanded alias bomb.
MAX_DEPTH = 64  # nesting levels of mappings and lists in one file
MAX_BASES = 32  # length of a chain of `_base_` files
_ECHO = reprlib.Repr()
_ECHO.maxstring = _ECHO.maxother = 60
_ECHO.maxlist = _ECHO.maxtuple = _ECHO.maxdict = _ECHO.maxset = 6
_ECHO.maxlevel = 3
_ECHO.maxlong = 40


def echo(value: Any, *, bare: bool = False, limit: int = 120) -> str:
    """A user's value as error messages quote it: its ``repr`` (``bare``: its ``str``), cut to ``limit`` characters.

    Whatever a file or ``--set`` holds, the message stays one short line.
    """
    try:
        text = str(value) if bare else _ECHO.repr(value)  # reprlib: never the whole of a huge value
    except Exception:  # a repr that fails must not hide the error being reported
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _depth(data: Any) -> int:
    """Nesting depth of plain YAML data, without recursion (a deep file must not overflow the stack)."""
    deepest, stack, seen = 0, [(data, 1)], set()
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if id(node) in seen:  # an alias: already measured, and sharing is not nesting
                continue
            seen.add(id(node))
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                return depth
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        raise ConfigError(f"{path}: not valid YAML ({echo(str(exc))})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    if _depth(data) > MAX_DEPTH:
        raise ConfigError(f"{path}: nested more than {MAX_DEPTH} levels deep")
    return data


def read_config_layers(
    path: str | os.PathLike, _chain: tuple[Path, ...] = (), *, shipped: Mapping[str, Path] | None = None
) -> list[tuple[dict[str, Any], str]]:
    """A YAML file and the files it inherits from, as ``(data, source)`` layers, bases first.

    ``_base_: FILE`` (or a list of files) names bases relative to the file's own folder; bases
    may have bases of their own. Merging the layers in order gives the file's content. Every
    kind of file the project reads (variants, experiments, method configs) goes through here.
    ``shipped`` maps the names of the shipped files of this kind (variant names for a variant
    file: ``_base_: full``) to their paths; a base that is no file next to ``path`` but such a
    name is that shipped file.

    Raises:
        ConfigError: an unreadable or invalid file, a missing base, a cycle of bases or a
            chain longer than ``MAX_BASES``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise ConfigError(f"{path}: {BASE_KEY} files form a cycle: {cycle}")
    if len(_chain) >= MAX_BASES:
        raise ConfigError(f"{_chain[0]}: {BASE_KEY} files chain more than {MAX_BASES} deep (at {path})")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY}: expected a file path or a list of file paths, got {echo(bases)}")
    layers: list[tuple[dict[str, Any], str]] = []
    for base in bases:
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        if not base_path.is_file() and shipped and base in shipped:
            base_path = shipped[base]
        if not base_path.is_file():
            names = f"; or a shipped name: {sorted(shipped)}" if shipped else ""
            raise ConfigError(f"{path}: {BASE_KEY}: {echo(base, bare=True)} does not exist (relative paths start at {path.parent}{names})")
        layers.extend(read_config_layers(base_path, (*_chain, resolved), shipped=shipped))
    layers.append((data, str(path)))
    return layers


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=0.01"`` -> ``("train.lr", 0.01)``; the value is read as YAML (text that is not YAML stays a string).

    Raises:
        ConfigError: no ``=``, an empty key, or a value nested too deeply.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {echo(text)}: expected key=value, e.g. train.lr=0.01")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError):  # ValueError: an integer past Python's digit limit
        value = raw
    except RecursionError:
        raise ConfigError(f"--set {echo(key, bare=True)}: value nested more than {MAX_DEPTH} levels deep") from None
    if _depth(value) > MAX_DEPTH:
        raise ConfigError(f"--set {echo(key, bare=True)}: value nested more than {MAX_DEPTH} levels deep")
    return key, value


class ConfigTree:
    """Raw config data merged from layers, with the source (file or ``--set KEY``) of every key path.

    Attributes:
        data: the merged plain data (mappings, lists, scalars).
    """

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self._source: dict[tuple[str, ...], str] = {}

    def merge(self, layer: dict[str, Any], source: str) -> None:
        """Merge one layer over the tree: mappings key by key, anything else (lists too) replaced."""
        self._merge(self.data, layer, source, ())

    def merge_file(
        self, path: str | os.PathLike, *, skip: tuple[str, ...] = (), shipped: Mapping[str, Path] | None = None
    ) -> list[tuple[dict[str, Any], str]]:
        """Merge a YAML file over the tree, its ``_base_`` files first; top-level keys in ``skip`` are left out.

        ``shipped``: names a ``_base_`` may use for the shipped files of this kind (:func:`read_config_layers`).

        Returns:
            the file's layers as :func:`read_config_layers` gives them (``skip`` keys included).
        """
        layers = read_config_layers(path, shipped=shipped)
        for data, source in layers:
            self.merge({k: v for k, v in data.items() if k not in skip}, source)
        return layers

    def _merge(self, base: dict[str, Any], layer: dict[str, Any], source: str, path: tuple[str, ...]) -> None:
        for key, value in layer.items():
            key_path = (*path, str(key))
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                self._merge(base[key], value, source, key_path)
            else:
                old = base.get(key)
                base[key] = copy.deepcopy(value)
                if isinstance(old, (dict, list)):  # only a container has key paths below it to forget
                    self._forget(key_path)
                self._source[key_path] = source

    def _forget(self, prefix: tuple[str, ...]) -> None:
        for key in [k for k in self._source if k[: len(prefix)] == prefix and k != prefix]:
            del self._source[key]

    def override(self, text: str) -> str:
        """Apply one ``dotted.key=value`` (see :func:`parse_override`); returns the key."""
        key, value = parse_override(text)
        self.set_path(key, value, f"--set {echo(key, bare=True)}")
        return key

    def set_path(self, dotted: str, value: Any, source: str) -> None:
        """Set ``dotted`` (``stages.1.metapaths.0.beta``; list items by index) to ``value``."""
        parts = dotted.split(".")
        node: Any = self.data
        for i, part in enumerate(parts[:-1]):
            node = self._child(node, part, parts[: i + 1], source)
        last = parts[-1]
        if isinstance(node, list):
            index = self._index(node, last, parts, source)
            old, node[index] = node[index], value
        elif isinstance(node, dict):
            old = node.get(last)
            node[last] = value
        else:
            raise ConfigError(f"{source}: {_key_path(parts)}: {_key_path(parts[:-1])} is not a mapping or list")
        if isinstance(old, (dict, list)):  # only a container has key paths below it to forget
            self._forget(tuple(parts))
        self._source[tuple(parts)] = source

    def _child(self, node: Any, part: str, parts: list[str], source: str) -> Any:
        if isinstance(node, list):
            return node[self._index(node, part, parts, source)]
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: {_key_path(parts)}: parent is not a mapping or list")
        if part not in node:
            node[part] = {}
        return node[part]

    @staticmethod
    def _index(node: list, part: str, parts: list[str], source: str) -> int:
        if not (part.isdigit() or part[:1] == "-" and part[1:].isdigit()) or len(part) > 18:
            raise ConfigError(f"{source}: {_key_path(parts)}: {echo(part)} is not a list index")
        index = int(part)
        if not -len(node) <= index < len(node):
            raise ConfigError(f"{source}: {_key_path(parts)}: index {index} out of range (list has {len(node)} items)")
        return index

    def where(self, path: tuple[str, ...]) -> str:
        """The file (or ``--set KEY``) that set ``path`` or the nearest mapping above it; ``defaults`` if none."""
        for n in range(len(path), 0, -1):
            if path[:n] in self._source:
                return self._source[path[:n]]
        return "defaults"


def _key_path(parts: Any) -> str:
    return echo(".".join(str(p) for p in parts) or "<top level>", bare=True)


class ConfigParser:
    """Typed values out of a :class:`ConfigTree`; each failure is a :class:`ConfigError` naming the source and key path."""

    def __init__(self, tree: ConfigTree) -> None:
        self.tree = tree

    def fail(self, path: tuple[str, ...], message: str) -> ConfigError:
        """The error for the value at ``path`` (not raised, so that callers write ``raise parser.fail(...)``)."""
        return ConfigError(f"{self.tree.where(path)}: {_key_path(path)}: {message}")

    def mapping(self, value: Any, path: tuple[str, ...], allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping with keys {list(allowed)}, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                raise self.fail((*path, echo(key) if not isinstance(key, str) else key), f"unknown key; valid keys: {list(allowed)}")
        return value

    def choice(self, value: Any, path: tuple[str, ...], choices: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in choices:
            raise self.fail(path, f"{echo(value)} is not valid; choose one of {list(choices)}")
        return value

    def number(self, value: Any, path: tuple[str, ...], *, low: float | None = 0.0, positive: bool = False) -> float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        try:
            finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        except OverflowError:  # an integer too large for a float
            finite = False
        if not finite:
            raise self.fail(path, f"expected a finite number, got {echo(value)}")
        if positive and value <= 0:
            raise self.fail(path, f"must be > 0, got {echo(value)}")
        if low is not None and value < low:
            raise self.fail(path, f"must be >= {low}, got {echo(value)}")
        return float(value)

    def integer(self, value: Any, path: tuple[str, ...], *, low: int | None = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"expected an integer, got {echo(value)}")
        if low is not None and value < low:
            raise self.fail(path, f"must be >= {low}, got {echo(value)}")
        return value

    def boolean(self, value: Any, path: tuple[str, ...]) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {echo(value)}")
        return value

    def string(self, value: Any, path: tuple[str, ...]) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"expected a string, got {echo(value)}")
        return value

    def value(self, f: dataclasses.Field, ftype: Any, value: Any, path: tuple[str, ...]) -> Any:
        """Parse ``value`` for dataclass field ``f`` of type ``ftype`` by the rule in its :func:`hparam` metadata."""
        meta = f.metadata
        low, positive, choices = meta.get("low"), meta.get("positive", False), meta.get("choices")
        origin, args = typing.get_origin(ftype), typing.get_args(ftype)
        if origin is UnionType or origin is typing.Union:
            inner = [a for a in args if a is not NoneType]
            if value is None and len(inner) < len(args):
                return None
            return self.value(f, inner[0], value, path)
        if dataclasses.is_dataclass(ftype):
            return self.dataclass(ftype, value, path)
        if ftype is bool:
            return self.boolean(value, path)
        if ftype is int:
            return self.integer(value, path, low=None if low is None else int(low))
        if ftype is float:
            return self.number(value, path, low=low, positive=positive)
        if ftype is str:
            return self.choice(value, path, choices) if choices else self.string(value, path)
        if origin is tuple and args[0] in (int, float, str):  # str items: each checked against choices
            kind = {int: "integers", float: "numbers", str: "strings"}[args[0]]
            if not isinstance(value, (list, tuple)) or not value:
                raise self.fail(path, f"expected a non-empty list of {kind}, got {echo(value)}")
            length = meta.get("length")
            if length is not None and len(value) != length:
                raise self.fail(path, f"expected a list of {length} values, got {len(value)}")
            item = dataclasses.field(metadata=meta)
            return tuple(self.value(item, args[0], v, (*path, str(i))) for i, v in enumerate(value))
        raise TypeError(f"unsupported config field type {ftype!r} for {_key_path(path)}")  # a bug, not user input

    def fields(self, cls: type, raw: dict[str, Any], path: tuple[str, ...], *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        """Keyword arguments for ``cls`` from the keys of ``raw`` (unknown keys already rejected), fields in ``skip`` left to the caller.

        A field without a default that ``raw`` lacks is an error naming its choices.
        """
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            if f.name in raw:
                kwargs[f.name] = self.value(f, hints[f.name], raw[f.name], (*path, f.name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                choices = f.metadata.get("choices")
                raise self.fail((*path, f.name), f"missing; choose one of {list(choices)}" if choices else "missing")
        return kwargs

    def dataclass(self, cls: type, raw: Any, path: tuple[str, ...]) -> Any:
        """Build config dataclass ``cls`` from the mapping ``raw`` at ``path``: every field by its metadata.

        A ``check()`` method on ``cls``, if any, returns ``None`` or a ``(field, message)`` problem
        that no single field shows (e.g. two fields that must agree); it becomes the error.
        """
        raw = self.mapping(raw, path, field_names(cls))
        config = cls(**self.fields(cls, raw, path))
        check = getattr(config, "check", None)
        problem = check() if check is not None else None
        if problem is not None:
            key, message = problem
            raise self.fail((*path, key), message)
        return config


# --------------------------------------------------------------------------------------------
# The run config's sections that need more than one field's rule.


def _parse_graph(parser: ConfigParser, raw: Any, path: tuple[str, ...]) -> GraphConfig:
    raw = parser.mapping(raw, path, field_names(GraphConfig))
    kwargs = parser.fields(GraphConfig, raw, path, skip=("relations", "weights", "topk_by_relation"))
    if "relations" in raw:
        rels = raw["relations"]
        if not isinstance(rels, list):
            raise parser.fail((*path, "relations"), f"expected a list of relations from {list(ETYPES)}")
        seen = []
        for i, r in enumerate(rels):
            name = parser.choice(r, (*path, "relations", str(i)), ETYPES)
            if name in seen:
                raise parser.fail((*path, "relations", str(i)), f"relation {name!r} listed twice")
            seen.append(name)
        kwargs["relations"] = tuple(seen)
    if "weights" in raw:
        weights = dict(DEFAULT_WEIGHT_KIND)
        given = parser.mapping(raw["weights"], (*path, "weights"), ETYPES)
        for k, v in given.items():
            weights[k] = parser.choice(v, (*path, "weights", k), WEIGHT_KINDS)
        kwargs["weights"] = weights
    if raw.get("topk_by_relation") is not None:
        given = parser.mapping(raw["topk_by_relation"], (*path, "topk_by_relation"), ETYPES)
        relations = kwargs.get("relations", GraphConfig.relations)
        per_relation: dict[str, int | None] = {}
        for etype, k in given.items():
            kpath = (*path, "topk_by_relation", etype)
            if etype not in relations:
                raise parser.fail(kpath, f"relation {etype!r} is not in graph.relations {list(relations)}")
            per_relation[etype] = None if k is None else parser.integer(k, kpath)
        kwargs["topk_by_relation"] = per_relation
    return GraphConfig(**kwargs)


def _parse_metapath(parser: ConfigParser, raw: Any, path: tuple[str, ...], target: str, relations: tuple[str, ...]) -> MetaPath:
    raw = parser.mapping(raw, path, ("path", "beta", "beta_test"))
    if "path" not in raw:
        raise parser.fail((*path, "path"), "missing; give a list of relations, e.g. [v2p]")
    hops = raw["path"]
    if isinstance(hops, str):
        hops = [hops]
    if not isinstance(hops, list) or not hops:
        raise parser.fail((*path, "path"), f"expected a non-empty list of relations from {list(ETYPES)}")
    for i, hop in enumerate(hops):
        parser.choice(hop, (*path, "path", str(i)), ETYPES)
        if hop not in relations:
            raise parser.fail((*path, "path", str(i)), f"relation {hop!r} is not in graph.relations {list(relations)}")
    for i in range(1, len(hops)):
        if CANONICAL_ETYPES[hops[i - 1]][2] != CANONICAL_ETYPES[hops[i]][0]:
            raise parser.fail(
                (*path, "path", str(i)),
                f"hops do not chain: {hops[i - 1]} ends at {CANONICAL_ETYPES[hops[i - 1]][2]!r} but "
                f"{hops[i]} starts at {CANONICAL_ETYPES[hops[i]][0]!r}",
            )
    end = CANONICAL_ETYPES[hops[-1]][2]
    if end != target:
        raise parser.fail((*path, "path"), f"ends at {end!r} but the stage's target is {target!r}")
    if "beta" not in raw:
        raise parser.fail((*path, "beta"), "missing; give the fusion weight (a number >= 0)")
    beta = parser.number(raw["beta"], (*path, "beta"))
    beta_test = None
    if raw.get("beta_test") is not None:
        beta_test = parser.number(raw["beta_test"], (*path, "beta_test"))
    return MetaPath(relations=tuple(hops), beta=beta, beta_test=beta_test)


def _parse_stage(parser: ConfigParser, raw: Any, path: tuple[str, ...], relations: tuple[str, ...]) -> StageConfig:
    raw = parser.mapping(raw, path, field_names(StageConfig))
    kwargs = parser.fields(StageConfig, raw, path, skip=("metapaths",))
    target = kwargs["target"]
    mps = raw.get("metapaths")
    if not isinstance(mps, list) or not mps:
        raise parser.fail((*path, "metapaths"), "expected a non-empty list of {path: [...], beta: ...}")
    kwargs["metapaths"] = tuple(
        _parse_metapath(parser, m, (*path, "metapaths", str(i)), target, relations) for i, m in enumerate(mps)
    )
    if kwargs.get("mode") == "bias" and target != "vis":
        raise parser.fail((*path, "mode"), f"bias stages shift image features, so their target must be 'vis', not {target!r}")
    return StageConfig(**kwargs)


def _parse_variant(parser: ConfigParser, raw: dict[str, Any], default_name: str) -> VariantConfig:
    raw = parser.mapping(raw, (), VARIANT_KEYS)
    kwargs = parser.fields(VariantConfig, {"name": default_name, **raw}, (), skip=("graph", "stages"))
    graph = _parse_graph(parser, raw.get("graph"), ("graph",))
    stages_raw = raw.get("stages") or []
    if not isinstance(stages_raw, list):
        raise parser.fail(("stages",), "expected a list of stages")
    stages = tuple(_parse_stage(parser, s, ("stages", str(i)), graph.relations) for i, s in enumerate(stages_raw))
    classifier = kwargs.get("classifier", VariantConfig.classifier)
    if classifier != "zero_shot" and not stages:
        raise parser.fail(("stages",), f"classifier {classifier!r} needs at least one stage; use 'zero_shot' for none")
    if classifier == "text_cache" and not any(s.mode == "bias" for s in stages):
        raise parser.fail(("classifier",), "'text_cache' needs a bias stage (mode: bias, target: vis) to adapt the cache keys")
    return VariantConfig(**kwargs, graph=graph, stages=stages)


def load_variant(name_or_path: str | os.PathLike) -> VariantConfig:
    """Load and validate one meta-path variant file (a registry name or a path; ``_base_`` files merged)."""
    path = variant_path(name_or_path)
    tree = ConfigTree()
    tree.merge_file(path, shipped=_shipped_variants())
    return _parse_variant(ConfigParser(tree), tree.data, path.stem)


def load_config(
    variant: str | os.PathLike | None = None,
    *,
    config_file: str | os.PathLike | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> RunConfig:
    """Resolve a :class:`RunConfig` from a variant, an experiment file and ``key=value`` overrides.

    Args:
        variant: a name from :func:`list_variants` or a YAML path; overrides the experiment
            file's ``variant`` key. Defaults to ``full``.
        config_file: experiment YAML with sections ``train``, ``eval``, ``engine``, ``device``,
            optionally ``variant`` and any variant key (``graph``, ``stages``, ...) to override.
        overrides: ``dotted.key=value`` strings (values parsed as YAML), applied last.
    """
    layers: list[tuple[dict[str, Any], str]] = []
    if config_file is not None:
        layers = read_config_layers(config_file)
    if variant is None:
        variant = "full"
        for data, source in layers:  # the last file that names a variant wins
            if "variant" in data:
                variant = data["variant"]
                if not isinstance(variant, str):
                    raise ConfigError(f"{source}: variant: expected a variant name or path, got {echo(variant)}")
    vpath = variant_path(variant)
    tree = ConfigTree()
    tree.merge_file(vpath, shipped=_shipped_variants())
    parser = ConfigParser(tree)
    parser.mapping(tree.data, (), VARIANT_KEYS)
    skipped = ("variant", SWEEP_KEY, *RECORD_KEYS)
    for data, source in layers:
        tree.merge({k: v for k, v in data.items() if k not in skipped}, source)
    for text in overrides:
        tree.override(text)
    run_keys = tuple(k for k in field_names(RunConfig) if k != "variant")
    parser.mapping(tree.data, (), VARIANT_KEYS + run_keys)
    variant_cfg = _parse_variant(parser, {k: tree.data[k] for k in VARIANT_KEYS if k in tree.data}, vpath.stem)
    run = parser.fields(RunConfig, {k: tree.data[k] for k in run_keys if k in tree.data}, (), skip=("variant",))
    device = run.get("device", RunConfig.device)
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise parser.fail(("device",), f"{echo(device)} is not valid; choose auto, cpu, cuda or cuda:N")
    return RunConfig(variant=variant_cfg, **run)

def _grid_value(parser: ConfigParser, value: Any, path: tuple[str, ...]) -> Any:
    if isinstance(value, (dict, list)):
        raise parser.fail(path, f"grid values must be numbers, strings, booleans or null, got {echo(value)}")
    return value


def _sweep_name(parser: "ConfigParser", value: Any, path: tuple[str, ...]) -> str:
    """A sweep's name is a relative folder under ``--out``: no absolute path, no ``..``."""
    name = parser.string(value, path)
    parts = Path(name).parts
    if not name.strip() or Path(name).is_absolute() or ".." in parts:
        raise parser.fail(path, f"must be a relative folder name under --out (e.g. fewshot/dtd), got {echo(name)}")
    return name


def _parse_sweep(parser: ConfigParser, raw: Any, path: Path) -> SweepConfig:
    names = tuple(f.name for f in dataclasses.fields(SweepConfig))
    at = (SWEEP_KEY,)
    if raw is None:
        raise ConfigError(f"{path}: no '{SWEEP_KEY}' section; an experiment file needs one with keys {list(names)}")
    raw = parser.mapping(raw, at, names)
    for key in ("dataset", "features"):
        if key not in raw:
            raise parser.fail((*at, key), "missing; every sweep names its dataset and its feature cache folder")
    kwargs: dict[str, Any] = {
        "name": _sweep_name(parser, raw.get("name", f"{path.parent.name}/{path.stem}"), (*at, "name")),
        "dataset": parser.string(raw["dataset"], (*at, "dataset")),
        "features": parser.string(raw["features"], (*at, "features")),
    }
    if raw.get("backbone") is not None:
        kwargs["backbone"] = parser.string(raw["backbone"], (*at, "backbone"))
    if "methods" in raw:
        methods = raw["methods"]
        if isinstance(methods, str):
            methods = [methods]
        if not isinstance(methods, list) or not methods:
            raise parser.fail((*at, "methods"), "expected a non-empty list of method names, e.g. [hegraphadapter, tip_adapter]")
        kwargs["methods"] = tuple(parser.string(m, (*at, "methods", str(i))) for i, m in enumerate(methods))
        if len(set(kwargs["methods"])) != len(kwargs["methods"]):
            raise parser.fail((*at, "methods"), f"a method is listed twice: {list(kwargs['methods'])}")
    for key in ("shots", "seeds"):
        if key in raw:
            values = raw[key]
            if isinstance(values, int) and not isinstance(values, bool):
                values = [values]
            if not isinstance(values, list) or not values:
                raise parser.fail((*at, key), "expected a non-empty list of integers, e.g. [1, 2, 4, 8, 16]")
            kwargs[key] = tuple(parser.integer(v, (*at, key, str(i)), low=0 if key == "seeds" else 1) for i, v in enumerate(values))
    if raw.get("grid") is not None:
        grids = raw["grid"]
        if isinstance(grids, dict):
            grids = [grids]
        if not isinstance(grids, list) or not grids:
            raise parser.fail((*at, "grid"), "expected a mapping {dotted.key: [values]} or a list of such mappings")
        parsed = []
        for i, grid in enumerate(grids):
            gpath = (*at, "grid", str(i))
            if not isinstance(grid, dict) or not grid:
                raise parser.fail(gpath, "expected a non-empty mapping {dotted.key: [values]}")
            axes = {}
            for key, values in grid.items():
                if not isinstance(values, list) or not values:
                    raise parser.fail((*gpath, str(key)), f"expected a non-empty list of values, got {echo(values)}")
                axes[str(key)] = tuple(_grid_value(parser, v, (*gpath, str(key), str(j))) for j, v in enumerate(values))
            parsed.append(axes)
        kwargs["grid"] = tuple(parsed)
    if raw.get("targets") is not None:
        targets = raw["targets"]
        if not isinstance(targets, dict):
            raise parser.fail((*at, "targets"), "expected a mapping {target dataset: feature cache folder}, e.g. {imagenetv2: imagenetv2-RN50}")
        kwargs["targets"] = {str(k): parser.string(v, (*at, "targets", str(k))) for k, v in targets.items()}
    if raw.get("method_overrides") is not None:
        given = raw["method_overrides"]
        if isinstance(given, dict):  # `method: null` drops a recipe inherited from a _base_ file
            given = {k: v for k, v in given.items() if v is not None}
        allowed = kwargs.get("methods", SweepConfig.methods)
        given = parser.mapping(given, (*at, "method_overrides"), allowed)
        out = {}
        for method, sets in given.items():
            mpath = (*at, "method_overrides", str(method))
            if isinstance(sets, dict):
                sets = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}" for k, v in sets.items()]
            if not isinstance(sets, list) or not all(isinstance(x, str) and "=" in x for x in sets):
                raise parser.fail(mpath, "expected a mapping {key: value} or a list of 'key=value' strings")
            out[str(method)] = tuple(sets)
        kwargs["method_overrides"] = out
    return SweepConfig(**kwargs)


def load_experiment(path: str | os.PathLike) -> ExperimentConfig:
    """Load an experiment file (``_base_`` files merged) and validate its ``sweep`` section.

    The run-config part (``train``, ``eval``, ``graph``, ...) is resolved per method when the
    sweep expands (:func:`hgadapter.sweep.expand_experiment`), since each HeGraphAdapter variant
    merges it over its own meta-path file.
    """
    path = Path(path)
    tree = ConfigTree()
    tree.merge_file(path)
    sweep = _parse_sweep(ConfigParser(tree), tree.data.get(SWEEP_KEY), path)
    return ExperimentConfig(path=path, sweep=sweep)


def to_plain(obj: Any) -> Any:
    """A config dataclass (or anything inside one) as plain YAML/JSON types; meta-paths as their YAML form."""
    if isinstance(obj, MetaPath):
        out: dict[str, Any] = {"path": list(obj.relations), "beta": obj.beta}
        if obj.beta_test is not None:
            out["beta_test"] = obj.beta_test
        return out
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """A plain, YAML-serialisable view of a resolved config (the form runs write to config.yaml)."""
    data = to_plain(cfg)
    variant = data.pop("variant")
    return {**variant, **data}
