"""compiler: optimise the traced IR, fuse it into few kernels, lower to C (CPU), CUDA (GPU) or XLA.

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
