"""``hgadapter demo``: the paper's Table 2 variants and every baseline on the synthetic task.

Base, T-N, T-P, T and full HeGraphAdapter (paper Table 2) and the baselines of
:data:`hgadapter.compare.DEFAULT_METHODS` (but :data:`DEMO_SKIPPED`), 16 shots, seeds 1-3, on the synthetic CLIP-like task
(docs/synthetic.md). The demo is one comparison (:func:`hgadapter.compare.compare`, itself a sweep
over one cache): ``OUT`` receives the task as a feature cache (``OUT/cache``), one run directory
per (method, seed) (``OUT/<method>/16shot-seed<seed>``), ``results.md`` and the bar chart, the
report in the paper's layout (``OUT/report``) and a t-SNE figure of the full method's positive
text nodes. Running it again reuses every finished run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hgadapter._cli import output_path
from hgadapter.data.cache import CacheError

__all__ = ["DEMO_VARIANTS", "DEMO_SEEDS", "DEMO_SHOTS", "DEMO_SKIPPED", "demo_methods", "run_demo", "add_demo_arguments", "run_demo_command"]

DEMO_VARIANTS: tuple[str, ...] = ("base", "t_n", "t_p", "t", "full")  # metapaths/<variant>.yaml
DEMO_SEEDS: tuple[int, ...] = (1, 2, 3)  # few-shot sampling seeds
DEMO_SHOTS = 16  # images per class
# Baselines of compare's default list the demo leaves out: PROTO-CLIP-F-Q trains for its source's
# 2000 epochs, which alone would take longer than the rest of the demo (docs/baselines.md).
DEMO_SKIPPED: tuple[str, ...] = ("proto_clip_f_q",)


def _variant_method(variant: str) -> str:
    return "hegraphadapter" if variant == "full" else f"hegraphadapter:{variant}"


def demo_methods(*, baselines: bool = True) -> list[str]:
    """The methods the demo compares: the variants of :data:`DEMO_VARIANTS`, then the baselines."""
    from hgadapter.compare import DEFAULT_METHODS

    variants = [_variant_method(v) for v in DEMO_VARIANTS]
    return variants + ([m for m in DEFAULT_METHODS if m not in variants and m not in DEMO_SKIPPED] if baselines else [])


def run_demo(out_dir: str | Path, *, engine: str | None = None, progress: bool = True, baselines: bool = True) -> Path:
    """Run the demo into ``out_dir``, printing one line per run and the tables; returns ``out_dir``.

    Args:
        out_dir: the output directory (created if missing).
        engine: message-passing engine of the HeGraphAdapter variants (``auto``, ``dgl``,
            ``torch``); ``None`` keeps the config's.
        progress: show training progress bars.
        baselines: also run the baselines.
    """
    from hgadapter.compare import RESULTS_MD, compare
    from hgadapter.data.io import save_cache
    from hgadapter.report import REPORT_STEM, write_report
    from hgadapter.sweep import run_path
    from hgadapter.data.synthetic import build_synthetic_task
    from hgadapter.config import field_names
    from hgadapter.methods import method_class

    out = Path(out_dir)
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
    parser.add_argument("--engine", choices=["auto", "dgl", "torch"], default=None, help="message-passing engine")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-baselines", action="store_true", help="skip the baseline comparison")


def run_demo_command(args: argparse.Namespace) -> int:
    """Run ``hgadapter demo`` from parsed arguments."""
    run_demo(args.out, engine=args.engine, progress=not args.quiet, baselines=not args.no_baselines)
    return 0
