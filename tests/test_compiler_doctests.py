"""The compiler's docstring examples run (they are its smallest specifications)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import compiler

MODULES = sorted(m.name for m in pkgutil.walk_packages(compiler.__path__, "compiler.")
                 if m.name not in ("compiler.bench", "compiler.__main__"))


@pytest.fixture(autouse=True)
def kernel_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GRAPHDUEL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "graphduel-cache"))


@pytest.mark.parametrize("name", ["compiler"] + MODULES)
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
