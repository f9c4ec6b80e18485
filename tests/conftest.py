"""Shared pytest configuration: the fuzzer's budget option and device markers."""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true", default=False,
                     help="run the differential fuzzer with thousands of programs instead of a few hundred")


@pytest.fixture(scope="session")
def fuzz_examples(request) -> int:
    """How many random programs each fuzz property checks (CI: a few hundred in total)."""
    return 2000 if request.config.getoption("--fuzz-long") else 120
