"""Every user-error type derives from hgadapter.errors.UserError (the CLI prints those in one line)."""

import importlib

import pytest

from hgadapter.errors import UserError

ERRORS = [
    ("hgadapter.config", "ConfigError"),
    ("hgadapter.data.cache", "CacheError"),
    ("hgadapter.records", "RecordError"),
    ("hgadapter.paper_results", "ReportError"),
    ("hgadapter.extract.datasets", "DataError"),
    ("hgadapter.extract.prompts", "PromptError"),
    ("hgadapter.extract.encoders", "EncoderError"),
    ("hgadapter.extract.options", "ExtractError"),
    ("hgadapter._dgl", "DGLUnavailableError"),
]


@pytest.mark.parametrize("module, name", ERRORS, ids=[n for _, n in ERRORS])
def test_user_errors_share_one_base(module, name):
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, UserError)
    assert issubclass(cls, ValueError) or name == "DGLUnavailableError"  # `except ValueError` written before UserError still works


def test_dgl_unavailable_is_still_an_import_error():
    from hgadapter._dgl import DGLUnavailableError

    assert issubclass(DGLUnavailableError, ImportError)
