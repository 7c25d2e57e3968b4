"""The base class of every error caused by what a user gave (a file, a name, a value).

The command line prints a :class:`UserError` as one line and exits with status 2; any other
exception is a bug and shows its traceback. Each module keeps its own subclass beside the code
that raises it (:class:`~hgadapter.config.ConfigError`, :class:`~hgadapter.data.cache.CacheError`,
:class:`~hgadapter.records.RecordError`, ...), so ``except UserError`` catches them all.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """Bad user input: a missing or invalid file, an unknown name, an impossible value.

    A ``ValueError`` so that code written before this class (``except ValueError``) still works.
    """
