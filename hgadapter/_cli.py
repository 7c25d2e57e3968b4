"""Running an argparse command line with one-line user errors (``hgadapter`` and ``python -m viz``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["run_command_line", "USER_ERRORS_ATTR", "LazySubParsers", "fill_all", "output_path"]

# A subcommand may add exception types that count as user errors for it alone
# (``parser.set_defaults(**{USER_ERRORS_ATTR: (ValueError,)})``), e.g. a module that reports bad
# input as ValueError because it does not depend on hgadapter's error types.
USER_ERRORS_ATTR = "extra_user_errors"


class LazySubParsers(argparse._SubParsersAction):
    """Subcommands whose arguments are added only when the command is chosen.

    ``hgadapter --help`` lists every command from its name and help line alone, so it imports
    none of the modules that define the commands' options (and, through them, torch,
    transformers, dgl, matplotlib). ``add_lazy_parser(name, fill=f, help=...)`` registers a
    command; ``f(subparser)`` adds its arguments when the command line names it (or when
    :func:`fill_all` asks).

    Use as ``parser.add_subparsers(action=LazySubParsers, ...)``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fill: dict[str, Callable[[argparse.ArgumentParser], None]] = {}

    def add_lazy_parser(self, name: str, *, fill: Callable[[argparse.ArgumentParser], None], **kwargs) -> argparse.ArgumentParser:
        parser = self.add_parser(name, **kwargs)
        self._fill[name] = fill
        return parser

    def fill(self, name: str) -> argparse.ArgumentParser:
        """Add command ``name``'s arguments (once) and return its parser."""
        parser = self._name_parser_map[name]
        fill = self._fill.pop(name, None)
        if fill is not None:
            fill(parser)
        return parser

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        self.fill(values[0])  # argparse has checked that values[0] is a command's name
        super().__call__(parser, namespace, values, option_string)


def fill_all(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser of ``parser`` with its arguments added (for tests and docs)."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, LazySubParsers):
            out.update((name, action.fill(name)) for name in list(action.choices))
        elif isinstance(action, argparse._SubParsersAction):
            out.update(action.choices)
    return out


class _Once(argparse.Action):
    """Store the value; a second, different value for the same destination is an error."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        before = getattr(namespace, self.dest, None)
        if before is not None and before != values:
            parser.error(f"{self.metavar} given twice ({before!r} and {values!r}); give it once")
        setattr(namespace, self.dest, values)


def add_positional_or_option(parser: argparse.ArgumentParser, dest: str, option: str, *, metavar: str, help: str) -> None:
    """One required value that ``parser`` takes either as a positional ``METAVAR`` or as ``option METAVAR``.

    ``hgadapter check CACHE`` and ``hgadapter check --features CACHE`` (the other commands'
    spelling) are the same; giving neither is an argparse error naming both.
    """
    parser.add_argument(dest, nargs="?", default=argparse.SUPPRESS, metavar=metavar, action=_Once, help=f"{help} (or {option} {metavar})")
    parser.add_argument(option, dest=dest, default=None, metavar=metavar, action=_Once, help=f"the same as the positional {metavar}")
    parse_known_args = parser.parse_known_args  # argparse cannot require "one of a positional and an option" itself

    def parse_requiring_one(args=None, namespace=None):
        namespace, extras = parse_known_args(args, namespace)
        if getattr(namespace, dest, None) is None:
            parser.error(f"the following arguments are required: {metavar} (or {option} {metavar})")
        return namespace, extras

    parser.parse_known_args = parse_requiring_one


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
