"""Structured control flow: ``cond``, ``while_loop`` and ``scan`` (PyTorch's higher-order ops, ``jax.lax`` semantics).

Run eagerly they are ordinary Python: ``cond`` calls the branch that ``pred`` picks, ``while_loop`` loops, ``scan``
steps through ``xs``, and autograd records what ran. Their point is the static graph: under a tracer that knows
them (``tracer.trace``) each records ONE node holding sub-graphs (regions) for every branch or body, instead of
the path that happened to run, so the traced program takes the other branch, or another trip count, when the
data asks for it.

Operands and results are a Tensor or a flat tuple/list of Tensors. Both branches of a ``cond`` must return the
same structure, shapes and dtypes; a loop's carry must keep its structure, shapes and dtypes (checked on every
trip in eager, and once for all trips when traced).

    >>> import eager
    >>> x = eager.tensor([1.0, -2.0])
    >>> cond(x.sum() > 0, lambda v: v * 2, lambda v: -v, (x,)).tolist()
    [-1.0, 2.0]
    >>> while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, v * 2), (eager.tensor(0), x))[1].tolist()
    [8.0, -16.0]
    >>> carry, ys = scan(lambda c, v: (c + v, c * v), eager.tensor(0.0), eager.tensor([1.0, 2.0, 3.0]))
    >>> carry.item(), ys.tolist()
    (6.0, [0.0, 2.0, 9.0])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eager.autograd.mode import MODE
from eager.backend import bool_
from eager.primitives import HOST, OTHER, Aval, ShapeError, define, describe
from eager.tensor import Tensor


class ControlFlowError(ShapeError):
    """A control-flow op was given branches or a body that do not fit (structure, shape, dtype, pred)."""


# ---------------------------------------------------------------- operands and results


def flat_tensors(op: str, what: str, value) -> tuple[list[Tensor], bool]:
    """``value`` as a list of tensors, and whether it was a single Tensor (not a tuple/list)."""
    if isinstance(value, Tensor):
        return [value], True
    if isinstance(value, (tuple, list)) and all(isinstance(v, Tensor) for v in value):
        return list(value), False
    got = type(value).__name__ if not isinstance(value, (tuple, list)) else \
        f"{type(value).__name__} of ({', '.join(type(v).__name__ for v in value)})"
    raise ControlFlowError(f"{op}: {what} must be a Tensor or a flat tuple/list of Tensors, got {got}; wrap Python "
                           "numbers with eager.tensor(...) and flatten nested structures.")


def avals(tensors) -> tuple[Aval, ...]:
    return tuple(Aval(tuple(t.shape), t.dtype) for t in tensors)


def check_same(op: str, what_a: str, a: tuple, what_b: str, b: tuple) -> None:
    """Two lists of avals (with their single-Tensor flags) must agree; the error shows both."""
    if a != b:
        def show(x):
            single, vals = x
            return describe(vals[0]) if single else "(" + ", ".join(map(describe, vals)) + ")"
        raise ControlFlowError(f"{op}: {what_a} gives {show(a)} but {what_b} gives {show(b)}; they must match in "
                               "structure, shapes and dtypes (JAX's and torch.cond's rule). Cast or reshape so they "
                               "agree.")


def pack(tensors: list[Tensor], single: bool):
    return tensors[0] if single else tuple(tensors)


def pred_value(op: str, pred) -> bool:
    """A Python bool, or a 0-d bool tensor (read to the host here: eager decides in Python)."""
    if isinstance(pred, bool):
        return pred
    check_pred(op, pred)
    return bool(pred._data)


def check_pred(op: str, pred) -> None:
    if not isinstance(pred, Tensor):
        raise ControlFlowError(f"{op}: pred must be a Python bool or a 0-d bool Tensor, got {type(pred).__name__}.")
    if pred.shape != () or pred.dtype != bool_:
        got = describe(Aval(tuple(pred.shape), pred.dtype))
        raise ControlFlowError(f"{op}: pred must be a 0-d bool tensor, got {got}; reduce it first (e.g. "
                               "(x > 0).all(), x.sum() > 0).")


def _region_recorder():
    """The innermost recorder that records regions (the tracer's), or None when eager runs plain Python."""
    recorders = MODE.get().recorders
    if recorders and hasattr(recorders[-1], "control"):
        return recorders[-1]
    return None


# ---------------------------------------------------------------- the three ops


def cond(pred, true_fn: Callable, false_fn: Callable, operands=()) -> Any:
    """``true_fn(*operands)`` if ``pred`` else ``false_fn(*operands)``; under a tracer, one ``cond`` node with both
    branches as regions. ``pred``: a Python bool or a 0-d bool tensor.

        >>> import eager
        >>> cond(eager.tensor(True), lambda x: x + 1, lambda x: x - 1, (eager.ones(1),)).tolist()
        [2.0]
    """
    ops, _ = flat_tensors("cond", "operands", operands)
    rec = _region_recorder()
    if rec is not None and not isinstance(pred, bool):
        check_pred("cond", pred)
        return rec.control("cond", pred=pred, fns=(true_fn, false_fn), operands=ops)
    taken = true_fn if pred_value("cond", pred) else false_fn
    out, single = flat_tensors("cond", f"the {'true' if taken is true_fn else 'false'} branch's result",
                               taken(*ops))
    return pack(out, single)


def while_loop(cond_fn: Callable, body_fn: Callable, carried_inputs) -> Any:
    """``while cond_fn(*carry): carry = body_fn(*carry)``; returns the final carry (same structure as given).

    ``cond_fn`` returns a 0-d bool tensor; ``body_fn`` returns the next carry with the same shapes and dtypes.
    Forward only under a trace: for gradients use ``scan`` (a fixed trip count), as in JAX.

        >>> import eager
        >>> while_loop(lambda x: x.sum() < 10, lambda x: x * 2, eager.ones(2)).tolist()
        [8.0, 8.0]
    """
    carry, single = flat_tensors("while_loop", "carried_inputs", carried_inputs)
    rec = _region_recorder()
    if rec is not None:
        return rec.control("while_loop", fns=(cond_fn, body_fn), operands=carry, single=single)
    want = (single, avals(carry))
    while pred_value("while_loop", _check_cond_result(cond_fn(*carry))):
        new, new_single = flat_tensors("while_loop", "body_fn's result", body_fn(*carry))
        check_same("while_loop", "the carry", want, "body_fn", (new_single, avals(new)))
        carry = new
    return pack(carry, single)


def _check_cond_result(p):
    if isinstance(p, bool):
        raise ControlFlowError("while_loop: cond_fn must return a 0-d bool Tensor, got a Python bool; a decision "
                               "made in Python is frozen by a trace: compute it with tensor ops.")
    check_pred("while_loop", p)
    return p


def scan(combine_fn: Callable, init, xs, dim: int = 0, reverse: bool = False) -> tuple:
    """``carry = init; for x in xs (along dim): carry, y = combine_fn(carry, x)``; returns ``(carry, stacked ys)``.

    ``init`` and ``xs`` are a Tensor or a flat tuple/list of Tensors (every ``xs`` tensor has the same length
    along ``dim``); ``combine_fn`` returns ``(new carry, y)`` with the carry's structure, shapes and dtypes.
    ``reverse=True`` steps from the end (ys keep the order of xs), as in ``jax.lax.scan``.

        >>> import eager
        >>> carry, ys = scan(lambda c, x: (c * x, c), eager.tensor(1.0), eager.tensor([2.0, 3.0]))
        >>> carry.item(), ys.tolist()
        (6.0, [1.0, 2.0])
    """
    carry, carry_single = flat_tensors("scan", "init", init)
    seq, xs_single = flat_tensors("scan", "xs", xs)
    length = _scan_length(seq, dim)
    rec = _region_recorder()
    if rec is not None:
        return rec.control("scan", fns=(combine_fn,), operands=carry + seq, n_carry=len(carry),
                           singles=(carry_single, xs_single), dim=dim, reverse=reverse, length=length)
    from eager.ops import stack
    want = (carry_single, avals(carry))
    ys_steps = []
    for i in (range(length - 1, -1, -1) if reverse else range(length)):
        x = [s.select(dim, i) for s in seq]
        new_carry, y = split_step(combine_fn(pack(carry, carry_single), pack(x, xs_single)))
        new, new_single = flat_tensors("scan", "combine_fn's new carry", new_carry)
        check_same("scan", "the carry", want, "combine_fn", (new_single, avals(new)))
        carry = new
        ys_steps.append(flat_tensors("scan", "combine_fn's y", y))
    if reverse:
        ys_steps.reverse()
    if not ys_steps:
        raise ControlFlowError("scan: xs has length 0 along dim; eager cannot know the shape of ys (give at least "
                               "one step).")
    ys = [stack([step[0][k] for step in ys_steps], dim) for k in range(len(ys_steps[0][0]))]
    return pack(carry, carry_single), pack(ys, ys_steps[0][1])


def split_step(result):
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ControlFlowError(f"scan: combine_fn must return a pair (new carry, y), got {type(result).__name__}"
                               + (f" of length {len(result)}" if isinstance(result, tuple) else "") + ".")
    return result


def _scan_length(seq: list[Tensor], dim: int) -> int:
    lengths = set()
    for s in seq:
        if not -s.ndim <= dim < max(s.ndim, 1) or s.ndim == 0:
            raise ControlFlowError(f"scan: dim {dim} is out of range for xs of shape {list(s.shape)}.")
        lengths.add(s.shape[dim])
    if len(lengths) != 1:
        raise ControlFlowError(f"scan: every xs tensor must have the same length along dim {dim}, got "
                               f"{[list(s.shape) for s in seq]}.")
    return lengths.pop()


# ---------------------------------------------------------------- the table rows (regions are params)


class Results(tuple):
    """The avals of a control-flow node's results (it has several; ``result`` nodes pick one each)."""

    shape = None
    dtype = None

    def __str__(self) -> str:
        return "(" + ", ".join(map(str, self)) + ")"


def _cond_impl(xp, pred, *args, branches):
    return tuple(branches[0 if bool(pred) else 1].run(list(args)))


def _while_impl(xp, *args, cond_region, body_region, n_carry):
    carry, consts = list(args[:n_carry]), list(args[n_carry:])
    while bool(cond_region.run(carry + consts)[0]):
        carry = list(body_region.run(carry + consts))
    return tuple(carry)


def _scan_impl(xp, *args, body, n_carry, n_xs, dim, reverse, length):
    carry = list(args[:n_carry])
    seq, consts = args[n_carry:n_carry + n_xs], list(args[n_carry + n_xs:])
    steps = range(length - 1, -1, -1) if reverse else range(length)
    ys = []
    for i in steps:
        out = body.run(carry + [xp.take(s, i, axis=dim) for s in seq] + consts)
        carry, y = list(out[:n_carry]), out[n_carry:]
        ys.append(y)
    if reverse:
        ys.reverse()
    stacked = [xp.stack([step[k] for step in ys], axis=dim) for k in range(len(body.out_avals) - n_carry)]
    return tuple(carry) + tuple(stacked)


def _cond_rule(pred, *args, branches):
    return Results(branches[0].out_avals)


def _while_rule(*args, cond_region, body_region, n_carry):
    return Results(body_region.out_avals)


def _scan_rule(*args, body, n_carry, n_xs, dim, reverse, length):
    ys = []
    for y in body.out_avals[n_carry:]:
        shape = list(y.shape)
        d = dim if dim >= 0 else dim + len(shape) + 1
        shape.insert(d, length)
        ys.append(Aval(tuple(shape), y.dtype))
    return Results(tuple(body.out_avals[:n_carry]) + tuple(ys))


def _no_gradient(g, out, *inputs, **params):
    # a control node is differentiated whole, never through this row: a trace gives its results the node's VJP
    # (tracer.regions), and tracer.grad replays the node through eager.cond / scan / while_loop, which do so too
    from eager.autograd.engine import BackwardError
    raise BackwardError("backward through a control-flow node's result applied on its own is not supported: "
                        "differentiate the node as a whole (call eager.cond / eager.scan, or use tracer.grad on the "
                        "traced function).")


def _result_rule(packed, index):
    return packed[index]


COND = define("cond", OTHER, _cond_impl, _cond_rule, lowering=HOST)
WHILE_LOOP = define("while_loop", OTHER, _while_impl, _while_rule, lowering=HOST)
SCAN = define("scan", OTHER, _scan_impl, _scan_rule, lowering=HOST)
RESULT = define("result", OTHER, lambda xp, packed, index: packed[index], _result_rule, _no_gradient, lowering=HOST)
CONTROL_OPS = {"cond": ("branches",), "while_loop": ("cond_region", "body_region"), "scan": ("body",)}
