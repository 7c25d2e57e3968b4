"""Comparable few-shot methods on cached CLIP features, looked up by name.

Every method fits and selects its hyper-parameters on :class:`~hgadapter.protocol.SelectionData`
(few-shot training set + validation split) through :meth:`Method.fit` and returns a
:class:`~hgadapter.protocol.Fitted`; :func:`hgadapter.runner.run_method` then reads the test split
once per run. HeGraphAdapter (``hegraphadapter``, ``hegraphadapter:<variant>``) is one entry
among them. The methods, their
formulas, sources and defaults are described in docs/baselines.md; their configs live in
``experiments/methods/<name>.yaml``.

    >>> from hgadapter.methods import create_method, list_methods
    >>> method = create_method("tip_adapter", overrides=["alpha=0"])
"""

from hgadapter.methods._registry import Method, create_method, list_methods, load_method_config, method_class, method_from_config, methods_dir, register_method

# Importing a module registers its method; this order is list_methods()'s order.
from hgadapter.methods import zero_shot  # noqa: E402,F401  isort: skip
from hgadapter.methods import linear_probe  # noqa: E402,F401  isort: skip
from hgadapter.methods import tip_adapter  # noqa: E402,F401  isort: skip
from hgadapter.methods import tip_adapter_f  # noqa: E402,F401  isort: skip
from hgadapter.methods import gda  # noqa: E402,F401  isort: skip
from hgadapter.methods import taskres  # noqa: E402,F401  isort: skip
from hgadapter.methods import clip_adapter  # noqa: E402,F401  isort: skip
from hgadapter.methods import graphadapter  # noqa: E402,F401  isort: skip
from hgadapter.methods import lp_plus_plus  # noqa: E402,F401  isort: skip
from hgadapter.methods import clap  # noqa: E402,F401  isort: skip
from hgadapter.methods import proker  # noqa: E402,F401  isort: skip
from hgadapter.methods import coop  # noqa: E402,F401  isort: skip
from hgadapter.methods import proto_clip  # noqa: E402,F401  isort: skip
from hgadapter.methods import ape  # noqa: E402,F401  isort: skip
from hgadapter.methods import timo  # noqa: E402,F401  isort: skip
from hgadapter.methods import hegraphadapter  # noqa: E402,F401  isort: skip

__all__ = ["Method", "create_method", "list_methods", "load_method_config", "method_class", "method_from_config", "methods_dir", "register_method"]
