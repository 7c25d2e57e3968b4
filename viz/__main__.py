"""Command line for :mod:`viz`: ``python -m viz tsne RUN --out FIG.png [--ntypes pos neg]``.

User errors (a missing run directory or node file, an unknown ntype or stage, a bad families
file) print one line to stderr and exit with status 2; set ``VIZ_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m viz", description="Plot what hgadapter runs saved.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("tsne", help="t-SNE of a run's node features before vs after adaptation")
    p.add_argument("run", help="run directory written by `hgadapter run` (holds nodes.safetensors)")
    p.add_argument("--out", required=True, help="figure path; .png, .pdf or .svg (coordinates go to <stem>.tsne.json)")
    p.add_argument("--ntypes", nargs="+", default=["pos"], metavar="NTYPE", help="node types to draw (default: pos)")
    p.add_argument("--stages", nargs="+", default=["initial", "adapted"], metavar="STAGE", help="one panel per stage (default: initial adapted)")
    p.add_argument("--seed", type=int, default=0, help="t-SNE seed (default: 0)")
    p.add_argument("--perplexity", type=float, default=None, help="t-SNE perplexity (default: min(30, (n - 1) / 3))")
    p.add_argument("--families", default=None, metavar="JSON", help="JSON file with one group index per class; colours show groups")
    p.add_argument("--no-normalize", dest="normalize", action="store_false", help="skip L2-normalising nodes before t-SNE")
    p.add_argument("--dpi", type=int, default=150, help="dots per inch (default: 150)")
    p.add_argument("--figsize", nargs=2, type=float, default=[10.0, 5.0], metavar=("W", "H"), help="inches (default: 10 5)")
    p.set_defaults(func=_cmd_tsne)
    return parser


def _cmd_tsne(args: argparse.Namespace) -> int:
    from viz.tsne import plot_node_tsne

    families = None
    if args.families is not None:
        path = Path(args.families)
        try:
            families = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON ({exc})") from None
        if not isinstance(families, list):
            raise ValueError(f"{path}: should be a JSON list with one group index per class")
    out = plot_node_tsne(
        args.run, args.out, ntypes=args.ntypes, stages=args.stages, seed=args.seed, families=families,
        perplexity=args.perplexity, normalize=args.normalize, dpi=args.dpi, figsize=tuple(args.figsize),
    )
    print(f"t-SNE of {', '.join(args.ntypes)} nodes ({' vs '.join(args.stages)}) -> {out} (coordinates: {out.stem}.tsne.json)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError) as exc:  # FileNotFoundError is an OSError
        if os.environ.get("VIZ_DEBUG"):
            raise
        message = " ".join(str(exc).split())  # one line, whatever the library put in it
        print(f"viz {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
