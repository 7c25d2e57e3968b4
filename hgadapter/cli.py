"""Command line: ``hgadapter {synth,run,variants,demo,compare,sweep,report,figures,tsne,extract,check,export,predict}``.

User errors (a :class:`~hgadapter.errors.UserError`: bad config, bad cache, unknown names; or an
``OSError``: a missing or unwritable file) end with a one-line message and exit code 2; set
``HGADAPTER_DEBUG=1`` to see the traceback anyway. Any other exception is a bug and shows its
traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Sequence

from hgadapter._cli import USER_ERRORS_ATTR, output_path, run_command_line
from hgadapter.config import ConfigError, echo, list_variants, load_config, load_variant, parse_override
from hgadapter.data.cache import CacheError
from hgadapter.errors import UserError
from hgadapter.tracking import add_tracking_arguments, tracking_from_args


# What ends in a one-line message: every error type derived from UserError, and file-system
# errors (their message names the path). Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError)


# ---------------------------------------------------------------------------------------------


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the synthetic CLIP-like task as a feature cache")
    p.add_argument("--out", type=output_path, required=True, help="cache directory to write (with --preset all: one sub-folder per task)")
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
    from hgadapter._io import check_output_dir
    from hgadapter.data.io import save_cache
    from hgadapter.data.synthetic import SyntheticTaskConfig, build_synthetic_task, list_presets, preset_config

    fields = {f.name for f in dataclasses.fields(SyntheticTaskConfig)}
    overrides = _synth_overrides(args)
    for text in args.sets:
        name, value = parse_override(text)
        if name not in fields:
            raise ConfigError(f"--set {echo(text, bare=True)}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        overrides[name] = tuple(value) if isinstance(value, list) else value
    presets = [] if args.preset is None else list_presets()  # the suite's task list, read once
    if args.preset not in (None, "all", *presets):
        raise ConfigError(f"--preset {args.preset!r}: unknown task; available: {presets + ['all']}")
    names = [None] if args.preset is None else presets if args.preset == "all" else [args.preset]
    check_output_dir(args.out)
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
    p.add_argument("--out", type=output_path, required=True, help="run directory to write (created with its parents; it holds one run)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run of another config or seed in --out (refused without)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_tracking_arguments(p)
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from hgadapter._io import check_output_dir
    from hgadapter.data.io import load_cache
    from hgadapter.records import format_accuracy
    from hgadapter.runner import run_experiment

    check_output_dir(args.out)  # before any work
    overrides = list(args.overrides)
    if args.engine is not None:
        overrides.append(f"engine={args.engine}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    cfg = load_config(args.variant, config_file=args.config, overrides=overrides)
    tracking = tracking_from_args(args, args.out)
    cache = load_cache(args.features, train_keys=[(args.shots, args.seed)])
    metrics = run_experiment(
        cfg, cache, shots=args.shots, seed=args.seed, out_dir=args.out, progress=not args.quiet, tracking=tracking, overwrite=args.overwrite
    )
    tag = " (synthetic task)" if metrics["synthetic"] else ""
    print(
        f"{metrics['variant']} shots={metrics['shots']} seed={metrics['seed']} engine={metrics['engine']}: "
        f"val {format_accuracy(metrics['val_acc'])}%  test {format_accuracy(metrics['test_acc'])}%{tag} -> {args.out}"
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
    from hgadapter.demo import add_demo_arguments, run_demo_command  # the body lives in hgadapter/demo.py

    p = sub.add_parser("demo", help="Base, T-N, T-P, T and full HeGraphAdapter and the baselines on the synthetic task, seeds 1-3")
    add_demo_arguments(p)
    p.set_defaults(func=run_demo_command)


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
    ("check", "check a feature cache before a sweep: zero-shot vs published, feature statistics, leaks, missing sets", "hgadapter.check", "add_check_arguments", "run_check", ()),
    ("export", "write a finished run's classifier folder (config.json, model.safetensors, model card)", "hgadapter.predict", "add_export_arguments", "run_export", ()),
    ("predict", "classify images with an exported classifier (CSV or JSON: path, label, score)", "hgadapter.predict", "add_predict_arguments", "run_predict", ()),
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
