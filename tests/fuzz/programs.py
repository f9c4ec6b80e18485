"""Random well-typed programs over the primitive table, and three interpreters for them.

A ``Program`` is a list of instructions over numbered values (inputs first). Each fuzz op is written once
against a tiny ``lib`` interface, and run by three libraries: eager (the engine under test), NumPy in float64
(the judge) and jax.numpy (the gradient oracle). Ops whose domain is limited are guarded (``log(|x| + c)``)
so that large, tiny and negative inputs are all legal; the guard is part of the op's definition.

One instruction, ``inplace``, is a block of in-place writes through views of a clone (``inplace.py``): eager and
NumPy run it with real views, jax with its functional equivalent. ``programs(inplace=True)`` always has one.

A failing program prints as readable Python (``repr``), which is what hypothesis shows after shrinking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

from .inplace import VIEWS, Block, View, Write, run_block, view_shape

# ---------------------------------------------------------------- libraries: one adapter per backend


class NumpyLib:
    name = "numpy"
    functional = False  # in-place blocks write through real NumPy views (see inplace.py)

    def __init__(self):
        from scipy.special import erf
        self.erf = erf
        self.m = np

    def abs(self, x): return np.abs(x)
    def sigmoid(self, x): return 1 / (1 + np.exp(-x))
    def relu(self, x): return np.maximum(x, 0)
    def sum(self, x, axis, keepdims): return np.sum(x, axis=axis, keepdims=keepdims)
    def mean(self, x, axis, keepdims): return np.mean(x, axis=axis, keepdims=keepdims)
    def amax(self, x, axis, keepdims): return np.max(x, axis=axis, keepdims=keepdims)
    def reshape(self, x, shape): return np.reshape(x, shape)
    def permute(self, x, axes): return np.transpose(x, axes)
    def expand(self, x, shape): return np.broadcast_to(x, shape)
    def cat(self, xs, axis): return np.concatenate(xs, axis=axis)
    def clamp(self, x, lo, hi): return np.clip(x, lo, hi)
    def softmax(self, x, axis):
        e = np.exp(x - np.max(x, axis=axis, keepdims=True))
        return e / np.sum(e, axis=axis, keepdims=True)

    def fresh(self, x, how):
        # an array even for a NumPy scalar (its "views" would be copies); a clone is C-contiguous, as eager's is
        return np.array(x, order="C" if how == "clone" else "K", copy=True)

    def view(self, x, name, params):
        out = VIEWS[name].get(np, x, *params)
        # the judge's own check: a view that copied would make NumPy's answer wrong, not eager's
        assert out.size == 0 or np.shares_memory(out, x), f"fuzzer bug: NumPy {name}{tuple(params)} copied"
        return out

    def put(self, base, key, value):
        out = np.array(base, copy=True)
        out[key] = value
        return out


class JaxLib(NumpyLib):
    name = "jax"
    functional = True  # in-place blocks run as their functional equivalent: views re-derived, writes scattered

    def __init__(self):
        import jax.numpy as jnp
        from jax.scipy.special import erf
        self.m = jnp
        self.erf = erf

    def sigmoid(self, x):
        import jax
        return jax.nn.sigmoid(x)

    def relu(self, x): return self.m.where(x > 0, x, 0.0)

    def abs(self, x):
        # PyTorch's subgradient at 0 is sign(0) = 0; jax.grad(jnp.abs)(0.) is 1. Judge by PyTorch's rule.
        return self.m.sign(x) * x

    def sum(self, x, axis, keepdims): return self.m.sum(x, axis=axis, keepdims=keepdims)
    def mean(self, x, axis, keepdims): return self.m.mean(x, axis=axis, keepdims=keepdims)
    def amax(self, x, axis, keepdims): return self.m.max(x, axis=axis, keepdims=keepdims)
    def reshape(self, x, shape): return self.m.reshape(x, shape)
    def permute(self, x, axes): return self.m.transpose(x, axes)
    def expand(self, x, shape): return self.m.broadcast_to(x, shape)
    def cat(self, xs, axis): return self.m.concatenate(xs, axis=axis)
    def clamp(self, x, lo, hi): return self.m.clip(x, lo, hi)

    def softmax(self, x, axis):
        import jax
        return jax.nn.softmax(x, axis=axis)

    def fresh(self, x, how): return self.m.asarray(x)
    def view(self, x, name, params): return VIEWS[name].get(self.m, x, *params)
    def put(self, base, key, value): return base.at[key].set(value)


class EagerLib:
    name = "eager"
    functional = False

    def __init__(self):
        import eager
        self.m = eager
        self.erf = eager.erf

    def abs(self, x): return x.abs()
    def sigmoid(self, x): return x.sigmoid()
    def relu(self, x): return x.relu()
    def sum(self, x, axis, keepdims): return x.sum(dim=axis, keepdim=keepdims)
    def mean(self, x, axis, keepdims): return x.mean(dim=axis, keepdim=keepdims)
    def amax(self, x, axis, keepdims): return x.amax(dim=axis, keepdim=keepdims)
    def reshape(self, x, shape): return x.reshape(shape)
    def permute(self, x, axes): return x.permute(*axes)
    def expand(self, x, shape): return x.expand(*shape)
    def cat(self, xs, axis): return self.m.cat(xs, dim=axis)
    def clamp(self, x, lo, hi): return x.clamp(lo, hi)
    def softmax(self, x, axis): return x.softmax(axis)
    # a leaf that requires grad refuses in-place ops: every block writes into a non-leaf copy of its source
    def fresh(self, x, how): return x.clone() if how == "clone" else x * 1
    def view(self, x, name, params): return VIEWS[name].eager(x, *params)


# ---------------------------------------------------------------- the fuzz ops (each written once)

UNARY = {
    "neg": lambda L, x: -x,
    "exp": lambda L, x: L.m.exp(L.clamp(x, -20.0, 20.0)),
    "log": lambda L, x: L.m.log(L.abs(x) + 1e-2),
    "sqrt": lambda L, x: L.m.sqrt(L.abs(x) + 1e-2),
    "tanh": lambda L, x: L.m.tanh(x),
    "sin": lambda L, x: L.m.sin(x),
    "cos": lambda L, x: L.m.cos(x),
    "abs": lambda L, x: L.abs(x),
    "sigmoid": lambda L, x: L.sigmoid(x),
    "erf": lambda L, x: L.erf(x),
    "relu": lambda L, x: L.relu(x),
    "square": lambda L, x: x * x,
    "softmax_last": lambda L, x: L.softmax(x, -1),
}
BINARY = {
    "add": lambda L, x, y: x + y,
    "sub": lambda L, x, y: x - y,
    "mul": lambda L, x, y: x * y,
    "div": lambda L, x, y: x / (L.abs(y) + 0.5),
    "maximum": lambda L, x, y: L.m.maximum(x, y),
    "minimum": lambda L, x, y: L.m.minimum(x, y),
}
SCALAR = {
    "add_scalar": lambda L, x, c: x + c,
    "mul_scalar": lambda L, x, c: x * c,
    "rsub_scalar": lambda L, x, c: c - x,
    "pow_scalar": lambda L, x, c: (L.abs(x) + 0.5) ** c,
}
REDUCE = {
    "sum": lambda L, x, axis, keep: L.sum(x, axis, keep),
    "mean": lambda L, x, axis, keep: L.mean(x, axis, keep),
    "amax": lambda L, x, axis, keep: L.amax(x, axis, keep),
}


@dataclass
class Instr:
    op: str
    args: tuple  # value indices (ints) and static arguments
    shape: tuple

    def render(self, out: int) -> str:
        a = self.args
        v = lambda i: f"v{i}"
        if self.op in UNARY:
            body = f"{self.op}({v(a[0])})"
        elif self.op in BINARY:
            body = f"{self.op}({v(a[0])}, {v(a[1])})"
        elif self.op in SCALAR:
            body = f"{self.op}({v(a[0])}, {a[1]!r})"
        elif self.op in REDUCE:
            body = f"{self.op}({v(a[0])}, dim={a[1]}, keepdim={a[2]})"
        elif self.op == "where":
            body = f"where({v(a[0])} > 0, {v(a[1])}, {v(a[2])})"
        elif self.op == "matmul":
            body = f"{v(a[0])} @ {v(a[1])}"
        elif self.op == "cat":
            body = f"cat([{v(a[0])}, {v(a[1])}], dim={a[2]})"
        elif self.op == "slice":
            body = f"{v(a[0])}[{':, ' * a[1]}{a[2]}:{a[3]}:{a[4]}]"
        elif self.op == "inplace":
            lines = a[-1].render(out, [v(i) for i in a[:-1]])
            lines[-1] += f"  # {list(self.shape)}"
            return "\n    ".join(lines)
        else:
            body = f"{self.op}({v(a[0])}, {a[1]!r})"
        return f"v{out} = {body}  # {list(self.shape)}"


@dataclass
class Program:
    input_shapes: list
    dtype: str
    instrs: list = field(default_factory=list)
    seed: int = 0
    scale: float = 1.0

    @property
    def n_inputs(self) -> int:
        return len(self.input_shapes)

    def shape_of(self, i: int) -> tuple:
        return tuple(self.input_shapes[i]) if i < self.n_inputs else self.instrs[i - self.n_inputs].shape

    def __repr__(self) -> str:
        args = ", ".join(f"v{i}" for i in range(self.n_inputs))
        lines = [f"# dtype={self.dtype} seed={self.seed} scale={self.scale}; inputs: "
                 + ", ".join(f"v{i}{list(s)}" for i, s in enumerate(self.input_shapes)),
                 f"def program({args}):"]
        lines += ["    " + ins.render(self.n_inputs + k) for k, ins in enumerate(self.instrs)]
        lines.append(f"    return v{self.n_inputs + len(self.instrs) - 1}")
        return "\n".join(lines)

    def inputs(self) -> list[np.ndarray]:
        """Deterministic input values: mixtures of normal draws at the program's scale, some exact zeros."""
        rng = np.random.default_rng(self.seed)
        out = []
        for shape in self.input_shapes:
            x = np.asarray(rng.standard_normal(shape) * self.scale)
            x[rng.random(shape) < 0.05] = 0.0
            out.append(x.astype(self.dtype))
        return out

    def run(self, L, inputs: list) -> list:
        """All values of the program (inputs included) computed with library ``L``."""
        vals = list(inputs)
        for ins in self.instrs:
            a = ins.args
            if ins.op in UNARY:
                r = UNARY[ins.op](L, vals[a[0]])
            elif ins.op in BINARY:
                r = BINARY[ins.op](L, vals[a[0]], vals[a[1]])
            elif ins.op in SCALAR:
                r = SCALAR[ins.op](L, vals[a[0]], a[1])
            elif ins.op in REDUCE:
                r = REDUCE[ins.op](L, vals[a[0]], a[1], a[2])
            elif ins.op == "where":
                r = L.m.where(vals[a[0]] > 0, vals[a[1]], vals[a[2]])
            elif ins.op == "matmul":
                r = vals[a[0]] @ vals[a[1]]
            elif ins.op == "cat":
                r = L.cat([vals[a[0]], vals[a[1]]], a[2])
            elif ins.op == "slice":
                r = vals[a[0]][(slice(None),) * a[1] + (slice(a[2], a[3], a[4]),)]
            elif ins.op == "reshape":
                r = L.reshape(vals[a[0]], a[1])
            elif ins.op == "permute":
                r = L.permute(vals[a[0]], a[1])
            elif ins.op == "expand":
                r = L.expand(vals[a[0]], a[1])
            elif ins.op == "inplace":
                r = run_block(L, [vals[i] for i in a[:-1]], a[-1])
            else:
                raise ValueError(f"unknown fuzz op {ins.op}")
            vals.append(r)
        return vals


# ---------------------------------------------------------------- the generator

DIMS = st.sampled_from([1, 2, 3, 4, 5])


def _broadcast_partner(draw, shape: tuple) -> tuple:
    """A shape that broadcasts against ``shape``: some dims set to 1, some leading dims dropped."""
    drop = draw(st.integers(0, len(shape)))
    partner = list(shape[drop:])
    for i in range(len(partner)):
        if draw(st.booleans()) and draw(st.booleans()):
            partner[i] = 1
    return tuple(partner)


@st.composite
def programs(draw, max_ops: int = 6, allow_empty: bool = True, inplace: bool = False,
             exclude_writes: frozenset = frozenset()) -> Program:
    """A random program: 1-2 inputs, then up to ``max_ops`` shape-checked instructions (``inplace``: at least one
    of them an in-place block, and more may be; ``exclude_writes``: in-place ops the blocks never use)."""
    dtype = draw(st.sampled_from(["float32", "float64"]))
    rank = draw(st.integers(0, 3))
    dims = DIMS if not allow_empty else st.one_of(DIMS, DIMS, DIMS, DIMS, st.just(0))
    base = tuple(draw(dims) for _ in range(rank))
    prog = Program([base], dtype, seed=draw(st.integers(0, 2**16)),
                   scale=draw(st.sampled_from([1e-3, 1.0, 1.0, 30.0])))
    if draw(st.booleans()):
        prog.input_shapes.append(_broadcast_partner(draw, base))
    n_ops = draw(st.integers(1, max_ops))
    forced = draw(st.integers(0, n_ops - 1)) if inplace else -1
    for i in range(n_ops):
        if i == forced or (inplace and draw(st.integers(0, 5)) == 0):
            _add_inplace(draw, prog, exclude_writes)
        else:
            _add_instr(draw, prog)
    if inplace and not _reads_a_block(prog):
        _add_inplace(draw, prog, exclude_writes, src=prog.n_inputs + len(prog.instrs) - 1)  # the writes must matter
    return prog


def inplace_programs(max_ops: int = 6, exclude_writes: frozenset = frozenset()):
    """Programs with in-place blocks; half without empty inputs (a write into nothing checks little)."""
    return st.one_of(*(programs(max_ops=max_ops, allow_empty=empty, inplace=True, exclude_writes=exclude_writes)
                       for empty in (False, True)))


def touches_empty(prog: Program) -> bool:
    """Whether a value of the program, a view one of its blocks takes, or a region a block writes is empty."""
    shapes = [prog.shape_of(i) for i in range(prog.n_inputs + len(prog.instrs))]
    for ins in prog.instrs:
        if ins.op != "inplace":
            continue
        for step in ins.args[-1].steps:
            if isinstance(step, View):
                shapes.append(view_shape(prog.shape_of(ins.args[0]), step.chain))
            elif isinstance(step.index, slice) and step.index.start == step.index.stop:
                return True
    return any(0 in s for s in shapes)


def _reads_a_block(prog: Program) -> bool:
    """Whether the program's result depends on an in-place block (a dead block checks nothing)."""
    reads = [False] * prog.n_inputs
    for ins in prog.instrs:
        reads.append(ins.op == "inplace" or any(reads[a] for j, a in enumerate(ins.args) if _is_ref(ins, j)))
    return reads[-1]


def _pick_value(draw, prog: Program) -> int:
    n = prog.n_inputs + len(prog.instrs)
    # favour recent values so programs form chains, not just fans from the inputs
    return draw(st.one_of(st.integers(max(0, n - 2), n - 1), st.integers(0, n - 1)))


def _new_input(prog: Program, shape: tuple) -> int:
    prog.input_shapes.append(tuple(shape))
    # keep value numbering "inputs first": shift instruction references past the new input
    k = prog.n_inputs - 1
    for ins in prog.instrs:
        ins.args = tuple(a + 1 if isinstance(a, int) and not isinstance(a, bool) and a >= k and _is_ref(ins, j)
                         else a for j, a in enumerate(ins.args))
    return k


def _is_ref(ins: Instr, j: int) -> bool:
    """Whether argument j of an instruction is a value reference (vs a static int)."""
    if ins.op in UNARY or ins.op in REDUCE or ins.op in SCALAR or ins.op in ("slice", "reshape", "permute",
                                                                            "expand"):
        return j == 0
    if ins.op == "cat":
        return j < 2
    if ins.op == "inplace":
        return j < len(ins.args) - 1  # the last argument is the Block
    return True


def _add_instr(draw, prog: Program) -> None:
    src = _pick_value(draw, prog)
    shape = prog.shape_of(src)
    kind = draw(st.sampled_from(["unary", "unary", "binary", "binary", "scalar", "reduce", "movement",
                                 "where", "matmul", "cat"]))
    size = math.prod(shape)
    if kind == "unary":
        op = draw(st.sampled_from(sorted(UNARY)))
        if op == "softmax_last" and (not shape or shape[-1] == 0):
            op = "tanh"
        prog.instrs.append(Instr(op, (src,), shape))
    elif kind == "binary":
        other = _pick_value(draw, prog)
        try:
            out = tuple(np.broadcast_shapes(shape, prog.shape_of(other)))
        except ValueError:
            other = _new_input(prog, _broadcast_partner(draw, shape))
            src = src + 1 if src >= other else src
            out = tuple(np.broadcast_shapes(shape, prog.shape_of(other)))
        prog.instrs.append(Instr(draw(st.sampled_from(sorted(BINARY))), (src, other), out))
    elif kind == "scalar":
        op = draw(st.sampled_from(sorted(SCALAR)))
        c = draw(st.sampled_from([2.0, 0.5, -1.0, 3.0])) if op == "pow_scalar" else draw(
            st.sampled_from([0.0, 1.0, -2.5, 1e-3, 100.0]))
        prog.instrs.append(Instr(op, (src, c), shape))
    elif kind == "reduce" and shape:
        axis = draw(st.integers(0, len(shape) - 1))
        keep = draw(st.booleans())
        op = draw(st.sampled_from(sorted(REDUCE)))
        if shape[axis] == 0 and op != "sum":
            op = "sum"  # max/mean of nothing is undefined
        out = tuple(1 if i == axis else d for i, d in enumerate(shape) if keep or i != axis)
        prog.instrs.append(Instr(op, (src, axis, keep), out))
    elif kind == "movement" and shape:
        choice = draw(st.sampled_from(["reshape", "permute", "expand", "slice"]))
        if choice == "reshape":
            prog.instrs.append(Instr("reshape", (src, (size,)), (size,)))
        elif choice == "permute":
            axes = tuple(draw(st.permutations(range(len(shape)))))
            prog.instrs.append(Instr("permute", (src, axes), tuple(shape[a] for a in axes)))
        elif choice == "expand":
            target = tuple(3 if d == 1 else d for d in shape)
            target = (2,) + target if draw(st.booleans()) else target
            prog.instrs.append(Instr("expand", (src, target), target))
        else:
            axis = draw(st.integers(0, len(shape) - 1))
            start, step = draw(st.integers(0, 2)), draw(st.integers(1, 2))
            n = len(range(*slice(start, None, step).indices(shape[axis])))
            out = tuple(n if i == axis else d for i, d in enumerate(shape))
            prog.instrs.append(Instr("slice", (src, axis, start, None, step), out))
    elif kind == "where":
        # the condition reads an input: inputs are exact in every precision, so no branch flips by rounding
        cond = draw(st.integers(0, prog.n_inputs - 1))
        other = _pick_value(draw, prog)
        try:
            out = tuple(np.broadcast_shapes(prog.shape_of(cond), shape, prog.shape_of(other)))
        except ValueError:
            prog.instrs.append(Instr("tanh", (src,), shape))
            return
        prog.instrs.append(Instr("where", (cond, src, other), out))
    elif kind == "matmul" and len(shape) in (1, 2):
        n = draw(DIMS)
        w = _new_input(prog, (shape[-1], n))
        src = src + 1 if src >= w else src
        out = (shape[0], n) if len(shape) == 2 else (n,)
        prog.instrs.append(Instr("matmul", (src, w), out))
    elif kind == "cat" and shape:
        axis = draw(st.integers(0, len(shape) - 1))
        same = [i for i in range(prog.n_inputs + len(prog.instrs)) if prog.shape_of(i) == shape]
        other = draw(st.sampled_from(same))
        out = tuple(2 * d if i == axis else d for i, d in enumerate(shape))
        prog.instrs.append(Instr("cat", (src, other, axis), out))
    else:
        prog.instrs.append(Instr("tanh", (src,), shape))


# ---------------------------------------------------------------- the generator of in-place blocks (inplace.py)

FILLS = [0.0, 2.5, -1.0]  # exact in float32, so a filled value is the same in every precision
SCALES = [2.0, -0.5, 0.25, -1.0]  # powers of two (and -1): a product by one is exact, its sign always right
SHIFTS = [1.0, -2.5, 0.5]
ALPHAS = [1, 2.0, -0.5]
BOUNDS = [(-0.75, 0.625), (-2.25, 1.75), (0.3, 3.0)]  # no input nor fill value sits exactly on a bound (ties)
# ops whose result stays sign-faithful (a mask `> 0` of it is the same in float32, float64 and every mode)
KEEP_SIGNS = {"fill_", "zero_", "clamp_", "masked_fill_", "setitem_mask", "div_", "mul_", "imul", "copy_",
              "setitem_slice"}
ADDITIVE = {"add_", "sub_", "iadd", "isub"}


def _fits(shape: tuple, target: tuple) -> bool:
    """Whether a value of ``shape`` broadcasts to ``target`` (an in-place op never changes its target's shape)."""
    if len(shape) > len(target):
        return False
    try:
        return tuple(np.broadcast_shapes(shape, target)) == tuple(target)
    except ValueError:
        return False


def _arg(refs: list, value: int) -> int:
    """The position of program value ``value`` among the block's arguments (added if new)."""
    if value not in refs:
        refs.append(value)
    return refs.index(value)


def _block_input(prog: Program, refs: list, shape: tuple) -> int:
    """A new program input of ``shape``, as an argument position; the block's references move past it."""
    k = _new_input(prog, shape)
    refs[:] = [r + 1 if r >= k else r for r in refs]
    return _arg(refs, k)


def _draw_view_op(draw, shape: tuple, can_reshape: bool) -> tuple:
    n = len(shape)
    options = ["unsqueeze"] + (["slice", "slice"] if n else [])
    options += ["select"] if any(shape) else []
    options += ["transpose", "permute"] if n >= 2 else []
    options += ["T"] if n == 2 else []
    options += ["squeeze"] if 1 in shape else []
    options += ["reshape"] if can_reshape else []
    name = draw(st.sampled_from(options))
    if name == "slice":
        axis = draw(st.integers(0, n - 1))
        start = draw(st.integers(0, shape[axis]))
        return ("slice", axis, start, draw(st.integers(start, shape[axis])), draw(st.sampled_from([1, 1, 2])))
    if name == "select":
        axis = draw(st.sampled_from([i for i, d in enumerate(shape) if d]))
        return ("select", axis, draw(st.integers(-shape[axis], shape[axis] - 1)))
    if name == "transpose":
        d0, d1 = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
        return ("transpose", d0, d1)
    if name == "permute":
        return ("permute", tuple(draw(st.permutations(range(n)))))
    if name == "T":
        return ("T",)
    if name == "squeeze":
        return ("squeeze", draw(st.sampled_from([i for i, d in enumerate(shape) if d == 1])))
    if name == "reshape":
        targets = sorted({(math.prod(shape),), tuple(shape[::-1]), tuple(shape) + (1,)} - {tuple(shape)})
        return ("reshape", draw(st.sampled_from(targets)))
    return ("unsqueeze", draw(st.integers(0, n)))


def _draw_chain(draw, shape: tuple, clone: bool) -> tuple:
    """One or two view ops of the base. A reshape comes first, of a clone: a clone is C-contiguous in every
    library, so the reshape is a view everywhere (of another layout PyTorch may copy, and so do we)."""
    chain = []
    for i in range(draw(st.integers(1, 2))):
        op = _draw_view_op(draw, shape, clone and i == 0)
        chain.append(op)
        shape = view_shape(shape, (op,))
    return tuple(chain)


def _draw_tensor(draw, prog: Program, refs: list, shape: tuple, view_shapes: list, views: bool) -> tuple:
    """A tensor operand that broadcasts to ``shape``: a program value, a new input, or (``views``) a view of this
    block, read when the write runs."""
    values = [i for i in range(prog.n_inputs + len(prog.instrs)) if _fits(prog.shape_of(i), shape)]
    same_block = [k for k, s in enumerate(view_shapes) if _fits(s, shape)] if views else []
    kind = draw(st.sampled_from(["value", "value", "new"] + (["view"] if same_block else [])))
    if kind == "value" and values:
        return ("arg", _arg(refs, draw(st.sampled_from(values))))
    if kind == "view":
        return ("view", draw(st.sampled_from(same_block)))
    return ("arg", _block_input(prog, refs, _broadcast_partner(draw, shape)))


def _draw_mask(draw, prog: Program, refs: list, shape: tuple, signs_ok: bool, broadcast: bool) -> tuple:
    """``("self",)`` when the target's signs are the same in every precision, else an input (exact in every
    precision: no mask element flips by rounding) of the target's shape or, with ``broadcast``, one that
    broadcasts to it (``t[mask] = c`` takes a mask of t's own shape; ``masked_fill_`` broadcasts)."""
    if signs_ok and draw(st.booleans()):
        return ("self",)
    fits = _fits if broadcast else (lambda s, target: tuple(s) == tuple(target))
    inputs = [i for i in range(prog.n_inputs) if fits(prog.shape_of(i), shape)]
    if inputs and draw(st.booleans()):
        return ("arg", _arg(refs, draw(st.sampled_from(inputs))))
    return ("arg", _block_input(prog, refs, _broadcast_partner(draw, shape) if broadcast else shape))


def _draw_write(draw, prog: Program, refs: list, target: int, shape: tuple, view_shapes: list, signs_ok: bool,
                exclude: frozenset) -> tuple[Write, bool]:
    """A write into ``target`` (of ``shape``), and whether the block's signs are still faithful after it."""
    op = draw(st.sampled_from(sorted(w for w in _WRITE_OPS if w not in exclude and (shape or w != "setitem_slice"))))
    fields = {}
    if op in ("fill_", "masked_fill_", "setitem_mask"):
        fields["value"] = ("const", draw(st.sampled_from(FILLS)))
    if op in ("masked_fill_", "setitem_mask"):
        fields["mask"] = _draw_mask(draw, prog, refs, shape, signs_ok, broadcast=op == "masked_fill_")
    if op == "clamp_":
        fields["bounds"] = draw(st.sampled_from(BOUNDS))
    if op == "div_" or (op in ("mul_", "imul") and draw(st.booleans())):
        fields["value"] = ("const", draw(st.sampled_from(SCALES)))
    elif op in ("mul_", "imul"):  # mul's backward reads its operand: never a view this block writes again
        fields["value"] = _draw_tensor(draw, prog, refs, shape, view_shapes, views=False)
    if op in ADDITIVE:
        fields["value"] = (("const", draw(st.sampled_from(SHIFTS))) if draw(st.booleans())
                           else _draw_tensor(draw, prog, refs, shape, view_shapes, views=True))
    if op == "add_":
        fields["alpha"] = draw(st.sampled_from(ALPHAS))
    if op == "copy_":
        fields["value"] = _draw_tensor(draw, prog, refs, shape, view_shapes, views=True)
    if op == "setitem_slice":
        d = shape[0]
        if d and draw(st.booleans()):
            fields["index"] = draw(st.integers(-d, d - 1))
            region = shape[1:]
        else:
            start = draw(st.integers(0, d))
            fields["index"] = slice(start, draw(st.integers(start, d)))
            region = (len(range(fields["index"].start, fields["index"].stop)),) + shape[1:]
        fields["value"] = (("const", draw(st.sampled_from(FILLS))) if draw(st.booleans())
                           else _draw_tensor(draw, prog, refs, region, view_shapes, views=True))
    value = fields.get("value")
    faithful_value = value is None or value[0] == "const" or value[0] == "view" or refs[value[1]] < prog.n_inputs
    return Write(target, op, **fields), signs_ok and op in KEEP_SIGNS and faithful_value


_WRITE_OPS = ("add_", "sub_", "mul_", "div_", "iadd", "isub", "imul", "copy_", "fill_", "zero_", "clamp_",
              "masked_fill_", "setitem_mask", "setitem_slice")


def _add_inplace(draw, prog: Program, exclude: frozenset = frozenset(), src: int | None = None) -> None:
    """A block (inplace.py): clone a value, take views of it, write through them, return the base or a view."""
    refs = [_pick_value(draw, prog) if src is None else src]
    shape = prog.shape_of(refs[0])
    fresh = draw(st.sampled_from(["clone", "mul1"]))
    signs_ok = refs[0] < prog.n_inputs  # an input's signs are exact; a computed value's may differ by rounding
    steps, view_shapes = [], []
    for i in range(draw(st.sampled_from([1, 2, 2, 3, 3]))):
        if i == 0 or draw(st.booleans()):  # the first write always goes through a view
            chain = _draw_chain(draw, shape, fresh == "clone")
            steps.append(View(chain))
            view_shapes.append(view_shape(shape, chain))
            target = len(view_shapes) - 1
        else:
            target = draw(st.integers(-1, len(view_shapes) - 1))
        write, signs_ok = _draw_write(draw, prog, refs, target, shape if target < 0 else view_shapes[target],
                                      view_shapes, signs_ok, exclude)
        steps.append(write)
    kind = draw(st.sampled_from(["base", "view", "mixed"]))
    # favour the first view: the one most often written through others since it was taken (stale, re-derived)
    k = draw(st.one_of(st.just(0), st.integers(0, len(view_shapes) - 1)))
    out = ("base",) if kind == "base" else (kind, k)
    prog.instrs.append(Instr("inplace", tuple(refs) + (Block(fresh, tuple(steps), out),),
                             view_shapes[k] if kind == "view" else shape))
