"""Where the shipped YAML lives: a source checkout, an installed wheel, or an override.

The user-editable definitions sit at the top of the repository (``metapaths/``,
``experiments/methods/``, ``experiments/paper_results.yaml``). A wheel installs copies under
``<prefix>/share/hgadapter/`` (``[tool.setuptools.data-files]`` in pyproject.toml), so a plain
``pip install`` finds them too. An environment variable names another location.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

__all__ = ["resource_path"]

_CHECKOUT = Path(__file__).resolve().parent.parent  # the repository root in a source checkout
_SHARE = ("share", "hgadapter")


def _installed_roots() -> list[Path]:
    roots = [Path(sysconfig.get_path("data")), Path(sys.prefix)]
    user = sysconfig.get_path("data", f"{os.name}_user") if os.name == "posix" else None
    if user:
        roots.append(Path(user))
    return [root.joinpath(*_SHARE) for root in roots]


def resource_path(relative: str, env: str) -> Path:
    """``$env`` if set, else the checkout's ``relative``, else the installed copy.

    When nothing exists, the checkout path is returned so that the caller's "not found" message
    names the place a user would look first.
    """
    override = os.environ.get(env)
    if override:
        return Path(override)
    checkout = _CHECKOUT / relative
    if checkout.exists():
        return checkout
    for root in _installed_roots():
        if (root / relative).exists():
            return root / relative
    return checkout
