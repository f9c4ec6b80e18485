"""``cupy.random`` of the fake CuPy: NumPy's generators, results on the device."""

from __future__ import annotations

import numpy as _np

import cupy


class Generator:
    def __init__(self, seed=None):
        self._rng = _np.random.default_rng(seed)

    def random(self, size=None, dtype=_np.float64, out=None):
        return cupy.asarray(self._rng.random(size, dtype=dtype))

    def standard_normal(self, size=None, dtype=_np.float64, out=None):
        return cupy.asarray(self._rng.standard_normal(size, dtype=dtype))

    def integers(self, low, high=None, size=None, dtype=_np.int64, endpoint=False):
        return cupy.asarray(self._rng.integers(low, high, size=size, dtype=dtype, endpoint=endpoint))


def default_rng(seed=None) -> Generator:
    return Generator(seed)
