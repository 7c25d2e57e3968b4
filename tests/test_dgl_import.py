"""The single dgl import site and its graphbolt stub."""

import sys

import pytest

from hgadapter import _dgl


def test_dgl_imports_here():
    dgl = _dgl.import_dgl()
    assert hasattr(dgl, "heterograph")
    assert _dgl.dgl_available()


def test_graphbolt_stub_raises_attribute_error_when_installed():
    _dgl.import_dgl()
    graphbolt = sys.modules.get("dgl.graphbolt")
    if not isinstance(graphbolt, _dgl._GraphboltStub):
        pytest.skip("a real graphbolt library matches this torch; no stub installed")
    with pytest.raises(AttributeError, match="graphbolt"):
        graphbolt.ItemSampler  # noqa: B018


def test_missing_dgl_gives_clear_error(monkeypatch):
    monkeypatch.setattr(_dgl, "_import", lambda: (None, "the 'dgl' package is not installed"))
    with pytest.raises(_dgl.DGLUnavailableError, match="dgl engine is unavailable.*not installed.*torch"):
        _dgl.import_dgl()
