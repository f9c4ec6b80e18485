"""The example's conftest: only the planted slowdown that shows the gate failing (not something a user writes).

``GRAPHDUEL_EXAMPLE_SLOWDOWN=2`` makes every call of compiled mode take twice as long (it waits as long again
as the call took, so results and training state are untouched): the compiled/eager time ratio doubles, and
``--graphduel-baseline`` fails the tests with the gate's table.
"""

from __future__ import annotations

import dataclasses
import os
import time

import pytest


@pytest.fixture(autouse=True)
def planted_slowdown(monkeypatch):
    factor = float(os.environ.get("GRAPHDUEL_EXAMPLE_SLOWDOWN", "1"))
    if factor <= 1:
        return
    from compare.modes import MODES
    spec = MODES["compiled"]

    def slow_prepare(wl, arrays, device):
        runner = spec.prepare(wl, arrays, device)
        call = runner.call

        def slow():
            t0 = time.perf_counter()
            out = call()
            until = t0 + factor * (time.perf_counter() - t0)
            while time.perf_counter() < until:  # a busy wait: sleep() is too coarse for calls of microseconds
                pass
            return out
        runner.call = slow
        return runner
    monkeypatch.setitem(MODES, "compiled", dataclasses.replace(spec, prepare=slow_prepare))
