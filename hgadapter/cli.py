"""Command line: ``hgadapter {synth,run,variants,demo,compare,sweep,report,figures,tsne,extract}``.

User errors (a :class:`~hgadapter.errors.UserError`: bad config, bad cache, unknown names; or an
``OSError``: a missing or unwritable file) end with a one-line message and exit code 2; set
``HGADAPTER_DEBUG=1`` to see the traceback anyway. Any other exception is a bug and shows its
traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

from hgadapter._cli import USER_ERRORS_ATTR, run_command_line
from hgadapter.config import ConfigError, echo, list_variants, load_config, load_variant, parse_override
from hgadapter.data.cache import CacheError
from hgadapter.errors import UserError

DEMO_VARIANTS = ("base", "t_n", "t_p", "t", "full")
DEMO_SEEDS = (1, 2, 3)
DEMO_SHOTS = 16


# What ends in a one-line message: every error type derived from UserError, and file-system
# errors (their message names the path). Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError)


# ---------------------------------------------------------------------------------------------


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the synthetic CLIP-like task as a feature cache")
    p.add_argument("--out", required=True, help="cache directory to write (with --preset all: one sub-folder per task)")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="a development-suite task of experiments/suite/tasks.yaml, or 'all' for every one; "
                        "the other options override its fields")
    p.add_argument("--seed", type=int, default=None, help="generator seed (default: the demo task's)")
    p.add_argument("--classes", type=int, default=None, help="number of classes C")
    p.add_argument("--dim", type=int, default=None, help="feature dimension d")
    p.add_argument("--families", type=int, default=None, help="number of confusable class families")
    p.add_argument("--shots", type=int, nargs="+", default=None, help="few-shot sizes K to write")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="sampling seeds to write")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other generator field (docs/synthetic.md), e.g. image_noise=2.6; repeatable")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, different cache")
    p.set_defaults(func=_cmd_synth)


def _synth_overrides(args: argparse.Namespace) -> dict:
    mapping = {"seed": "seed", "classes": "num_classes", "dim": "dim", "families": "num_families", "shots": "shots", "seeds": "seeds"}
    out = {}
    for arg, field_name in mapping.items():
        value = getattr(args, arg, None)
        if value is not None:
            out[field_name] = tuple(value) if isinstance(value, list) else value
    return out


def _cmd_synth(args: argparse.Namespace) -> int:
    from hgadapter.data.io import save_cache
    from hgadapter.data.synthetic import SyntheticTaskConfig, build_synthetic_task, list_presets, preset_config

    fields = {f.name for f in dataclasses.fields(SyntheticTaskConfig)}
    overrides = _synth_overrides(args)
    for text in args.sets:
        name, value = parse_override(text)
        if name not in fields:
            raise ConfigError(f"--set {echo(text, bare=True)}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        overrides[name] = tuple(value) if isinstance(value, list) else value
    if args.preset is not None and args.preset != "all" and args.preset not in list_presets():
        raise ConfigError(f"--preset {args.preset!r}: unknown task; available: {list_presets() + ['all']}")
    names = [None] if args.preset is None else list_presets() if args.preset == "all" else [args.preset]
    jobs = []
    for name in names:
        try:
            cfg = SyntheticTaskConfig(**overrides) if name is None else dataclasses.replace(preset_config(name), **overrides)
        except (TypeError, ValueError) as exc:  # the generator's own validation of what --set gave
            raise ConfigError(f"synthetic task: {echo(str(exc), bare=True, limit=400)}") from None
        jobs.append((name, cfg, Path(args.out) / name if args.preset == "all" else Path(args.out)))
    for name, cfg, out in jobs:
        cache = build_synthetic_task(cfg)
        path = save_cache(out, cache, overwrite=args.overwrite)
        print(
            f"wrote synthetic task{f' {name!r}' if name else ''} (SYNTHETIC, not real CLIP features): "
            f"{cache.num_classes} classes, d={cache.dim}, {len(cache.train_sets)} training sets -> {path}"
        )
    return 0


# ---------------------------------------------------------------------------------------------


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train and evaluate one meta-path variant on one (cache, shots, seed)")
    p.add_argument("--features", required=True, help="feature cache directory (docs/feature-cache.md)")
    p.add_argument("--variant", default=None, help=f"variant name {list_variants()} or a YAML path (default: full)")
    p.add_argument("--shots", type=int, required=True, help="K, images per class")
    p.add_argument("--seed", type=int, required=True, help="few-shot sampling seed (also seeds training)")
    p.add_argument("--engine", choices=["auto", "dgl", "torch"], default=None, help="message-passing engine")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--config", default=None, help="experiment YAML (train/eval/engine/... sections)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.lr=0.01 (repeatable)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from hgadapter.data.io import load_cache
    from hgadapter.runner import run_experiment

    overrides = list(args.overrides)
    if args.engine is not None:
        overrides.append(f"engine={args.engine}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    cfg = load_config(args.variant, config_file=args.config, overrides=overrides)
    cache = load_cache(args.features, train_keys=[(args.shots, args.seed)])
    metrics = run_experiment(cfg, cache, shots=args.shots, seed=args.seed, out_dir=args.out, progress=not args.quiet)
    tag = " (synthetic task)" if metrics["synthetic"] else ""
    print(
        f"{metrics['variant']} shots={metrics['shots']} seed={metrics['seed']} engine={metrics['engine']}: "
        f"val {metrics['val_acc']:.2f}%  test {metrics['test_acc']:.2f}%{tag} -> {args.out}"
    )
    return 0


# ---------------------------------------------------------------------------------------------


def _add_variants(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("variants", help="list the shipped meta-path variants")
    p.set_defaults(func=_cmd_variants)


def _cmd_variants(args: argparse.Namespace) -> int:
    for name in list_variants():
        variant = load_variant(name)
        paths = "; ".join(
            f"{s.target}<-" + ",".join(m.name for m in s.metapaths) for s in variant.stages
        ) or "no stages"
        print(f"{name:6s} {variant.classifier:10s} {paths:45s} {variant.description}")
    return 0


# ---------------------------------------------------------------------------------------------


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="Base, T-N, T-P, T and full HeGraphAdapter on the synthetic task, seeds 1-3")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--engine", choices=["auto", "dgl", "torch"], default=None, help="message-passing engine")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-baselines", action="store_true", help="skip the baseline comparison")
    p.set_defaults(func=_cmd_demo)


def format_results_table(records: list[dict], *, title: str) -> str:
    """Markdown table of mean +- std (population of seeds, n-1 denominator) per variant."""
    lines = [f"### {title}", "", "| variant | seeds | val acc (%) | test acc (%) |", "|---|---|---|---|"]
    order: list[str] = []
    for r in records:
        if r["variant"] not in order:
            order.append(r["variant"])
    for variant in order:
        rows = [r for r in records if r["variant"] == variant]
        seeds = ",".join(str(r["seed"]) for r in rows)

        def stat(key: str) -> str:
            values = [r[key] for r in rows]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.2f} ± {std:.2f}"

        lines.append(f"| {variant} | {seeds} | {stat('val_acc')} | {stat('test_acc')} |")
    return "\n".join(lines) + "\n"


def _cmd_demo(args: argparse.Namespace) -> int:
    from hgadapter._io import atomic_write_json, atomic_write_text
    from hgadapter.data.io import save_cache
    from hgadapter.runner import run_experiment
    from hgadapter.data.synthetic import build_synthetic_task

    out = Path(args.out)
    start = time.perf_counter()
    cache = build_synthetic_task()
    try:  # identical to what is there already: nothing is rewritten
        save_cache(out / "cache", cache)
    except CacheError:  # an older or different task in that folder
        save_cache(out / "cache", cache, overwrite=True)
    print(f"SYNTHETIC task (CLIP-like features, not real CLIP): {cache.num_classes} classes, d={cache.dim}, {DEMO_SHOTS} shots")
    overrides = [f"engine={args.engine}"] if args.engine else []
    records = []
    for variant in DEMO_VARIANTS:
        cfg = load_config(variant, overrides=overrides)
        for seed in DEMO_SEEDS:
            m = run_experiment(cfg, cache, shots=DEMO_SHOTS, seed=seed, out_dir=out / variant / f"seed{seed}", progress=not args.quiet)
            print(f"  {variant:5s} seed {seed}: val {m['val_acc']:6.2f}  test {m['test_acc']:6.2f}  ({m['train_seconds']:.1f} s, engine {m['engine']})")
            records.append({k: m[k] for k in ("variant", "seed", "shots", "val_acc", "test_acc", "alpha", "beta", "engine")})
    atomic_write_json(out / "results.json", records)
    table = format_results_table(records, title=f"Synthetic CLIP-like task, {DEMO_SHOTS} shots, seeds 1-3 (SYNTHETIC: says nothing about real CLIP)")
    atomic_write_text(out / "results.md", table)
    print()
    print(table)
    if not args.no_baselines:
        from hgadapter.compare import DEFAULT_METHODS, compare, format_table

        baselines = [m for m in DEFAULT_METHODS if not m.startswith("hegraphadapter")]
        print(f"baselines on the same cache and protocol: {', '.join(baselines)}")
        base_records = compare(cache, baselines, [DEMO_SHOTS], list(DEMO_SEEDS), out / "baselines", progress=not args.quiet, log=lambda m: None)
        base_table = format_table(base_records, title="Baselines, same synthetic task and protocol (SYNTHETIC)")
        atomic_write_text(out / "results.md", table + "\n" + base_table)
        print(base_table)
    from hgadapter.report import write_report

    report = write_report(out, out / "report")
    print(f"variants and baselines in the paper's Table 2 layout -> {report / 'report.md'}")
    try:
        from viz.tsne import plot_node_tsne

        fig = plot_node_tsne(out / "full" / "seed1", out / "tsne_pos_full_seed1.png", formats=("png", "pdf"))
        print(f"t-SNE of positive text nodes before/after adaptation -> {fig}")
    except ImportError as exc:
        print(f"(t-SNE figure skipped: {exc})")
    print(f"demo finished in {time.perf_counter() - start:.0f} s; results in {out}/results.md")
    return 0


# ---------------------------------------------------------------------------------------------


# Commands whose arguments and body live in their own module: (command, help, module, function
# adding the arguments, function running the command, extra user-error types). viz reports bad
# input as ValueError (it does not depend on hgadapter's error types), so for its commands a
# ValueError is a user error too.
_VIZ_ERRORS: tuple[type[BaseException], ...] = (ValueError,)
_DELEGATED: tuple[tuple[str, str, str, str, str, tuple[type[BaseException], ...]], ...] = (
    ("compare", "run baselines and HeGraphAdapter on one cache under one protocol", "hgadapter.compare", "add_compare_arguments", "run_compare", ()),
    ("sweep", "run an experiment grid (methods x shots x seeds x grid), resuming finished runs", "hgadapter.sweep", "add_sweep_arguments", "run_sweep_command", ()),
    ("report", "tables in the paper's layout from finished runs, paper values beside ours (md, csv, json)", "hgadapter.report", "add_report_arguments", "run_report", ()),
    ("figures", "accuracy vs shots, sensitivity and training curves from finished runs (PNG + PDF)", "viz.curves", "add_figures_arguments", "run_figures_command", _VIZ_ERRORS),
    ("tsne", "t-SNE of a run's positive text nodes before and after adaptation (paper Fig. 3)", "viz.tsne", "add_tsne_arguments", "run_tsne_command", _VIZ_ERRORS),
    ("extract", "encode a dataset and its prompts with a frozen CLIP into a feature cache", "hgadapter.extract.run", "add_extract_arguments", "run_extract", ()),
)


def _add_delegated(
    sub: argparse._SubParsersAction, name: str, help: str, module: str, add: str, run: str, errors: tuple[type[BaseException], ...]
) -> None:
    # No try/except ImportError: every dependency is required, so a module that fails to import
    # is a bug, and its traceback beats the command vanishing as "invalid choice".
    mod = importlib.import_module(module)
    p = sub.add_parser(name, help=help)
    getattr(mod, add)(p)
    p.set_defaults(func=getattr(mod, run), **{USER_ERRORS_ATTR: errors})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hgadapter", description="Few-shot CLIP adaptation with heterogeneous graph adapters.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_synth(sub)
    _add_run(sub)
    _add_variants(sub)
    _add_demo(sub)
    for command in _DELEGATED:
        _add_delegated(sub, *command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command_line(build_parser(), argv, prog="hgadapter", user_errors=USER_ERRORS, debug_env="HGADAPTER_DEBUG")

if __name__ == "__main__":
    sys.exit(main())
