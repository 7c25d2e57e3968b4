"""One training epoch of the ``full`` variant per message-passing engine, against its GEMM bound.

For every configuration (classes C, shots K, feature dim d, dense or top-k graph, engine) this
script measures, in a fresh subprocess:

- ``epoch_s``: one epoch of :func:`hgadapter.methods.hegraphadapter.train_adapter` (the library's training loop, called
  unchanged): ceil(C*K / 256) steps, each a full adapter forward over the heterograph (the
  hierarchical message passing runs at every step; the edge weights are static, and the adapter
  memoises the meta-paths whose inputs are frozen, see :func:`gemm_products`), the text CE on
  256 query views, the cache CE against all C*K shifted keys, backward and an AdamW step, plus
  the one validation forward ``fit`` runs per epoch (1 image per class here). Features are
  random and in memory; no files are read.
- ``gemm_bound_s``: the matrix products that epoch cannot avoid (see :func:`gemm_products`;
  ``--products`` prints them), run back to back as plain ``torch.mm`` calls on preallocated
  random tensors. One bound step runs between every two training steps, outside their time, so
  the epoch and its bound are interleaved and share whatever load the machine is under: on a
  shared machine their ratio is far steadier than either number.
- ``peak_rss_mb``: the subprocess's peak resident set size (imports included) after one
  warm-up step of ``fit``, before the bound allocates its operands. Every step allocates the
  same tensors, so this is the epoch's peak.

Training steps are delimited with torch's global hooks (a step starts at the first module
forward with autograd enabled and ends when the optimizer steps), so nothing in the library is
patched. Where the dgl engine runs on a dense graph with C >= ``--sample-from-classes`` (1000 by
default; DGL's CPU SpMM then takes many minutes per epoch), only ``--sample-steps`` steps after
the first are timed: epoch = first step + (steps - 1) x their mean, and the bound likewise;
such records carry ``"extrapolated": true`` and a ``*`` in the table.

Prints a markdown table, writes it to ``--md`` (``runs/bench/engines.md``) and, with ``--out``,
the records as a JSON list.

    python experiments/bench_engines.py --out runs/bench/engines.json     # full set, ~7 min on 2 idle cores
    python experiments/bench_engines.py --quick                           # C = 100 only, ~1 min
    python experiments/bench_engines.py --classes 1000 --dims 1024 --engines torch
    python experiments/bench_engines.py --products --classes 1000 --dims 1024   # list the GEMMs
    python experiments/bench_engines.py --propagation --out runs/bench/propagation.json  # hops only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_post_hook

from hgadapter.config import RunConfig, VariantConfig, load_config
from hgadapter.engines import create_engine
from hgadapter.data.cache import FeatureCache, FewShotSet
from hgadapter.graph import build_node_features, build_relation_graph, build_relation_graph_from_config
from hgadapter.metapaths import CANONICAL_ETYPES
from hgadapter.methods.hegraphadapter import train_adapter
from hgadapter.protocol import FitContext, selection_data

VARIANT = "full"
SEED = 1


@dataclass(frozen=True)
class BenchConfig:
    """One measured configuration."""

    classes: int  # C: classes, i.e. nodes per node type
    shots: int  # K: training images per class
    dim: int  # d: feature dimension
    graph: str  # "dense" (all C sources per destination) or "topK" (each destination's K best)
    engine: str  # "torch" | "dgl"
    views: int = 10  # augmented views cached per image (hgadapter extract's default)
    sample_steps: int = 0  # 0: time the whole epoch; n > 0: time n steps after the first, extrapolate

    @property
    def topk(self) -> int | None:
        return None if self.graph == "dense" else int(self.graph[3:])


# --------------------------------------------------------------------------------------------
# Inputs: a random feature cache and the run config.


def build_random_cache(*, classes: int, shots: int, dim: int, views: int, seed: int = 0) -> FeatureCache:
    """Random L2-normalised features: 2 prompts per text node, ``views`` views per training image
    (K consecutive images per class, as few-shot sets are stored), 1 validation and 1 test image
    per class. Timing does not depend on the values."""
    g = torch.Generator().manual_seed(seed)

    def unit(*shape: int) -> torch.Tensor:
        return F.normalize(torch.randn(*shape, generator=g), dim=-1)

    labels = torch.arange(classes).repeat_interleave(shots)  # (N,)
    one_per_class = torch.arange(classes)  # (C,)
    train = FewShotSet(shots=shots, seed=SEED, features=unit(classes * shots, views, dim), labels=labels)
    return FeatureCache(
        classnames=[f"class{i}" for i in range(classes)],
        pos_text=unit(classes, 2, dim),
        neg_text=unit(classes, 2, dim),
        val_features=unit(classes, dim),
        val_labels=one_per_class,
        test_features=unit(classes, dim),
        test_labels=one_per_class,
        train_sets={(shots, SEED): train},
        meta={"dataset": {"name": "bench-random"}, "synthetic": True},
    )


def build_run_config(cfg: BenchConfig) -> RunConfig:
    topk = "null" if cfg.topk is None else str(cfg.topk)
    return load_config(VARIANT, overrides=["train.epochs=1", f"engine={cfg.engine}", f"graph.topk={topk}", "device=cpu"])


# --------------------------------------------------------------------------------------------
# The GEMM bound.


@dataclass(frozen=True)
class Product:
    """One matrix product ``(m x k) @ (k x n)`` of a training epoch."""

    name: str  # what it computes
    phase: str  # "forward" | "backward"
    per: str  # "step": at every training step | "run": once per run (memoised by the adapter)
    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def gemm_products(
    variant: VariantConfig, *, classes: int, images: int, batch: int, dim: int, topk: int | None
) -> list[Product]:
    """The matrix products an epoch of ``variant`` cannot avoid, in the adapter's formulation.

    The adapter propagates each meta-path on unprojected features and projects once
    (``hop(xW, hW) = hop(x, h) W``), and memoises a path whose inputs (the source type and, with
    gcn norm, each hop's destination type) are all frozen initial features; a type is renewed
    (weight-dependent) once a residual stage has updated it. Hence, with C classes, B = batch,
    N = C*K images, d = dim, and W_s the stage's d x d projection:

    Forward:
      - per hop of a path, one propagation ``(C x C) @ (C x d)`` on a dense relation; a top-k
        relation's sparse product does C*k*d multiply-adds, counted as ``(C x k) @ (k x d)``.
        Paths over frozen inputs are propagated once per run (``per="run"``), the others at
        every step;
      - per path, the projection of its aggregate ``(C x d) @ (d x d)``;
      - text logits ``(B x d) @ (d x C)``;
      - with the cache classifier: the frozen query-key affinity ``(B x d) @ (d x N)``, the
        query-bias term ``(B x d) @ (d x C)`` and the key-bias dots (a ``(C)``-batched
        ``(K x d) @ (d x 1)``, counted as ``(N x d) @ (d x 1)``). The cache logits themselves
        are a per-class scatter-sum, not a product.

    Backward, only what the projections' gradients need:
      - per path, ``dW = A^T dY`` ``(d x C) @ (C x d)``; where the aggregate depends on weights,
        also ``dA = dY W`` ``(C x d) @ (d x d)`` and, per hop whose input depends on weights,
        the propagation's transpose (same shape as its forward);
      - text logits: the gradient w.r.t. the class text features ``(C x B) @ (B x d)`` (queries
        are frozen);
      - cache: the gradients w.r.t. the visual bias through the query-bias term
        ``(C x B) @ (B x d)`` and through the key-bias dots ``(d x N) @ (N x 1)``; the
        query-key affinity involves only frozen tensors and has no backward.
    Elementwise work (normalisation, tanh, exp, scatter-sums, softmax, AdamW) is not counted.
    """
    products: list[Product] = []
    renewed: set[str] = set()  # node types whose current features depend on trainable weights
    k_eff = classes if topk is None else min(topk, classes)
    kind = "dense" if topk is None else f"top-{k_eff} as matmul"
    for s, stage in enumerate(variant.stages):
        where = f"stage {s} ({stage.target})"
        for mp in stage.metapaths:
            used = [mp.src_ntype] + ([CANONICAL_ETYPES[e][2] for e in mp.relations] if stage.norm == "gcn" else [])
            per = "step" if any(t in renewed for t in used) else "run"
            depends = mp.src_ntype in renewed  # does the hop's input depend on weights?
            for etype in mp.relations:
                products.append(Product(f"{where}: propagate {etype} ({kind})", "forward", per, classes, k_eff, dim))
                if depends:
                    products.append(Product(f"{where}: d input of {etype} ({kind})", "backward", "step", classes, k_eff, dim))
                depends = depends or (stage.norm == "gcn" and CANONICAL_ETYPES[etype][2] in renewed)
            products.append(Product(f"{where}: project {mp.name} aggregate", "forward", "step", classes, dim, dim))
            products.append(Product(f"{where}: dW from {mp.name}", "backward", "step", dim, classes, dim))
            if depends:
                products.append(Product(f"{where}: d aggregate of {mp.name}", "backward", "step", classes, dim, dim))
        if stage.mode == "residual":
            renewed.add(stage.target)
    products.append(Product("text logits", "forward", "step", batch, dim, classes))
    if "pos" in renewed:
        products.append(Product("text logits: d text features", "backward", "step", classes, batch, dim))
    if variant.classifier == "text_cache":
        products.append(Product("cache: query-key affinity (frozen)", "forward", "step", batch, dim, images))
        if any(stage.mode == "bias" for stage in variant.stages):
            products.append(Product("cache: query-bias", "forward", "step", batch, dim, classes))
            products.append(Product("cache: key-bias dots", "forward", "step", images, dim, 1))
            products.append(Product("cache: d bias via query-bias", "backward", "step", classes, batch, dim))
            products.append(Product("cache: d bias via key-bias dots", "backward", "step", dim, images, 1))
    order = {"forward": 0, "backward": 1}
    return sorted(products, key=lambda p: order[p.phase])


class GemmBound:
    """The bound's products as ``torch.mm(a, b, out=c)`` on preallocated random operands.

    Operands are views into three shared buffers sized for the largest product, so the bound
    adds little memory to the process it runs in. :meth:`step` runs the per-step products once
    (and, on its first call, the per-run ones) and adds the wall time to :attr:`seconds`.
    """

    def __init__(self, products: list[Product], *, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        pool_a = torch.randn(max(p.m * p.k for p in products), generator=g)
        pool_b = torch.randn(max(p.k * p.n for p in products), generator=g)
        pool_c = torch.empty(max(p.m * p.n for p in products))

        def operands(p: Product) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return (
                pool_a[: p.m * p.k].view(p.m, p.k),
                pool_b[: p.k * p.n].view(p.k, p.n),
                pool_c[: p.m * p.n].view(p.m, p.n),
            )

        self.per_step = [operands(p) for p in products if p.per == "step"]
        self.per_run = [operands(p) for p in products if p.per == "run"]
        self.run_seconds = 0.0  # the per-run products, timed once
        self.step_seconds = 0.0  # the per-step products, summed over steps
        self.steps = 0
        self._run(self.per_run + self.per_step)  # warm-up, not counted

    @staticmethod
    def _run(ops: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for a, b, c in ops:
                torch.mm(a, b, out=c)
        return time.perf_counter() - start

    @property
    def seconds(self) -> float:
        return self.run_seconds + self.step_seconds

    def step(self) -> None:
        if self.steps == 0:
            self.run_seconds = self._run(self.per_run)
        self.step_seconds += self._run(self.per_step)
        self.steps += 1

    def epoch_seconds(self, steps_per_epoch: int) -> float:
        """The bound of a whole epoch, scaled from the steps run so far."""
        return self.run_seconds + self.step_seconds / self.steps * steps_per_epoch


# --------------------------------------------------------------------------------------------
# Timing the library's training loop.


class _StopTraining(Exception):
    """Raised from inside ``fit`` to end a sampled run after a fixed number of steps."""


class _StepTimer:
    """Delimits ``fit``'s training steps with torch's global hooks, without touching the library.

    A step starts at the first module forward run with autograd enabled (the per-epoch
    validation forward runs under ``no_grad``) and ends when any optimizer finishes ``step()``.
    After each step it runs one step of ``bound``, when given, outside the steps' time, and it
    stops ``fit`` once ``stop_after`` steps have run, when that is set. Use as a context manager.
    """

    def __init__(self, *, bound: GemmBound | None = None, stop_after: int | None = None) -> None:
        self.bound = bound
        self.stop_after = stop_after
        self.durations: list[float] = []
        self._start: float | None = None
        self._handles: list = []

    def _on_forward(self, module, args) -> None:
        if self._start is None and torch.is_grad_enabled():
            self._start = time.perf_counter()

    def _on_optimizer_step(self, optimizer, args, kwargs) -> None:
        if self._start is None:
            return
        self.durations.append(time.perf_counter() - self._start)
        self._start = None
        if self.stop_after is not None and len(self.durations) >= self.stop_after:
            raise _StopTraining
        if self.bound is not None:
            self.bound.step()

    def __enter__(self) -> "_StepTimer":
        self._handles = [
            register_module_forward_pre_hook(self._on_forward),
            register_optimizer_step_post_hook(self._on_optimizer_step),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()


def _fit_steps(run_cfg: RunConfig, steps: int, fit_kwargs: dict, *, bound: GemmBound | None = None) -> list[float]:
    """Run the first ``steps`` steps of ``fit``; returns each step's duration in seconds."""
    with _StepTimer(bound=bound, stop_after=steps) as timer:
        try:
            train_adapter(run_cfg, **fit_kwargs)
        except _StopTraining:
            return timer.durations
    raise RuntimeError(f"fit ended before step {steps}; the epoch has fewer steps")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def measure(cfg: BenchConfig) -> dict:
    """Measure one configuration in this process.

    Order: build the random cache, graph and engine; run ``fit`` for one warm-up step (it
    prepares the engine's coefficients, grows the allocator and starts the thread pool; every
    step allocates the same tensors, so the peak RSS read right after it is the epoch's peak);
    allocate the GEMM-bound operands; then run the timed epoch (or its first ``sample_steps``
    + 1 steps) with one bound step after every training step. Call it in a fresh process: peak
    RSS is a process-lifetime maximum.
    """
    torch.manual_seed(0)
    device = torch.device("cpu")
    run_cfg = build_run_config(cfg)
    cache = build_random_cache(classes=cfg.classes, shots=cfg.shots, dim=cfg.dim, views=cfg.views)
    train_set = cache.train_set(cfg.shots, SEED)
    feat_dict = build_node_features(pos_text=cache.pos_text, neg_text=cache.neg_text, train_set=train_set)
    g = run_cfg.variant.graph
    relation_graph = build_relation_graph_from_config(feat_dict, g)
    fit_kwargs = dict(
        graph=create_engine(run_cfg.engine, relation_graph, device=device),
        feat_dict=feat_dict,
        data=selection_data(cache, shots=cfg.shots, seed=SEED),
        ctx=FitContext(seed=SEED, device=device),
    )
    images = cfg.classes * cfg.shots
    batch = run_cfg.train.batch_size
    steps_per_epoch = math.ceil(images / batch)
    products = gemm_products(run_cfg.variant, classes=cfg.classes, images=images, batch=batch, dim=cfg.dim, topk=cfg.topk)

    _fit_steps(run_cfg, 1, fit_kwargs)  # warm-up
    peak_rss_mb = _peak_rss_mb()
    bound = GemmBound(products)

    sample = 0 < cfg.sample_steps < steps_per_epoch - 1
    if sample:
        durations = _fit_steps(run_cfg, cfg.sample_steps + 1, fit_kwargs, bound=bound)
        later = durations[1:]  # step 0 also propagates the memoised paths: once per run
        epoch_s = durations[0] + sum(later) / len(later) * (steps_per_epoch - 1)
        bound_s = bound.epoch_seconds(steps_per_epoch)
        timed_steps = len(durations)
    else:
        with _StepTimer(bound=bound) as timer:
            _, result = train_adapter(run_cfg, **fit_kwargs)
        if len(timer.durations) != steps_per_epoch or bound.steps != steps_per_epoch:
            raise RuntimeError(f"saw {len(timer.durations)} training steps, expected {steps_per_epoch}")
        epoch_s = result.seconds - bound.seconds  # the loop's seconds include the interleaved bound
        bound_s = bound.seconds
        timed_steps = steps_per_epoch
    return {
        "classes": cfg.classes,
        "shots": cfg.shots,
        "dim": cfg.dim,
        "graph": cfg.graph,
        "engine": cfg.engine,
        "epoch_s": round(epoch_s, 3),
        "gemm_bound_s": round(bound_s, 3),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "extrapolated": sample,
        "timed_steps": timed_steps,
        "steps_per_epoch": steps_per_epoch,
        "views": cfg.views,
        "gemm_gflop_per_epoch": round(
            sum(p.flops * (steps_per_epoch if p.per == "step" else 1) for p in products) / 1e9, 1
        ),
        "threads": torch.get_num_threads(),
    }


def measure_in_subprocess(cfg: BenchConfig) -> dict:
    """Run :func:`measure` in a fresh interpreter; its last stdout line is the JSON record."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(asdict(cfg))]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"configuration {cfg} failed (exit {proc.returncode}); its stderr is above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_propagation(*, classes: int, dim: int, topk: int | None, reps: int = 30) -> dict:
    """One hop of ``n2p`` (gcn norm), forward + backward w.r.t. its input, per engine: the graph
    work a training step repeats (the other paths are memoised). Both engines run interleaved in
    this process, ``reps`` times each after two warm-ups; returns the median milliseconds."""
    from hgadapter.metapaths import ETYPES

    g = torch.Generator().manual_seed(0)
    feat_dict = {t: F.normalize(torch.randn(classes, dim, generator=g), dim=-1) for t in ("pos", "neg", "vis")}
    relation_graph = build_relation_graph(feat_dict, relations=ETYPES, topk=topk)
    engines = {name: create_engine(name, relation_graph) for name in ("torch", "dgl")}
    x = torch.randn(classes, dim, generator=g, requires_grad=True)  # (C, d) renewed negatives
    own = torch.randn(classes, dim, generator=g)  # (C, d) destination features, gcn self term

    def hop(engine) -> float:
        start = time.perf_counter()
        engine.propagate("n2p", "gcn", x, own).sum().backward()
        x.grad = None
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in engines}
    for engine in engines.values():
        hop(engine), hop(engine)
    for _ in range(reps):
        for name, engine in engines.items():
            times[name].append(hop(engine))
    median = {name: sorted(t)[len(t) // 2] * 1e3 for name, t in times.items()}
    return {
        "classes": classes,
        "dim": dim,
        "graph": "dense" if topk is None else f"top{topk}",
        "torch_ms": round(median["torch"], 3),
        "dgl_ms": round(median["dgl"], 3),
    }


def propagation_table(records: list[dict]) -> str:
    lines = ["| classes | dim | graph | torch ms | dgl ms | dgl / torch |", "|---:|---:|---|---:|---:|---:|"]
    for r in records:
        lines.append(
            f"| {r['classes']} | {r['dim']} | {r['graph']} | {r['torch_ms']:.2f} | {r['dgl_ms']:.2f} "
            f"| {r['dgl_ms'] / r['torch_ms']:.2f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Reporting.


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        from importlib.metadata import version

        dgl_version = version("dgl")
    except Exception:  # noqa: BLE001 - dgl is optional for this description
        dgl_version = "not installed"
    return (
        f"{cpu}, nproc {os.cpu_count()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"dgl {dgl_version}, Python {platform.python_version()}"
    )


def markdown_table(records: list[dict]) -> str:
    lines = [
        "| classes | shots | dim | graph | engine | epoch_s | gemm_bound_s | ratio | peak_rss_mb |",
        "|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in records:
        star = "*" if r.get("extrapolated") else ""
        ratio = r["epoch_s"] / r["gemm_bound_s"] if r["gemm_bound_s"] > 0 else float("nan")
        lines.append(
            f"| {r['classes']} | {r['shots']} | {r['dim']} | {r['graph']} | {r['engine']} "
            f"| {r['epoch_s']:.2f}{star} | {r['gemm_bound_s']:.2f}{star} | {ratio:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def products_table(products: list[Product], steps_per_epoch: int) -> str:
    lines = ["| phase | per | product | shape | GFLOP |", "|---|---|---|---|---:|"]
    for p in products:
        lines.append(f"| {p.phase} | {p.per} | {p.name} | ({p.m} x {p.k}) @ ({p.k} x {p.n}) | {p.flops / 1e9:.3f} |")
    per_step = sum(p.flops for p in products if p.per == "step")
    per_run = sum(p.flops for p in products if p.per == "run")
    lines.append(
        f"| | | **total** ({len(products)} products) | | {per_step / 1e9:.2f} per step + {per_run / 1e9:.2f} per run "
        f"= {(per_step * steps_per_epoch + per_run) / 1e9:.0f} per epoch of {steps_per_epoch} steps |"
    )
    return "\n".join(lines)


def build_configs(args: argparse.Namespace) -> list[BenchConfig]:
    classes = [100] if args.quick else args.classes
    configs = []
    for c in classes:
        for d in args.dims:
            for graph in args.graphs:
                for engine in args.engines:
                    slow = engine == "dgl" and graph == "dense" and c >= args.sample_from_classes
                    configs.append(
                        BenchConfig(
                            classes=c, shots=args.shots, dim=d, graph=graph, engine=engine, views=args.views,
                            sample_steps=args.sample_steps if slow else 0,
                        )
                    )
    return configs


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the records to this JSON file")
    parser.add_argument("--md", default="runs/bench/engines.md", help="where to write the markdown table")
    parser.add_argument("--quick", action="store_true", help="C = 100 only")
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--graphs", nargs="+", default=["dense", "top16"], help="dense and/or topK, e.g. top16")
    parser.add_argument("--engines", nargs="+", default=["torch", "dgl"], choices=["torch", "dgl"])
    parser.add_argument("--views", type=int, default=10, help="augmented views per training image")
    parser.add_argument("--sample-steps", type=int, default=5, help="steps timed (after the first) where extrapolating")
    parser.add_argument(
        "--sample-from-classes", type=int, default=1000,
        help="extrapolate dgl on dense graphs from this many classes up (a huge value: never)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration; the fastest epoch is kept")
    parser.add_argument(
        "--propagation", action="store_true",
        help="instead: time one n2p hop (forward + backward) per engine, interleaved in one process",
    )
    parser.add_argument("--products", action="store_true", help="print the GEMM list of each configuration and exit")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one JSON BenchConfig, measured here
    args = parser.parse_args(argv)

    if args.one:
        record = measure(BenchConfig(**json.loads(args.one)))
        print(json.dumps(record), flush=True)
        return [record]
    for graph in args.graphs:
        if graph != "dense" and not (graph.startswith("top") and graph[3:].isdigit() and int(graph[3:]) > 0):
            parser.error(f"--graphs: {graph!r} is not 'dense' or 'topK' (e.g. top16)")

    if args.propagation:
        classes = [100] if args.quick else args.classes
        prop = [
            bench_propagation(classes=c, dim=d, topk=None if gr == "dense" else int(gr[3:]))
            for c in classes
            for d in args.dims
            for gr in args.graphs
        ]
        table = propagation_table(prop)
        print(table)
        md = Path(args.md).with_name("propagation.md")
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(table + "\n\n" + f"Machine: {machine_description()}. Median of 30 interleaved runs.\n")
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(prop, indent=2) + "\n")
        return prop

    configs = build_configs(args)
    if args.products:
        seen = set()
        for cfg in configs:
            key = (cfg.classes, cfg.shots, cfg.dim, cfg.graph)
            if key in seen:
                continue
            seen.add(key)
            run_cfg = build_run_config(cfg)
            images, batch = cfg.classes * cfg.shots, run_cfg.train.batch_size
            products = gemm_products(run_cfg.variant, classes=cfg.classes, images=images, batch=batch, dim=cfg.dim, topk=cfg.topk)
            print(f"\nC={cfg.classes} K={cfg.shots} d={cfg.dim} graph={cfg.graph}, B={batch}, N={images}\n")
            print(products_table(products, math.ceil(images / batch)))
        return []

    machine = machine_description()
    print(f"# {len(configs)} configurations on {machine}", file=sys.stderr)
    records = []
    for i, cfg in enumerate(configs, 1):
        t0 = time.perf_counter()
        runs = [measure_in_subprocess(cfg) for _ in range(args.repeat)]
        record = min(runs, key=lambda r: r["epoch_s"])
        record["repeats"] = args.repeat
        records.append(record)
        print(
            f"[{i}/{len(configs)}] C={cfg.classes} d={cfg.dim} {cfg.graph} {cfg.engine}: epoch {record['epoch_s']:.2f} s, "
            f"bound {record['gemm_bound_s']:.2f} s ({time.perf_counter() - t0:.0f} s wall)",
            file=sys.stderr,
        )
    table = markdown_table(records)
    print(table)
    notes = [
        f"Machine: {machine}.",
        "Variant `full`, batch 256, one epoch of `train_adapter` (the training loop's seconds less the interleaved bound steps; "
        "includes the one validation forward per epoch, 1 image per class); ratio = epoch_s / gemm_bound_s.",
    ]
    if args.repeat > 1:
        notes.append(
            f"Each configuration ran {args.repeat} times in fresh processes; the run with the smallest epoch_s is shown."
        )
    if any(r["extrapolated"] for r in records):
        notes.append(
            f"`*`: extrapolated from the first step plus {args.sample_steps} timed steps: first step + (steps - 1) x their "
            "mean, for the epoch and the bound alike (the validation forward is not included)."
        )
    md = Path(args.md)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(table + "\n\n" + "\n".join(notes) + "\n")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(records, indent=2) + "\n")
    return records


if __name__ == "__main__":
    main()
