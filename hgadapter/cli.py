"""Command line: ``hgadapter {synth,run,variants,methods,demo,compare,sweep,report,figures,tsne,extract,check,export,predict}``.

One grammar across commands: ``--features CACHE`` (``check`` also takes it positionally),
``--method``/``--methods`` with a registry id (``hegraphadapter:t``; ``run --variant t`` is the
same), ``--shots``, ``--seeds`` (``run --seed`` still works), ``--config [METHOD=]FILE`` and
``--set [METHOD.]KEY=VALUE``, ``--out``.

Start-up is cheap: this module imports no torch. Each command's arguments are added only when
the command line names it (:class:`hgadapter._cli.LazySubParsers`), so ``hgadapter --help`` and
argparse errors import neither the command modules nor torch, transformers, dgl or matplotlib.

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

from hgadapter import __version__
from hgadapter._cli import USER_ERRORS_ATTR, LazySubParsers, output_path, run_command_line
from hgadapter.config import ConfigError, echo, list_variants, load_config, load_variant, parse_override
from hgadapter.errors import UserError
from hgadapter.tracking import add_tracking_arguments, tracking_from_args


# What ends in a one-line message: every error type derived from UserError, and file-system
# errors (their message names the path). Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError)


# ---------------------------------------------------------------------------------------------


def _add_synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=output_path, required=True, help="cache directory to write (with --preset all: one sub-folder per task)")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="a development-suite task of experiments/suite/tasks.yaml, or 'all' for every one; "
                        "the other options override its fields")
    p.add_argument("--seed", type=int, default=None, help="generator seed (default: the demo task's)")
    p.add_argument("--classes", type=int, default=None, help="number of classes C")
    p.add_argument("--dim", type=int, default=None, help="feature dimension d")
    p.add_argument("--families", type=int, default=None, help="number of confusable class families")
    p.add_argument("--shots", type=int, nargs="+", default=None, help="few-shot sizes K to write (default: 1 2 4 8 16, or the preset's)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="sampling seeds to write (default: 1 2 3, or the preset's)")
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


_ENGINES = ("auto", "dgl", "torch")
_HEGRAPHADAPTER = "hegraphadapter"  # the registry id whose variants `run --variant` names


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", required=True, help="feature cache directory (docs/feature-cache.md)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--method", default=None, metavar="METHOD",
                       help="a method id of `hgadapter methods`, e.g. tip_adapter or hegraphadapter:t (default: hegraphadapter, the full variant)")
    which.add_argument("--variant", default=None,
                       help=f"a HeGraphAdapter variant {list_variants()} or a variant YAML path; --variant t is --method hegraphadapter:t (default: full)")
    p.add_argument("--shots", type=int, required=True, help="K, images per class (required)")
    p.add_argument("--seeds", "--seed", dest="seed", type=int, nargs="+", required=True, metavar="SEED",
                   help="few-shot sampling seed, also seeding training (required; one: a run is one seed, `compare` runs several)")
    p.add_argument("--engine", choices=_ENGINES, default=None, help="HeGraphAdapter's message-passing engine (default: the config's, auto)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: the config's, auto = CUDA when available)")
    p.add_argument("--config", default=None, metavar="[METHOD=]FILE",
                   help="YAML over the method's config: for HeGraphAdapter an experiment file (train/eval/engine/... sections)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.lr=0.01 (repeatable)")
    p.add_argument("--out", type=output_path, required=True, help="run directory to write (created with its parents; it holds one run)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run of another config or seed in --out (refused without)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_tracking_arguments(p)


def _run_config_file(text: str | None, method: str) -> str | None:
    """``--config FILE`` or ``--config METHOD=FILE`` (compare's spelling) with METHOD the run's method."""
    if text is None or Path(text).is_file() or "=" not in text:
        return text
    name, _, path = text.partition("=")
    if name != method:
        raise ConfigError(f"--config {echo(text, bare=True)}: this run's method is {method!r}; give --config FILE or --config {method}=FILE")
    return path


def _cmd_run(args: argparse.Namespace) -> int:
    from hgadapter._io import check_output_dir
    from hgadapter.data.io import load_cache
    from hgadapter.records import format_accuracy
    from hgadapter.runner import run_experiment, run_method

    check_output_dir(args.out)  # before any work
    if len(args.seed) != 1:
        raise ConfigError(f"--seeds {' '.join(map(str, args.seed))}: a run is one seed; for several use "
                          f"`hgadapter compare --methods METHOD --seeds {' '.join(map(str, args.seed))}`")
    seed = args.seed[0]
    method, variant = args.method, args.variant
    family, _, named_variant = (method or _HEGRAPHADAPTER).partition(":")
    if family == _HEGRAPHADAPTER and variant is None:
        variant = named_variant or None  # `--method hegraphadapter:t` is `--variant t`
    overrides = list(args.overrides)
    config_file = _run_config_file(args.config, (method or _HEGRAPHADAPTER) if variant is None else f"{_HEGRAPHADAPTER}:{variant}")
    if args.engine is not None:
        if family != _HEGRAPHADAPTER:
            raise ConfigError(f"--engine {args.engine}: only HeGraphAdapter passes messages on a graph; {method!r} has no engine")
        overrides.append(f"engine={args.engine}")
    tracking = tracking_from_args(args, args.out)
    if family == _HEGRAPHADAPTER:
        if args.device is not None:
            overrides.append(f"device={args.device}")
        cfg = load_config(variant, config_file=config_file, overrides=overrides)
        cache = load_cache(args.features, train_keys=[(args.shots, seed)])
        metrics = run_experiment(
            cfg, cache, shots=args.shots, seed=seed, out_dir=args.out, progress=not args.quiet, tracking=tracking, overwrite=args.overwrite
        )
    else:  # any other registered method, through the same fit -> select on validation -> test once path
        from hgadapter.methods import create_method

        fitter = create_method(method, config_file=config_file, overrides=overrides)
        cache = load_cache(args.features, train_keys=[(args.shots, seed)])
        metrics = run_method(fitter, cache, shots=args.shots, seed=seed, out_dir=args.out, device=args.device,
                             progress=not args.quiet, tracking=tracking, overwrite=args.overwrite)
    tag = " (synthetic task)" if metrics["synthetic"] else ""
    engine = f" engine={metrics['engine']}" if "engine" in metrics else ""
    print(
        f"{metrics.get('variant', metrics['method'])} shots={metrics['shots']} seed={metrics['seed']}{engine}: "
        f"val {format_accuracy(metrics['val_acc'])}%  test {format_accuracy(metrics['test_acc'])}%{tag} -> {args.out}"
    )
    return 0


# ---------------------------------------------------------------------------------------------


def _add_variants(p: argparse.ArgumentParser) -> None:
    pass  # no options


def _cmd_variants(args: argparse.Namespace) -> int:
    for name in list_variants():
        variant = load_variant(name)
        paths = "; ".join(
            f"{s.target}<-" + ",".join(m.name for m in s.metapaths) for s in variant.stages
        ) or "no stages"
        print(f"{name:6s} {variant.classifier:10s} {paths:45s} {variant.description}")
    return 0


# ---------------------------------------------------------------------------------------------


def _add_methods(p: argparse.ArgumentParser) -> None:
    pass  # no options


def _cmd_methods(args: argparse.Namespace) -> int:
    """Every method id that --method/--methods take, its display name, what it is, and where it runs by default."""
    from hgadapter.compare import DEFAULT_METHODS
    from hgadapter.demo import demo_methods
    from hgadapter.methods import list_methods, method_class
    from hgadapter.paper_results import PaperResults, ReportError, load_paper_results

    try:
        names = PaperResults(load_paper_results())
    except ReportError:  # display names are a nicety; the ids still work
        names = PaperResults(None)
    demo = set(demo_methods())
    rows = []
    for method in list_methods():
        family, _, variant = method.partition(":")
        if family == _HEGRAPHADAPTER:
            what = load_variant(variant or "full").description
        else:
            doc = (sys.modules[method_class(method).__module__].__doc__ or "").strip()
            what = doc.splitlines()[0] if doc else ""
        where = ", ".join(w for w, on in (("demo", method in demo), ("compare", method in DEFAULT_METHODS)) if on) or "-"
        rows.append((method, names.display("methods", method), where, what))
    widths = [max(len(r[i]) for r in rows + [("METHOD", "NAME", "DEFAULT IN", "")]) for i in range(3)]
    print(f"{'METHOD':{widths[0]}}  {'NAME':{widths[1]}}  {'DEFAULT IN':{widths[2]}}  DESCRIPTION")
    for row in rows:
        print(f"{row[0]:{widths[0]}}  {row[1]:{widths[1]}}  {row[2]:{widths[2]}}  {row[3]}")
    return 0


def _add_demo(p: argparse.ArgumentParser) -> None:
    from hgadapter.demo import add_demo_arguments, run_demo_command  # the body lives in hgadapter/demo.py (no torch at import)

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


def _delegated_filler(module: str, add: str, run: str, errors: tuple[type[BaseException], ...]):
    def fill(p: argparse.ArgumentParser) -> None:
        # No try/except ImportError: every dependency is required, so a module that fails to import
        # is a bug, and its traceback beats the command vanishing as "invalid choice".
        mod = importlib.import_module(module)
        getattr(mod, add)(p)
        p.set_defaults(func=getattr(mod, run), **{USER_ERRORS_ATTR: errors})

    return fill


def _local_filler(add, run):
    def fill(p: argparse.ArgumentParser) -> None:
        add(p)
        p.set_defaults(func=run)

    return fill


def build_parser() -> argparse.ArgumentParser:
    """The ``hgadapter`` parser; each command's arguments are added when the command is parsed
    (:func:`hgadapter._cli.fill_all` adds them all)."""
    parser = argparse.ArgumentParser(prog="hgadapter", description="Few-shot CLIP adaptation with heterogeneous graph adapters.")
    parser.add_argument("--version", action="version", version=f"hgadapter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", action=LazySubParsers)
    local = (
        ("synth", "write the synthetic CLIP-like task as a feature cache", _add_synth, _cmd_synth),
        ("run", "train and evaluate one method (default: HeGraphAdapter) on one (cache, shots, seed)", _add_run, _cmd_run),
        ("variants", "list the shipped meta-path variants", _add_variants, _cmd_variants),
        ("methods", "list the method ids that --method / --methods take, with display names", _add_methods, _cmd_methods),
    )
    for name, help, add, run in local:
        sub.add_lazy_parser(name, help=help, fill=_local_filler(add, run))
    sub.add_lazy_parser(
        "demo", fill=_add_demo,
        help="the ablation (Base, T-N, T-P, T, full) and the strongest baselines on the synthetic task, seeds 1-3 (--all: every method)",
    )
    for name, help, module, add, run, errors in _DELEGATED:
        sub.add_lazy_parser(name, help=help, fill=_delegated_filler(module, add, run, errors))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command_line(build_parser(), argv, prog="hgadapter", user_errors=USER_ERRORS, debug_env="HGADAPTER_DEBUG")

if __name__ == "__main__":
    sys.exit(main())
