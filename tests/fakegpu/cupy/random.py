"""``cupy.random`` of the fake CuPy: ``default_rng`` (NumPy's generator; no ``permutation``, as in CuPy)."""

from __future__ import annotations

import numpy as _np

import cupy


class Generator:
    def __init__(self, seed=None):
        self._rng = _np.random.default_rng(seed)

    # draws are device work (CuPy's Generator runs its own kernels on state in device memory): a captured
    # draw draws again at each replay
    def random(self, size=None, dtype=_np.float64, out=None):
        return cupy._apply(self._rng.random, (size,), {"dtype": dtype})

    def standard_normal(self, size=None, dtype=_np.float64, out=None):
        return cupy._apply(self._rng.standard_normal, (size,), {"dtype": dtype})

    def integers(self, low, high=None, size=None, dtype=_np.int64, endpoint=False):
        return cupy._apply(self._rng.integers, (low, high), {"size": size, "dtype": dtype, "endpoint": endpoint})


def default_rng(seed=None) -> Generator:
    return Generator(seed)
