"""Thread control for NumPy's BLAS (OpenBLAS) around small matmuls.

Whether a small matmul (a 64x784x256 layer) gains from a second BLAS thread depends on the machine's load, so
no fixed choice is right. Measured on one 2-core VM, MLP train step: quiet, 0.47 ms with 2 BLAS threads and
0.72 ms with one; under steal from other tenants, 12-40 ms with 2 and 1.4 ms with one (OpenBLAS threads
spin-wait on a descheduled core). So a program whose matmuls are all small (below
``GRAPHDUEL_BLAS_SMALL_FLOPS``) times its own calls under each thread count and keeps the faster
(``ThreadTuner``), re-checking now and then. ``GRAPHDUEL_BLAS_THREADS=N`` fixes the count instead;
``GRAPHDUEL_BLAS_SMALL_FLOPS=0`` leaves BLAS alone.

    >>> small_matmul_flops() > 0
    True
"""

from __future__ import annotations

import ctypes
import functools
import os
import statistics
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

_SETTERS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads")


def small_matmul_flops() -> int:
    return int(os.environ.get("GRAPHDUEL_BLAS_SMALL_FLOPS", 1 << 26))


class OpenBlas(NamedTuple):
    """The thread controls of the OpenBLAS NumPy loaded."""

    set_threads: Callable[[int], None]
    get_threads: Callable[[], int]


@functools.cache
def _openblas() -> OpenBlas | None:
    """The thread controls of the OpenBLAS NumPy loaded, or None."""
    from eager.blas import openblas_library
    lib = openblas_library()
    setter = next((getattr(lib, n) for n in _SETTERS if lib is not None and hasattr(lib, n)), None)
    getter = next((getattr(lib, n) for n in _GETTERS if lib is not None and hasattr(lib, n)), None)
    if setter is None or getter is None:
        return None
    setter.argtypes, getter.restype = [ctypes.c_int], ctypes.c_int
    return OpenBlas(setter, getter)


def current_threads() -> int | None:
    """How many threads OpenBLAS uses now; None without OpenBLAS."""
    api = _openblas()
    return None if api is None else api.get_threads()


class BlasThreads:
    """``with BlasThreads(1): ...`` runs BLAS calls on one thread, restoring the count after (no-op without
    OpenBLAS or with ``n=None``)."""

    __slots__ = ("n", "saved", "api")

    def __init__(self, n: int | None):
        self.api = _openblas() if n is not None else None
        self.n, self.saved = n, None

    def __enter__(self):
        if self.api is not None:
            self.saved = self.api.get_threads()
            if self.saved != self.n:
                self.api.set_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.api is not None and self.saved != self.n:
            self.api.set_threads(self.saved)
        return False


def threads_for(program) -> int | str | None:
    """How to thread the program's BLAS calls: None (BLAS decides) when some matmul is large or the control
    is off, a fixed count from ``GRAPHDUEL_BLAS_THREADS``, else ``"auto"`` (see ``ThreadTuner``)."""
    limit = small_matmul_flops()
    flops = [2 * n.args[0].shape[-1] * _numel(n.shape) for s in program.steps if s.kind == "library"
             for n in [s.node]]
    if not (flops and limit and max(flops) < limit) or (current_threads() or 0) < 2:
        return None
    fixed = os.environ.get("GRAPHDUEL_BLAS_THREADS", "auto")
    if fixed == "auto":
        return "auto"
    if not fixed.isdigit() or int(fixed) < 1:
        raise ValueError(f"GRAPHDUEL_BLAS_THREADS={fixed!r}: expected a positive thread count or 'auto'")
    return int(fixed)


class ThreadTuner:
    """Picks between BLAS thread counts by timing the calls it is asked about.

    Calls alternate between the options until each has ``samples`` timings; the option with the lower median
    wins. Every ``period`` calls the losers get ``recheck`` calls again, and the median of those is compared
    with the winner's recent median, so a change of load changes the choice. The period doubles while the
    winner holds (up to ``max_period``): a rarely right option costs little once it is known to lose.

        >>> t = ThreadTuner((1, 2), samples=2)
        >>> for _ in range(4):
        ...     n = t.choice()
        ...     t.record(n, 1.0 if n == 1 else 3.0)
        >>> t.best
        1
    """

    def __init__(self, options: tuple = (1, None), samples: int = 5, recheck: int = 3, period: int = 128,
                 max_period: int = 8192):
        self.options, self.samples, self.recheck = tuple(options), samples, recheck
        self.base_period, self.max_period, self.period = period, max_period, period
        self.times = {o: deque(maxlen=16) for o in self.options}
        self.decided = False
        self.best = None
        self.calls_since = 0
        self.queue: list = []  # options still to run in the current check
        self.fresh: dict = {}  # their timings

    def choice(self):
        if not self.decided:
            return min(self.options, key=lambda o: len(self.times[o]))
        if not self.queue and self.calls_since >= self.period:
            self.queue = [o for o in self.options if o != self.best for _ in range(self.recheck)]
            self.fresh = {o: [] for o in self.options}
        return self.queue[0] if self.queue else self.best

    def record(self, option, seconds: float) -> None:
        self.times[option].append(seconds)
        if not self.decided:
            if all(len(t) >= self.samples for t in self.times.values()):
                self.best = min(self.options, key=lambda o: statistics.median(self.times[o]))
                self.decided = True
            return
        if not self.queue:
            self.calls_since += 1
            return
        self.queue.pop(0)
        self.fresh[option].append(seconds)
        if not self.queue:
            self._decide()

    def _decide(self) -> None:
        held = statistics.median(self.times[self.best])
        rival = min((o for o in self.options if o != self.best), key=lambda o: statistics.median(self.fresh[o]))
        if statistics.median(self.fresh[rival]) < 0.9 * held:
            self.best, self.period = rival, self.base_period
        else:
            self.period = min(2 * self.period, self.max_period)
        self.calls_since = 0


def _numel(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out
