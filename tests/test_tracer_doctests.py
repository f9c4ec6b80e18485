"""Every docstring example in tracer/ runs and prints what it says."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import tracer

MODULES = sorted(m.name for m in pkgutil.iter_modules(tracer.__path__, "tracer."))


@pytest.mark.parametrize("name", ["tracer"] + MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
