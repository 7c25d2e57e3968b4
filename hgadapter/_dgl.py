"""The one place hgadapter imports DGL.

PyPI's newest DGL wheel (2.1.0) ships ``dgl.graphbolt`` C++ libraries only for the torch releases
it was built against (``libgraphbolt_pytorch_<torch version>.so``). ``import dgl`` imports
``dgl.graphbolt`` eagerly, which raises when no library matches the installed torch, even though
the heterograph API we use never touches graphbolt. When, and only when, that library file is
missing we register a stub module under ``dgl.graphbolt`` before importing dgl; any attribute
access on the stub raises ``AttributeError`` so code that does need graphbolt fails loudly.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from functools import lru_cache

from hgadapter.errors import UserError

__all__ = ["import_dgl", "dgl_available", "check_dgl_device", "DGLUnavailableError"]


class DGLUnavailableError(UserError, ImportError):
    """Raised when the dgl engine is requested but dgl cannot be imported."""


class _GraphboltStub(types.ModuleType):
    def __getattr__(self, name: str):
        raise AttributeError(
            f"dgl.graphbolt.{name} is unavailable: no graphbolt library matches this torch "
            "build (hgadapter installed a stub so that the heterograph API can be used)"
        )


def _graphbolt_library_missing(dgl_dir: str) -> bool:
    import torch

    version = torch.__version__.split("+", maxsplit=1)[0]
    return not os.path.exists(os.path.join(dgl_dir, "graphbolt", f"libgraphbolt_pytorch_{version}.so"))


@lru_cache(maxsize=1)
def _import() -> tuple[types.ModuleType | None, str]:
    spec = importlib.util.find_spec("dgl")
    if spec is None or spec.origin is None:
        return None, "the 'dgl' package is not installed (pip install 'dgl>=2.1,<2.2')"
    if "dgl.graphbolt" not in sys.modules and _graphbolt_library_missing(os.path.dirname(spec.origin)):
        sys.modules["dgl.graphbolt"] = _GraphboltStub("dgl.graphbolt")
    try:
        import dgl  # noqa: PLC0415 - the single sanctioned import site
        import dgl.function  # noqa: F401
    except Exception as exc:  # dgl raises many kinds of errors when its native parts mismatch
        return None, f"'import dgl' failed: {type(exc).__name__}: {exc}"
    return dgl, ""


def dgl_available() -> bool:
    """Whether dgl can be imported in this environment."""
    return _import()[0] is not None


def import_dgl() -> types.ModuleType:
    """Return the ``dgl`` module, or raise :class:`DGLUnavailableError` saying why it is missing."""
    module, why = _import()
    if module is None:
        raise DGLUnavailableError(f"the dgl engine is unavailable: {why}; use engine 'torch' instead")
    return module


def check_dgl_device(device) -> "torch.device":
    """``device`` as a :class:`torch.device` if the installed dgl can put graphs there.

    PyPI's dgl wheels are CPU-only; a CUDA device needs a CUDA build of DGL. The check builds a
    one-edge graph on the device, which is what fails on a CPU-only build.
    """
    import torch

    dgl = import_dgl()
    device = torch.device(device)
    if device.type == "cpu":
        return device
    try:
        dgl.graph(([0], [0]), num_nodes=1, device=device)
    except Exception as exc:  # DGLError on a CPU-only build, RuntimeError without a GPU
        version = getattr(dgl, "__version__", "?")
        raise DGLUnavailableError(
            f"the installed dgl {version} cannot use {device} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "PyPI's dgl wheels are CPU-only: install a CUDA build of DGL for your torch and CUDA versions "
            "(see dgl.ai's install page), or use engine 'torch' on this device"
        ) from None
    return device
