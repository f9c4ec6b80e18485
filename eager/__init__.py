"""eager: a dynamic-graph engine in the spirit of PyTorch, on one table of primitives.

    >>> import eager
    >>> x = eager.tensor([2.0], requires_grad=True)
    >>> y = (x * 2) ** 2
    >>> y.sum().backward()
    >>> x.grad.tolist()
    [16.0]
"""

# Tensor first: tensor.py pulls in ops and dispatch once the class exists (they import it back).
from eager.tensor import Tensor  # isort: skip
from eager import autograd
from eager.autograd import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from eager.backend import Device, bool_, cuda_available, float32, float64, int8, int32, int64
from eager.control import cond, scan, while_loop
from eager.creation import (
    arange,
    as_tensor,
    empty,
    eye,
    from_numpy,
    full,
    full_like,
    linspace,
    ones,
    ones_like,
    rand,
    rand_like,
    randint,
    randn,
    randn_like,
    randperm,
    tensor,
    zeros,
    zeros_like,
)
from eager.dispatch import IndexOutOfRange, OpError, apply
from eager.memory import keep_freed_memory as _keep_freed_memory
from eager.ops import (
    TABLE_FUNCTIONS as _TABLE_FUNCTIONS,  # exp, log, erf, erfc, ...: one per row of the op table with an api
)
from eager.ops import (
    add,
    all,
    amax,
    amin,
    any,
    argmax,
    argmin,
    argsort,
    bitwise_and,
    bitwise_not,
    bitwise_or,
    bitwise_xor,
    bmm,
    cat,
    ceil,
    chunk,
    clamp,
    clone,
    concat,
    cumprod,
    cumsum,
    detach,
    diagonal,
    divide,
    einsum,
    eq,
    expand,
    flatten,
    flip,
    fliplr,
    flipud,
    floor,
    floor_divide,
    gather,
    ge,
    gt,
    index_add,
    index_select,
    le,
    log_softmax,
    logical_and,
    logical_not,
    logical_or,
    logical_xor,
    logsumexp,
    lt,
    matmul,
    max,
    maximum,
    mean,
    min,
    minimum,
    mm,
    mul,
    ne,
    norm,
    outer,
    permute,
    pow,
    relu,
    remainder,
    reshape,
    roll,
    round,
    rsqrt,
    scatter,
    scatter_add,
    softmax,
    sort,
    split,
    squeeze,
    stack,
    std,
    sub,
    sum,
    topk,
    transpose,
    tril,
    triu,
    trunc,
    unbind,
    unsqueeze,
    var,
    where,
)
from eager.primitives import PRIMITIVES, Primitive, ShapeError
from eager.random import Generator, manual_seed
from eager.serialization import LoadError, load, save

globals().update(_TABLE_FUNCTIONS)
div = divide  # torch.div(a, b, rounding_mode=None)
bool = bool_  # noqa: A001  (eager.bool, as torch.bool)
float = float32  # noqa: A001
double = float64
long = int64


class cuda:  # noqa: N801  (eager.cuda.is_available(), as torch.cuda)
    @staticmethod
    def is_available() -> "builtins.bool":  # noqa: F821
        return cuda_available()


# the subpackages, so `import eager; eager.nn.Linear(...)` works as `torch.nn` does (imported last: they use eager)
from eager import nn, optim, utils, viz  # noqa: E402  isort: skip

__all__ = [name for name in dir() if not name.startswith("_")]

_keep_freed_memory()  # see eager/memory.py: a training step would page-fault its temporaries in again
