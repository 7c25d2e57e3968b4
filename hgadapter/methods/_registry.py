"""The method registry: every comparable method is looked up by name and configured in YAML.

A method is a :class:`Method`: a registry name, a frozen config dataclass and
``fit(data, *, seed, device, progress, log) -> Fitted`` on
:class:`~hgadapter.protocol.SelectionData` (the few-shot training set and the validation split;
never the test split). Every method, HeGraphAdapter included, is fitted through
:meth:`Method.fit`, which applies the device and thread policy and times the fit; a method
implements only :meth:`Method._fit`.

Config precedence, lowest first: the config dataclass's defaults (the source paper's values) <
``experiments/methods/<name>.yaml`` < ``config_file`` < ``overrides`` (``key=value``). Unknown
keys, wrong types and impossible values raise :class:`~hgadapter.config.ConfigError` naming the
file (or ``--set key``), the key and the valid choices. Files are read, merged (``_base_``
included) and parsed by :mod:`hgadapter.config`'s public mechanism (:class:`~hgadapter.config.ConfigTree`,
:class:`~hgadapter.config.ConfigParser`, :func:`~hgadapter.config.hparam`), so this module
never parses YAML itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from hgadapter._resources import resource_path
from hgadapter.config import RECORD_KEYS, SWEEP_KEY, ConfigError, ConfigParser, ConfigTree, echo, field_names, hparam, parse_override, to_plain
from hgadapter.device import intra_op_threads, resolve_device
from hgadapter.errors import UserError
from hgadapter.protocol import FitContext, Fitted, SelectionData

__all__ = [
    "Method",
    "UnmetNeedError",
    "hparam",  # hgadapter.config's, re-exported: methods/*.py declare their config fields with it
    "register_method",
    "list_methods",
    "create_method",
    "method_class",
    "method_from_config",
    "methods_dir",
    "method_config_path",
    "load_method_config",
]


def methods_dir() -> Path:
    """Directory of the method configs (``$HGADAPTER_METHODS`` or ``<repo>/experiments/methods``)."""
    return resource_path("experiments/methods", "HGADAPTER_METHODS")


def method_config_path(name: str) -> Path:
    """The shipped YAML of method ``name`` (it may not exist for an installed wheel)."""
    return methods_dir() / f"{name}.yaml"


# --------------------------------------------------------------------------------------------
# Config resolution: fields are declared with hgadapter.config's `hparam` and parsed by its
# ConfigParser, by the same rules as the run config's sections.


def load_method_config(
    cls: type,
    name: str,
    *,
    config_file: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
) -> Any:
    """Resolve method ``name``'s config dataclass ``cls`` from its YAML, a file and overrides.

    Both files may name ``_base_`` files; sections that a run or an experiment file adds
    (``sweep``, ``run``, ``environment``) are skipped in ``config_file``, so a recorded
    ``config.yaml`` loads back.

    Raises:
        ConfigError: an unreadable file, an unknown key, a wrong type or an impossible value.
    """
    tree = ConfigTree()
    shipped = method_config_path(name)
    if shipped.is_file():
        tree.merge_file(shipped)
    if config_file is not None:
        tree.merge_file(config_file, skip=(SWEEP_KEY, *RECORD_KEYS))
    for text in overrides:
        key, _ = parse_override(text)
        if "." in key:
            raise ConfigError(f"--set {echo(key, bare=True)}: method {name!r} has a flat config; valid keys: {field_names(cls)}")
        tree.override(text)
    return ConfigParser(tree).dataclass(cls, tree.data, ())


# --------------------------------------------------------------------------------------------
# Methods


class UnmetNeedError(UserError):
    """A method needs something the cache does not have (the CLIP encoder of a synthetic cache)."""



class Method:
    """A comparable few-shot method with its hyper-parameters resolved.

    Subclasses set ``config_cls`` (a frozen dataclass whose defaults are the source's values)
    and implement :meth:`_fit`. Instances come from :func:`create_method` (or
    :func:`method_from_config`).

    Attributes:
        name: the registry name.
        config: the resolved config (a frozen dataclass).
        threads: intra-op threads while fitting on CPU; ``None`` keeps the process's setting.
            The baselines' steps are small products over a batch or the C*K training rows, where
            extra threads mostly add synchronisation, so they run on one (docs/baselines.md has
            the measurement); one thread also fixes the order of float reductions, so a seed
            gives the same fit whatever the machine's core count.
    """

    config_cls: ClassVar[type | None] = None
    threads: ClassVar[int | None] = 1
    # Whether the method's config is a run config read from an experiment file (its train / eval
    # / graph sections, as HeGraphAdapter's is); other methods read their shipped method config.
    reads_experiment_file: ClassVar[bool] = False
    # Whether the method runs the frozen CLIP encoder recorded in the cache at fit time (CoOp's
    # prompts go through the text encoder); such a method cannot fit on a synthetic cache.
    needs_encoder: ClassVar[bool] = False

    def __init__(self, *, name: str, config: Any) -> None:
        self.name = name
        self.config = config

    @classmethod
    def create(
        cls,
        name: str,
        *,
        variant: str | None,
        config_file: str | os.PathLike | None,
        overrides: Sequence[str],
    ) -> "Method":
        """Build the method from its YAML (registry hook; ``variant`` is for method families)."""
        if cls.config_cls is None:  # pragma: no cover - a registration bug
            raise TypeError(f"{cls.__name__} sets no config_cls")
        return cls(name=name, config=load_method_config(cls.config_cls, name, config_file=config_file, overrides=overrides))

    @classmethod
    def from_config(cls, name: str, config: Any) -> "Method":
        """The method registered as ``name`` with an already resolved ``config`` (a family names its variant)."""
        return cls(name=name, config=config)

    def config_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON/YAML types (recorded beside every result)."""
        return to_plain(self.config)

    def unmet_need(self, meta: Mapping[str, Any]) -> str | None:
        """Why this method cannot fit on a cache whose sidecar is ``meta`` (one line), or ``None``.

        ``hgadapter compare`` skips such a method with this line; :meth:`fit` raises it as an
        :class:`UnmetNeedError`.
        """
        if not self.needs_encoder:
            return None
        meta = meta if isinstance(meta, Mapping) else {}
        encoder = meta.get("encoder")
        model_id = encoder.get("id") if isinstance(encoder, Mapping) else None
        if meta.get("synthetic", False):
            return (
                f"{self.name} runs the cache's CLIP encoder at fit time, and this cache is synthetic (no encoder made its "
                "features); extract a cache from images (`hgadapter extract`)"
            )
        if not isinstance(model_id, str) or not model_id:
            return (
                f"{self.name} runs the cache's CLIP encoder at fit time, and this cache records none (meta['encoder']['id'] "
                "and its revision); extract the cache with `hgadapter extract`, which records them"
            )
        return None

    def default_device(self) -> str:
        """The device :meth:`fit` uses when given none (``auto``: CUDA if present)."""
        return "auto"

    def fit(
        self,
        data: SelectionData,
        *,
        seed: int,
        device: torch.device | str | None = None,
        progress: bool = False,
        log: Callable[[str], None] | None = None,
        tracker: Any = None,
    ) -> Fitted:
        """Train on ``data.train_set`` and choose hyper-parameters on ``data``'s validation split.

        Resolves the device, runs :meth:`_fit` on :attr:`threads` intra-op threads (on CPU) and
        records ``device``, ``threads`` and ``fit_seconds`` in the result.

        Args:
            data: the selection-time view of a cache (no test split).
            seed: seeds parameter initialisation and view/batch sampling.
            device: ``None`` (:meth:`default_device`), ``auto`` (CUDA if present), ``cpu``,
                ``cuda``, ``cuda:N``.
            progress: show a progress bar while training.
            log: receives progress lines for the run's ``log.txt``.
            tracker: a :class:`hgadapter.tracking.RunTracker` the training loop sends each epoch to.
        """
        reason = self.unmet_need(data.meta)
        if reason is not None:
            raise UnmetNeedError(reason)
        dev = resolve_device(self.default_device() if device is None else device)
        start = time.perf_counter()
        with intra_op_threads(self.threads if dev.type == "cpu" else None) as threads:
            fitted = self._fit(data, FitContext(seed=seed, device=dev, progress=progress, log=log, tracker=tracker))
        fitted.fit_seconds = time.perf_counter() - start
        fitted.threads, fitted.device = threads, dev
        return fitted

    def _fit(self, data: SelectionData, ctx: FitContext) -> Fitted:
        """What the method does (see :meth:`fit`): ``ctx.device`` is resolved, the thread count set."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, config={self.config!r})"


# name -> (method class, lister of variants or None). Insertion order is list_methods()'s order.
_REGISTRY: dict[str, tuple[type[Method], Callable[[], Iterable[str]] | None, str | None]] = {}
VARIANT_SEPARATOR = ":"


def register_method(
    name: str,
    *,
    variants: Callable[[], Iterable[str]] | None = None,
    default_variant: str | None = None,
) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a :class:`Method` subclass available as ``name``.

    Args:
        name: the registry name.
        variants: for a method family, a callable listing its variants; each variant ``v`` is
            registered as ``name:v`` (``name`` alone is ``default_variant``).
        default_variant: the variant that ``name`` stands for (listed as ``name`` only).
    """
    if VARIANT_SEPARATOR in name:
        raise ValueError(f"method name {name!r} may not contain {VARIANT_SEPARATOR!r}")

    def decorator(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name][0] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name][0].__name__}")
        _REGISTRY[name] = (cls, variants, default_variant)
        return cls

    return decorator


def list_methods() -> list[str]:
    """Registered method names, in registration order; a family lists ``name`` then ``name:variant``."""
    names: list[str] = []
    for name, (_, variants, default_variant) in _REGISTRY.items():
        names.append(name)
        if variants is not None:
            names.extend(f"{name}{VARIANT_SEPARATOR}{v}" for v in sorted(variants()) if v != default_variant)
    return names


def create_method(
    name: str,
    *,
    config_file: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
) -> Method:
    """Look up ``name`` and resolve its config.

    Args:
        name: one of :func:`list_methods`.
        config_file: a YAML file overriding the method's shipped config.
        overrides: ``key=value`` strings (values parsed as YAML), applied last.

    Raises:
        ConfigError: an unknown name ("unknown method 'x'; available: [...]") or a bad config.
    """
    if not isinstance(name, str):
        raise ConfigError(f"method name must be a string, got {name!r}")
    base, sep, variant = name.partition(VARIANT_SEPARATOR)
    entry = _REGISTRY.get(base)
    if entry is None or (sep and entry[1] is None):
        raise ConfigError(f"unknown method {name!r}; available: {list_methods()}")
    cls, variants, default_variant = entry
    if variants is not None:
        if not sep:
            variant = default_variant
        elif variant not in set(variants()):
            raise ConfigError(f"unknown method {name!r}; available: {list_methods()}")
        if variant == default_variant:
            name = base
    else:
        variant = None
    return cls.create(name, variant=variant, config_file=config_file, overrides=tuple(overrides))


def method_class(name: str) -> type[Method]:
    """The :class:`Method` subclass registered as ``name`` (or the family of ``name``'s variant).

    Raises:
        ConfigError: an unknown name ("unknown method 'x'; available: [...]").
    """
    entry = _REGISTRY.get(str(name).partition(VARIANT_SEPARATOR)[0])
    if entry is None:
        raise ConfigError(f"unknown method {name!r}; available: {list_methods()}")
    return entry[0]


def method_from_config(config: Any) -> Method:
    """The registered method that ``config`` configures (an instance of its ``config_cls``).

    For code that resolved a config itself (e.g. :func:`hgadapter.config.load_config`'s
    ``RunConfig``); the method then runs the same path as one from :func:`create_method`.

    Raises:
        ConfigError: no registered method takes this kind of config.
    """
    for name, (cls, _, _) in _REGISTRY.items():
        if cls.config_cls is not None and type(config) is cls.config_cls:
            return cls.from_config(name, config)
    kinds = sorted({cls.config_cls.__name__ for cls, _, _ in _REGISTRY.values() if cls.config_cls is not None})
    raise ConfigError(f"no registered method takes a {type(config).__name__}; method configs: {kinds}")
