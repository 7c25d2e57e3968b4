"""HeGraphAdapter end to end on selection data: graph, training, alpha/beta selection.

This is the ``hegraphadapter`` method of the comparison protocol (:mod:`hgadapter.protocol`):
it sees the training set and the validation split, never the test split.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from hgadapter.config import RunConfig
from hgadapter.engines import create_engine, resolve_engine
from hgadapter.evaluate import select_predictor
from hgadapter.graph import build_node_features, build_relation_graph_from_config
from hgadapter.protocol import Fitted, SelectionData
from hgadapter.train import fit

__all__ = ["resolve_device", "fit_hegraphadapter"]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first CUDA device if present, else CPU; a clear error for missing CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here; use device=cpu or auto")
    return device


def fit_hegraphadapter(
    cfg: RunConfig,
    data: SelectionData,
    *,
    seed: int,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Fitted:
    """Build the heterograph, train the variant's stages and choose alpha/beta on validation.

    ``Fitted.artifacts`` holds ``engine``, ``feat_dict`` (initial node features), ``adapted``
    (node features after the adapter at test-time betas, plus ``vis_bias``), ``adapter`` and
    ``trainable_params``.
    """
    log = log or (lambda message: None)
    device = resolve_device(cfg.device)
    variant = cfg.variant
    start = time.perf_counter()
    feat_dict = build_node_features(pos_text=data.pos_text, neg_text=data.neg_text, train_set=data.train_set)
    feat_dict = {k: v.to(device) for k, v in feat_dict.items()}
    graph = None
    engine = "none"
    if variant.stages:
        engine = resolve_engine(cfg.engine)
        g = variant.graph
        relation_graph = build_relation_graph_from_config(feat_dict, g)
        graph = create_engine(engine, relation_graph, device=device)
        log(f"graph: {', '.join(f'{e}={relation_graph.num_edges(e)}' for e in relation_graph.etypes)} edges; engine {engine}")
    log(f"variant {variant.name} classifier {variant.classifier} device {device}")
    result = fit(
        cfg,
        graph=graph,
        feat_dict=feat_dict,
        train_set=data.train_set,
        val_features=data.val_features,
        val_labels=data.val_labels,
        logit_scale=data.logit_scale,
        seed=seed,
        device=device,
        progress=progress,
        log=log,
    )
    selection = select_predictor(
        variant, cfg.eval, adapter=result.adapter, graph=graph, feat_dict=feat_dict, data=data, device=device
    )
    adapted: dict[str, torch.Tensor] = {}
    if result.adapter is not None:
        with torch.no_grad():
            out = result.adapter(graph, feat_dict, training=False)
        for stage in variant.stages:
            if stage.mode == "residual":
                adapted[stage.target] = out.feat_dict[stage.target]
        if out.vis_bias is not None:
            adapted["vis_bias"] = out.vis_bias
    log(f"val_acc {selection.val_acc:.2f} alpha {selection.alpha} beta {selection.beta}")

    def predict(x: torch.Tensor) -> torch.Tensor:
        return selection.predict(x.to(device))

    return Fitted(
        predict=predict,
        val_acc=selection.val_acc,
        hparams={"alpha": selection.alpha, "beta": selection.beta},
        train_seconds=result.train_seconds if result.adapter is not None else time.perf_counter() - start,
        epochs=result.epochs,
        history=result.history,
        artifacts={
            "engine": engine,
            "feat_dict": feat_dict,
            "adapted": adapted,
            "adapter": result.adapter,
            "device": device,
            "trainable_params": 0 if result.adapter is None else sum(p.numel() for p in result.adapter.parameters() if p.requires_grad),
        },
    )
