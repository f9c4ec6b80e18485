"""Random number generators: one default per device, reseeded by ``manual_seed``; explicit ``Generator``s.

    >>> import eager
    >>> _ = eager.manual_seed(0); a = eager.randn(2).tolist()
    >>> _ = eager.manual_seed(0); a == eager.randn(2).tolist()
    True
"""

from __future__ import annotations

import numpy as np

from eager import backend

_generators: dict = {}


class Generator:
    """An explicit random stream, as ``torch.Generator``."""

    def __init__(self, device="cpu", seed: int = 0):
        self.device = backend.canonical_device(device)
        self.manual_seed(seed)

    def manual_seed(self, seed: int) -> Generator:
        xp = backend.namespace(self.device)
        self._rng = xp.random.default_rng(seed)
        return self

    def random(self, shape, dtype):
        return self._rng.random(shape, dtype=dtype)

    def standard_normal(self, shape, dtype):
        return self._rng.standard_normal(shape, dtype=dtype)

    def integers(self, low, high, shape):
        return self._rng.integers(low, high, size=shape, dtype=np.int64)

    def permutation(self, n: int):
        if hasattr(self._rng, "permutation"):
            return self._rng.permutation(n).astype(np.int64)
        # CuPy's Generator has no permutation: the order that sorts n uniform draws is a uniform permutation
        return self._rng.random(n).argsort().astype(np.int64)


def default_generator(device) -> Generator:
    device = backend.canonical_device(device)
    if device not in _generators:
        _generators[device] = Generator(device, seed=0)
    return _generators[device]


def manual_seed(seed: int) -> Generator:
    """Reseed the default generator of every device (CUDA only once it has been used)."""
    for device in {backend.CPU, *_generators}:
        default_generator(device).manual_seed(seed)
    return default_generator(backend.CPU)
