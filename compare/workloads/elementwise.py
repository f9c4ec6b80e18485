"""Memory-bound forward workloads: tanh-GELU, layer_norm, softmax.

Each is one eager function; its NumPy peer (written with an array namespace ``xp``) is also the float64
reference and, run on ``jax.numpy``, the JAX peer.
"""

from __future__ import annotations

import numpy as np

from compare.workloads import npref
from compare.workloads.registry import scripted_twin, workload

ROWS_COLS = {"small": (64, 256), "medium": (512, 1024), "large": (2048, 4096)}


def _matrix(size: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal(ROWS_COLS[size]).astype(np.float32)}


def _matrix_and_affine(size: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cols = ROWS_COLS[size][1]
    return {"x": (3.0 * rng.standard_normal(ROWS_COLS[size]) + 1.0).astype(np.float32),
            "weight": (1.0 + 0.1 * rng.standard_normal(cols)).astype(np.float32),
            "bias": (0.1 * rng.standard_normal(cols)).astype(np.float32)}


@workload(inputs=_matrix, size_names=tuple(ROWS_COLS), tags=("memory-bound",))
def tanh_gelu(lib, x):
    """GELU with the tanh approximation (GPT-2's), one fused kernel's worth of elementwise ops."""
    return lib.nn.functional.gelu(x, approximate="tanh")


@tanh_gelu.peer("numpy")
def _(xp, x):
    return npref.gelu_tanh(xp, x)


@workload(inputs=_matrix_and_affine, size_names=tuple(ROWS_COLS), tags=("memory-bound",))
def layer_norm(lib, x, weight, bias):
    """Layer normalisation over the last axis: two reductions and an affine map."""
    return lib.nn.functional.layer_norm(x, (x.shape[-1],), weight, bias, eps=1e-5)


@layer_norm.peer("numpy")
def _(xp, x, weight, bias):
    return npref.layer_norm(xp, x, weight, bias, eps=1e-5)


@workload(inputs=_matrix, size_names=tuple(ROWS_COLS), tags=("memory-bound",))
def softmax(lib, x):
    """Row softmax (max-subtracted): reduction, elementwise, reduction, elementwise."""
    return lib.nn.functional.softmax(x, dim=-1)


@softmax.peer("numpy")
def _(xp, x):
    return npref.softmax(xp, x, axis=-1)


# TorchScript twins (compare/workloads/torchscript.py), kept below so the workloads' lines stay where explain's
# doctest names them
tanh_gelu.torchscript_twin(scripted_twin("tanh_gelu", ("x",)))
softmax.torchscript_twin(scripted_twin("softmax", ("x",)))
