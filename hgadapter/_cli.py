"""Running an argparse command line with one-line user errors (``hgadapter`` and ``python -m viz``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["run_command_line", "USER_ERRORS_ATTR"]

# A subcommand may add exception types that count as user errors for it alone
# (``parser.set_defaults(**{USER_ERRORS_ATTR: (ValueError,)})``), e.g. a module that reports bad
# input as ValueError because it does not depend on hgadapter's error types.
USER_ERRORS_ATTR = "extra_user_errors"


def output_path(text: str) -> str:
    """argparse type of an output folder: a non-empty path (``--out ""`` would write into the
    current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder path, got an empty string")
    return text


def run_command_line(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    prog: str,
    user_errors: tuple[type[BaseException], ...],
    debug_env: str,
) -> int:
    """Parse ``argv`` and call the chosen command's ``func(args)``.

    A ``user_errors`` exception (or one of the command's own, see ``USER_ERRORS_ATTR``) prints
    ``<prog> <command>: error: <one line>`` to stderr and gives exit status 2 (the traceback only
    when ``$debug_env`` is set); no command prints the help, 2. Any other exception is a bug and
    propagates with its traceback.
    """
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    caught = (*user_errors, *getattr(args, USER_ERRORS_ATTR, ()))
    try:
        return int(args.func(args) or 0)
    except caught as exc:
        if os.environ.get(debug_env):
            raise
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)  # KeyError quotes its message
        message = " ".join(text.split())  # one line, whatever the library put in it
        print(f"{prog} {args.command}: error: {message}", file=sys.stderr)
        return 2
