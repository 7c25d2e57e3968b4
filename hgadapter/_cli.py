"""Running an argparse command line with one-line user errors (``hgadapter`` and ``python -m viz``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["run_command_line"]


def run_command_line(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    prog: str,
    user_errors: tuple[type[BaseException], ...],
    debug_env: str,
) -> int:
    """Parse ``argv`` and call the chosen command's ``func(args)``.

    A ``user_errors`` exception prints ``<prog> <command>: error: <one line>`` to stderr and gives
    exit status 2 (the traceback only when ``$debug_env`` is set); no command prints the help, 2.
    """
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except user_errors as exc:
        if os.environ.get(debug_env):
            raise
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)  # KeyError quotes its message
        message = " ".join(text.split())  # one line, whatever the library put in it
        print(f"{prog} {args.command}: error: {message}", file=sys.stderr)
        return 2
