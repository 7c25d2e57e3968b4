"""Command line for :mod:`viz`.

- ``python -m viz tsne RUN [--out FIG] [--classes 20] [--ntypes pos neg] ...``: the t-SNE figure;
- ``python -m viz figures RUNS_DIR [--out DIR]``: every figure the runs' records support.

The same commands are ``hgadapter tsne RUN`` (or ``--run RUN``) and ``hgadapter figures
RUNS_DIR``. User errors (a missing run directory or node file, an unknown ntype or stage, a runs directory without runs)
print one line to stderr and exit with status 2; set ``VIZ_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from viz.curves import add_figures_arguments, run_figures_command
    from viz.tsne import add_tsne_arguments, run_tsne_command

    parser = argparse.ArgumentParser(prog="python -m viz", description="Plot what hgadapter runs saved.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("tsne", help="t-SNE of a run's node features before vs after adaptation (the paper's Fig. 3)")
    add_tsne_arguments(p, positional_run=True)
    p.set_defaults(func=run_tsne_command)

    p = sub.add_parser("figures", help="accuracy vs shots, sensitivity and training curves of a folder of runs")
    add_figures_arguments(p)
    p.set_defaults(func=run_figures_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from hgadapter._cli import run_command_line  # imports no torch

    # FileNotFoundError is an OSError
    return run_command_line(build_parser(), argv, prog="viz", user_errors=(OSError, ValueError), debug_env="VIZ_DEBUG")

if __name__ == "__main__":
    sys.exit(main())
