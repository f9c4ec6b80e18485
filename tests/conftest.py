"""Shared pytest configuration: the fuzzer's budget option, the ``--soak`` option and the ``gpu`` marker.

A test marked ``gpu`` runs where CuPy sees a GPU: the real one on a GPU machine, or the fake CuPy of
``tests/fakegpu`` (which ``tests/test_fake_gpu.py`` puts on the path of a child pytest, so CI runs every GPU test
without a GPU). Elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import pytest

import eager


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true", default=False,
                     help="run the differential fuzzer with thousands of programs instead of a few hundred")
    parser.addoption("--soak", action="store_true", default=False,
                     help="run the soak tests (tests/test_scale.py): 10,000 compiled train steps and a retrace storm, "
                          "checking that memory, file descriptors and loaded libraries stay flat (minutes)")


def pytest_collection_modifyitems(config, items):
    if eager.cuda_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA GPU (eager.cuda_available() is False); "
                                   "tests/test_fake_gpu.py runs it on the fake GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fuzz_examples(request) -> int:
    """How many random programs each fuzz property checks (CI: a few hundred in total)."""
    return 2000 if request.config.getoption("--fuzz-long") else 120
