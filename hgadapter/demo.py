"""``hgadapter demo``: the paper's Table 2 ablation and the strongest baselines on the synthetic task.

Base, T-N, T-P, T and full HeGraphAdapter (paper Table 2) and the baselines of
:data:`DEMO_BASELINES`, 16 shots, seeds 1-3, on the synthetic CLIP-like task (docs/synthetic.md),
sized to show the point in about a minute on two quiet CPU cores. ``--all`` (``baselines="all"``) runs
every method of :data:`hgadapter.compare.DEFAULT_METHODS` instead, the full table. The demo is
one comparison (:func:`hgadapter.compare.compare`, itself a sweep over one cache): ``OUT``
receives the task as a feature cache (``OUT/cache``), one run directory per (method, seed)
(``OUT/<method>/16shot-seed<seed>``), ``results.md`` (with ``results.json``/``.csv``) and the bar
chart, the report in the paper's layout (``OUT/report``) and a t-SNE figure of the full method's
positive text nodes. Running it again reuses every finished run, so ``demo --all`` after ``demo``
runs only the methods the first left out.

Only the standard library is imported at the top: building the command line stays cheap.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hgadapter._cli import output_path
from hgadapter._io import check_output_dir

__all__ = [
    "DEMO_VARIANTS",
    "DEMO_BASELINES",
    "DEMO_SEEDS",
    "DEMO_SHOTS",
    "demo_methods",
    "run_demo",
    "add_demo_arguments",
    "run_demo_command",
]

DEMO_VARIANTS: tuple[str, ...] = ("base", "t_n", "t_p", "t", "full")  # metapaths/<variant>.yaml
# The strongest baselines that fit a one-minute demo. By the committed evidence (the development
# suite in experiments/suite/results and the demo task's table) the strongest are Tip-Adapter,
# ProKeR, LP++ and GDA. ProKeR is left to --all: its closed form (an N x N eigendecomposition per
# beta) costs more per seed than the whole ablation (docs/benchmarks.md, "The demo"). Tip-Adapter-F
# ties Tip-Adapter on this task at a training run's cost, and zero-shot CLIP is the Base row.
DEMO_BASELINES: tuple[str, ...] = ("tip_adapter", "lp_plus_plus", "gda")
DEMO_SEEDS: tuple[int, ...] = (1, 2, 3)  # few-shot sampling seeds
DEMO_SHOTS = 16  # images per class


def _variant_method(variant: str) -> str:
    return "hegraphadapter" if variant == "full" else f"hegraphadapter:{variant}"


def demo_methods(*, baselines: bool | str = True) -> list[str]:
    """The methods the demo compares: the variants of :data:`DEMO_VARIANTS`, then the baselines
    (only ones that run on cached features: the synthetic task has no encoder for CoOp).

    Args:
        baselines: ``True`` for :data:`DEMO_BASELINES`, ``"all"`` for every method of
            :data:`hgadapter.compare.DEFAULT_METHODS` (compare's default list, whatever it holds),
            ``False`` for none.
    """
    variants = [_variant_method(v) for v in DEMO_VARIANTS]
    if baselines == "all":
        from hgadapter.compare import DEFAULT_METHODS  # compare's list, so new methods join the full table
        from hgadapter.methods import method_class

        extra = [m for m in DEFAULT_METHODS if not method_class(m).needs_encoder]  # not CoOp: the synthetic task has no encoder
    elif baselines:
        extra = list(DEMO_BASELINES)
    else:
        extra = []
    return variants + [m for m in extra if m not in variants]


def run_demo(out_dir: str | Path, *, engine: str | None = None, progress: bool = True, baselines: bool | str = True) -> Path:
    """Run the demo into ``out_dir``, printing one line per run and the tables; returns ``out_dir``.

    Args:
        out_dir: the output directory (created if missing).
        engine: message-passing engine of the HeGraphAdapter variants (``auto``, ``dgl``,
            ``torch``); ``None`` keeps the config's.
        progress: show training progress bars.
        baselines: which baselines to run besides the variants (:func:`demo_methods`).
    """
    from hgadapter.compare import RESULTS_MD, compare
    from hgadapter.data.cache import CacheError
    from hgadapter.data.io import save_cache
    from hgadapter.report import REPORT_STEM, write_report
    from hgadapter.sweep import run_path
    from hgadapter.data.synthetic import build_synthetic_task
    from hgadapter.config import field_names
    from hgadapter.methods import method_class

    out = check_output_dir(out_dir)
    start = time.perf_counter()
    cache = build_synthetic_task()
    try:  # identical to what is there already: nothing is rewritten
        save_cache(out / "cache", cache)
    except CacheError:  # an older or different task in that folder
        save_cache(out / "cache", cache, overwrite=True)
    print(f"SYNTHETIC task (CLIP-like features, not real CLIP): {cache.num_classes} classes, d={cache.dim}, {DEMO_SHOTS} shots")
    methods = demo_methods(baselines=baselines)
    # the engine is a key of the methods whose config has one (the graph adapters' run config)
    overrides = {m: [f"engine={engine}"] for m in methods if "engine" in field_names(method_class(m).config_cls)} if engine else {}
    compare(cache, methods, [DEMO_SHOTS], list(DEMO_SEEDS), out, progress=progress, overrides=overrides)
    print()
    print((out / RESULTS_MD).read_text(encoding="utf-8"))
    report = write_report(out, out / REPORT_STEM)
    print(f"variants and baselines in the paper's Table 2 layout -> {report / f'{REPORT_STEM}.md'}")
    try:
        from viz.tsne import plot_node_tsne

        run = run_path(out, _variant_method("full"), DEMO_SHOTS, DEMO_SEEDS[0])
        fig = plot_node_tsne(run, out / f"tsne_pos_full_seed{DEMO_SEEDS[0]}.png", formats=("png", "pdf"))
        print(f"t-SNE of positive text nodes before/after adaptation -> {fig}")
    except ImportError as exc:
        print(f"(t-SNE figure skipped: {exc})")
    print(f"demo finished in {time.perf_counter() - start:.0f} s; results in {out / RESULTS_MD}")
    return out


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``hgadapter demo``'s arguments to ``parser``."""
    parser.add_argument("--out", type=output_path, default="runs/demo", help="output directory (default: runs/demo)")
    parser.add_argument("--engine", choices=["auto", "dgl", "torch"], default=None, help="message-passing engine (default: the config's, auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true",
                       help="every method `hgadapter compare` runs by default, not only the strongest baselines (several times longer)")
    which.add_argument("--no-baselines", action="store_true", help="only the ablation: Base, T-N, T-P, T and full")


def run_demo_command(args: argparse.Namespace) -> int:
    """Run ``hgadapter demo`` from parsed arguments."""
    baselines: bool | str = "all" if args.all else not args.no_baselines
    run_demo(args.out, engine=args.engine, progress=not args.quiet, baselines=baselines)
    return 0
