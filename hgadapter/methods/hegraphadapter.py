"""HeGraphAdapter and its meta-path variants as comparable methods.

``hegraphadapter`` is the ``full`` variant (paper Table 2, last row); ``hegraphadapter:<v>`` is
variant ``v`` of :func:`hgadapter.config.list_variants` (``metapaths/<v>.yaml``). The config is
the :class:`~hgadapter.config.RunConfig` that :func:`hgadapter.config.load_config` resolves from
the variant, ``experiments/methods/hegraphadapter.yaml`` (the paper's training defaults; a
``config_file`` given to :func:`~hgadapter.methods.create_method` replaces it) and the
overrides (dotted, ``train.lr=0.01``). Fitting is :func:`hgadapter.method.fit_hegraphadapter`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import torch

from hgadapter.methods._registry import Method, method_config_path, register_method
from hgadapter.config import RunConfig, config_to_dict, list_variants, load_config
from hgadapter.method import fit_hegraphadapter
from hgadapter.protocol import Fitted, SelectionData

__all__ = ["HeGraphAdapter"]

METHOD = "hegraphadapter"
DEFAULT_VARIANT = "full"


@register_method(METHOD, variants=list_variants, default_variant=DEFAULT_VARIANT)
class HeGraphAdapter(Method):
    """A HeGraphAdapter variant trained and selected by :func:`hgadapter.method.fit_hegraphadapter`."""

    def __init__(self, *, name: str, config: RunConfig) -> None:
        super().__init__(name=name, config=config)

    @classmethod
    def create(
        cls,
        name: str,
        *,
        variant: str | None,
        config_file: str | os.PathLike | None,
        overrides: Sequence[str],
    ) -> "HeGraphAdapter":
        if config_file is None:
            shipped = method_config_path(METHOD)
            config_file = shipped if shipped.is_file() else None
        config = load_config(variant or DEFAULT_VARIANT, config_file=config_file, overrides=list(overrides))
        return cls(name=name, config=config)

    def config_dict(self) -> dict:
        return config_to_dict(self.config)

    def fit(self, data: SelectionData, *, seed: int, device: torch.device | str | None = None, progress: bool = False) -> Fitted:
        cfg = self.config if device is None else dataclasses.replace(self.config, device=str(device))
        return fit_hegraphadapter(cfg, data, seed=seed, progress=progress)
