"""compiler: optimise the traced IR, fuse it into few kernels, lower to C (CPU), CUDA (GPU) or XLA.

Pipeline (one module per idea): ``passes/`` (simplify, fold, cse, dce: Graph -> Graph, each validated) ->
``fusion`` (groups, with fuel) -> ``kernel`` (a group as an expression DAG over affine ``views``) ->
``program`` + ``memory`` (host steps, buffer slots, in-place) -> ``codegen`` (one expression renderer over the
op table's ``c_expr``; ``c`` and ``cuda`` loop skeletons) -> ``runtime`` (disk cache, ctypes/CuPy executables,
NumPy fallback) or ``xla`` (jax.jit). ``report`` and ``bench`` measure it.

Environment: ``GRAPHDUEL_CACHE_DIR`` (kernel cache), ``GRAPHDUEL_FUSION_FUEL`` (bisect fusions),
``GRAPHDUEL_DEBUG=1|2|3`` (graph / groups / source), ``CC`` (C compiler), ``GRAPHDUEL_BLAS_SMALL_FLOPS``.

    >>> import eager, compiler
    >>> gelu = compiler.compile(lambda x: 0.5 * x * (1 + (0.7978845608 * (x + 0.044715 * x ** 3)).tanh()),
    ...                         eager.ones(8))
    >>> len(gelu.kernels)
    1
    >>> gelu(eager.zeros(8)).tolist()[:2]
    [0.0, 0.0]
"""

from compiler.api import BACKENDS, Compiled, Lowered, compile, lower_graph
from compiler.fusion import fuse
from compiler.passes import optimize
from compiler.program import build
from compiler.runtime.cache import STATS as cache_stats
from compiler.runtime.cache import cache_dir

__all__ = ["BACKENDS", "Compiled", "Lowered", "build", "cache_dir", "cache_stats", "compile", "fuse", "lower_graph",
           "optimize"]
