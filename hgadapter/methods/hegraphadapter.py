"""HeGraphAdapter and its meta-path variants as comparable methods (paper Sec. 3, 4.1).

``hegraphadapter`` is the ``full`` variant (paper Table 2, last row); ``hegraphadapter:<v>`` is
variant ``v`` of :func:`hgadapter.config.list_variants` (``metapaths/<v>.yaml``). The config is
the :class:`~hgadapter.config.RunConfig` that :func:`hgadapter.config.load_config` resolves from
the variant, ``experiments/methods/hegraphadapter.yaml`` (the paper's training defaults; a
``config_file`` given to :func:`~hgadapter.methods.create_method` replaces it) and the
overrides (dotted, ``train.lr=0.01``).

A fit builds the heterograph on the selection data, trains the variant's stages with
:func:`hgadapter.train.train_loop` and chooses alpha/beta on validation
(:func:`hgadapter.evaluate.select_predictor`). Training (Sec. 3.2, 4.1): loss (Eq. 9)
``CE(text logits) + lambda * CE(cache logits)``; AdamW; a linear warmup of ``warmup_epochs``
starting at ``warmup_lr``, then cosine decay to 0, updated every step
(:func:`hgadapter.train.warmup_cosine`); the per-epoch validation accuracy is the text
classifier's. Unlike the baselines the fit keeps the process's intra-op threads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from hgadapter.adapter import HeteroGraphAdapter, cache_logits, shifted_cache_affinity, text_logits
from hgadapter.config import RunConfig, config_to_dict, list_variants, load_config
from hgadapter.engines import Propagator, create_engine, resolve_engine
from hgadapter.evaluate import cache_keys, select_predictor
from hgadapter.graph import build_node_features, build_relation_graph_from_config
from hgadapter.methods._registry import Method, method_config_path, register_method
from hgadapter.protocol import FitContext, Fitted, SelectionData
from hgadapter.train import TrainResult, train_loop, warmup_cosine

__all__ = ["HeGraphAdapter", "train_adapter"]

METHOD = "hegraphadapter"
DEFAULT_VARIANT = "full"


@register_method(METHOD, variants=list_variants, default_variant=DEFAULT_VARIANT)
class HeGraphAdapter(Method):
    """A HeGraphAdapter variant: heterograph, trained stage projections, alpha/beta chosen on validation.

    ``Fitted.record`` adds ``variant``, ``classifier``, ``engine``, ``alpha`` and ``beta`` to the
    run's record; ``Fitted.tensors`` holds ``nodes`` (initial node features ``initial.<ntype>``,
    adapted ones at test-time betas ``adapted.<ntype>``, and ``vis_bias``; for t-SNE figures
    without re-training) and ``adapter`` (the trained weights).
    """

    config_cls = RunConfig
    threads = None  # all of the process's threads: the message passing is worth them
    reads_experiment_file = True  # its RunConfig is the experiment file's train / eval / graph / stages

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

    @classmethod
    def from_config(cls, name: str, config: RunConfig) -> "HeGraphAdapter":
        variant = config.variant.name
        return cls(name=name if variant == DEFAULT_VARIANT else f"{name}:{variant}", config=config)

    def config_dict(self) -> dict:
        return config_to_dict(self.config)

    def default_device(self) -> str:
        return self.config.device

    def _fit(self, data: SelectionData, ctx: FitContext) -> Fitted:
        cfg, variant, device = self.config, self.config.variant, ctx.device
        feat_dict = build_node_features(pos_text=data.pos_text, neg_text=data.neg_text, train_set=data.train_set)
        feat_dict = {k: v.to(device) for k, v in feat_dict.items()}
        graph = None
        engine = "none"
        if variant.stages:
            engine = resolve_engine(cfg.engine)
            relation_graph = build_relation_graph_from_config(feat_dict, variant.graph)
            graph = create_engine(engine, relation_graph, device=device)
            ctx.note(f"graph: {', '.join(f'{e}={relation_graph.num_edges(e)}' for e in relation_graph.etypes)} edges; engine {engine}")
        ctx.note(f"variant {variant.name} classifier {variant.classifier} device {device}")

        adapter, result = None, TrainResult()
        text, vis_bias = feat_dict["pos"], None
        if variant.classifier != "zero_shot":
            adapter, result = train_adapter(cfg, graph, feat_dict, data, ctx)
            with torch.no_grad():  # the test-time forward (test-time betas), once: selection and the saved nodes share it
                out = adapter(graph, feat_dict, training=False)
            text, vis_bias = out.feat_dict["pos"], out.vis_bias

        start = time.perf_counter()
        selection = select_predictor(
            text, vis_bias, cfg.eval, with_cache=variant.classifier == "text_cache", data=data, device=device
        )
        select_seconds = time.perf_counter() - start
        ctx.note(f"val_acc {selection.val_acc:.2f} alpha {selection.alpha} beta {selection.beta}")
        if selection.extended:
            ctx.note(f"optimum on the grid's edge: extended it by {selection.extended}")

        nodes = {f"initial.{k}": v for k, v in feat_dict.items()}
        tensors = {"nodes": nodes}
        if adapter is not None:
            for stage in variant.stages:
                if stage.mode == "residual":
                    nodes[f"adapted.{stage.target}"] = out.feat_dict[stage.target]
            if out.vis_bias is not None:
                nodes["vis_bias"] = out.vis_bias
            tensors["adapter"] = adapter.state_dict()

        return Fitted(
            head=selection.head,
            val_acc=selection.val_acc,
            hparams={"alpha": selection.alpha, "beta": selection.beta, **({"grid_extended": selection.extended} if selection.extended else {})},
            epochs=cfg.train.epochs if adapter is not None else 0,
            history=result.history,
            train_seconds=result.seconds,
            select_seconds=select_seconds,
            trainable_params=result.trainable_params,
            record={
                "variant": variant.name,
                "classifier": variant.classifier,
                "engine": engine,
                "alpha": selection.alpha,  # the cache classifier's pair (None without a cache)
                "beta": selection.beta,
            },
            tensors=tensors,
        )


def train_adapter(
    cfg: RunConfig, graph: Propagator | None, feat_dict: dict[str, torch.Tensor], data: SelectionData, ctx: FitContext
) -> tuple[HeteroGraphAdapter, TrainResult]:
    """Train ``cfg.variant``'s stage projections on Eq. 9 with the one training loop.

    Args:
        cfg: the variant and the ``train`` settings.
        graph: the prepared heterograph (``None`` for a variant without stages).
        feat_dict: initial node features ``ntype -> (C, d)`` on ``ctx.device``.
        data: the few-shot set and the validation split (per-epoch text-classifier accuracy).
        ctx: seed (parameter init and view/batch draws), device, progress bar, log.

    Returns:
        The trained adapter (in eval mode) and what the loop did.
    """
    variant, tcfg = cfg.variant, cfg.train
    torch.manual_seed(ctx.seed)  # parameter init (random inits); the loop seeds its own view/batch draws
    adapter = HeteroGraphAdapter.from_config(
        variant,
        dim=feat_dict["pos"].shape[1],
        init=tcfg.init,
        learn_betas=tcfg.learn_betas,
        num_classes=feat_dict["pos"].shape[0],
        classwise_bias=tcfg.classwise_bias,
    )
    adapter = adapter.to(ctx.device)
    scale, num_classes = data.logit_scale, feat_dict["pos"].shape[0]
    labels = data.train_set.labels.to(ctx.device)  # (N,)
    keys = cache_keys(data.train_set, device=ctx.device)  # (N, d): cache keys before the visual bias
    use_cache = variant.classifier == "text_cache"

    def loss_fn(query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out = adapter(graph, feat_dict, training=True)
        loss = F.cross_entropy(text_logits(query, out.feat_dict["pos"], scale), target)
        if use_cache:
            affinity = shifted_cache_affinity(query, keys, labels, out.vis_bias)  # (B, N)
            logits = cache_logits(affinity, labels, tcfg.cache_beta, num_classes=num_classes)
            loss = loss + tcfg.cache_loss_weight * F.cross_entropy(logits, target)
        return loss

    def val_logits(x: torch.Tensor) -> torch.Tensor:  # the text classifier at test-time betas
        return text_logits(x, adapter(graph, feat_dict, training=False).feat_dict["pos"], scale)

    optimizer = torch.optim.AdamW(adapter.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    schedule = warmup_cosine(epochs=tcfg.epochs, warmup_epochs=tcfg.warmup_epochs, lr=tcfg.lr, warmup_lr=tcfg.warmup_lr)
    result = train_loop(
        adapter, optimizer, schedule, data, ctx,
        logits_fn=val_logits, loss_fn=loss_fn, epochs=tcfg.epochs, batch_size=tcfg.batch_size, checkpoint=tcfg.checkpoint,
        desc=f"train {variant.name}",
    )
    return adapter, result
