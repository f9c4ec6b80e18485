"""In-place blocks for the fuzzer: take views of a fresh base, write through them, keep computing with the base.

A ``Block`` is one fuzz instruction. It clones its source (eager refuses in-place ops on a leaf that requires
grad), then runs steps: a ``View`` takes a chain of view ops of the base as it is now (slices, select, transpose,
permute, reshape, unsqueeze, squeeze), a ``Write`` writes in place through a view taken before (or into the base
itself). Its result is the base, a view (read after every later write), or both combined. So a write must reach
the base, and a view taken before another write must see that write too.

Each library runs a block its own way:

- eager writes through real views with the real in-place ops (``add_``, ``+=``, ``masked_fill_``, ``t[k] = v``);
- NumPy (the judge) writes through real NumPy views, which share memory as PyTorch's do, so it checks aliasing
  independently of any functional rewriting (``t[...] = new``);
- jax.numpy (the gradient oracle) runs the functional equivalent: every view is re-derived from the current base,
  and a write through a view is a scatter of the new values into the base (``.at[key].set``, an inverse
  permute, a reshape back), PyTorch's CopySlices written out.

Both array libraries compute a write's new values with the same functional rule (``WRITES``); the views and
their inverses are one table (``VIEWS``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------- views: shape, array view, inverse, eager, text


def _key(axis: int, k) -> tuple:
    # the trailing Ellipsis keeps NumPy's x[i] of a 1-D array a 0-d view (a bare int gives a scalar copy)
    return (slice(None),) * axis + ((k, Ellipsis) if isinstance(k, int) else (k,))


def _slice_shape(shape, axis, start, stop, step):
    return tuple(len(range(start, stop, step)) if i == axis else d for i, d in enumerate(shape))


def _eager_slice(x, axis, start, stop, step):
    # narrow() for unit steps (PyTorch's own view op), a basic-indexing key otherwise
    return x.narrow(axis, start, stop - start) if step == 1 else x[_key(axis, slice(start, stop, step))]


def _render_slice(t, axis, start, stop, step):
    if step == 1:
        return f"{t}.narrow({axis}, {start}, {stop - start})"
    return f"{t}[{':, ' * axis}{start}:{stop}:{step}]"


@dataclass(frozen=True)
class ViewOp:
    shape: object      # (shape, *params) -> the view's shape
    get: object        # (m, x, *params) -> the view (m: numpy or jax.numpy)
    put: object        # (L, base, inner, *params) -> base with the view replaced by inner (functional)
    eager: object      # (tensor, *params) -> an eager view
    render: object     # (name, *params) -> eager source text


VIEWS = {
    "slice": ViewOp(
        _slice_shape,
        lambda m, x, axis, start, stop, step: x[_key(axis, slice(start, stop, step))],
        lambda L, b, v, axis, start, stop, step: L.put(b, _key(axis, slice(start, stop, step)), v),
        _eager_slice, _render_slice),
    "select": ViewOp(
        lambda s, axis, i: s[:axis] + s[axis + 1:],
        lambda m, x, axis, i: x[_key(axis, i)],
        lambda L, b, v, axis, i: L.put(b, _key(axis, i), v),
        lambda x, axis, i: x.select(axis, i),
        lambda t, axis, i: f"{t}.select({axis}, {i})"),
    "transpose": ViewOp(
        lambda s, d0, d1: tuple(s[d1] if i == d0 else s[d0] if i == d1 else d for i, d in enumerate(s)),
        lambda m, x, d0, d1: m.swapaxes(x, d0, d1),
        lambda L, b, v, d0, d1: L.m.swapaxes(v, d0, d1),
        lambda x, d0, d1: x.transpose(d0, d1),
        lambda t, d0, d1: f"{t}.transpose({d0}, {d1})"),
    "T": ViewOp(
        lambda s: s[::-1],
        lambda m, x: m.transpose(x),
        lambda L, b, v: L.m.transpose(v),
        lambda x: x.T,
        lambda t: f"{t}.T"),
    "permute": ViewOp(
        lambda s, axes: tuple(s[a] for a in axes),
        lambda m, x, axes: m.transpose(x, axes),
        lambda L, b, v, axes: L.m.transpose(v, tuple(int(a) for a in np.argsort(axes))),
        lambda x, axes: x.permute(*axes),
        lambda t, axes: f"{t}.permute{axes}"),
    "reshape": ViewOp(  # only of a C-contiguous clone, where it is a view in every library (see programs.py)
        lambda s, shape: shape,
        lambda m, x, shape: m.reshape(x, shape),
        lambda L, b, v, shape: L.m.reshape(v, np.shape(b)),
        lambda x, shape: x.view(*shape),
        lambda t, shape: f"{t}.view{shape}"),
    "unsqueeze": ViewOp(
        lambda s, d: s[:d] + (1,) + s[d:],
        lambda m, x, d: m.expand_dims(x, d),
        lambda L, b, v, d: L.m.squeeze(v, d),
        lambda x, d: x.unsqueeze(d),
        lambda t, d: f"{t}.unsqueeze({d})"),
    "squeeze": ViewOp(
        lambda s, d: s[:d] + s[d + 1:],
        lambda m, x, d: m.squeeze(x, d),
        lambda L, b, v, d: L.m.expand_dims(v, d),
        lambda x, d: x.squeeze(d),
        lambda t, d: f"{t}.squeeze({d})"),
}


def view_shape(shape: tuple, chain: tuple) -> tuple:
    for name, *params in chain:
        shape = tuple(VIEWS[name].shape(tuple(shape), *params))
    return shape


# ---------------------------------------------------------------- writes: the functional rule, eager's op, text


def _clamp(L, v, lo, hi):
    # PyTorch passes the gradient where lo <= v <= hi; jnp.clip splits it at a tie, so spell the rule out
    return L.m.where(v < lo, lo, L.m.where(v > hi, hi, v))


def _region(L, v, o, key):
    """The value written by ``v[key] = o``: o broadcast to the region's shape."""
    shape = np.shape(v[key])
    return L.m.full(shape, o, dtype=v.dtype) if isinstance(o, float) else L.expand(o, shape)


def _eager_iadd(t, o):
    t += o
    return t


def _eager_isub(t, o):
    t -= o
    return t


def _eager_imul(t, o):
    t *= o
    return t


def _eager_setitem(t, key, o):
    t[key] = o


@dataclass(frozen=True)
class WriteOp:
    new: object        # (L, v, o, mask, w) -> v's new values (v's shape), computed out of place
    eager: object      # (t, o, mask, w) -> runs the eager in-place op
    render: object     # (t, o, mask, w) -> eager source text


WRITES = {
    "add_": WriteOp(lambda L, v, o, m, w: v + o * w.alpha if w.alpha != 1 else v + o,
                    lambda t, o, m, w: t.add_(o, alpha=w.alpha) if w.alpha != 1 else t.add_(o),
                    lambda t, o, m, w: f"{t}.add_({o}" + (f", alpha={w.alpha!r})" if w.alpha != 1 else ")")),
    "sub_": WriteOp(lambda L, v, o, m, w: v - o, lambda t, o, m, w: t.sub_(o), lambda t, o, m, w: f"{t}.sub_({o})"),
    "mul_": WriteOp(lambda L, v, o, m, w: v * o, lambda t, o, m, w: t.mul_(o), lambda t, o, m, w: f"{t}.mul_({o})"),
    "div_": WriteOp(lambda L, v, o, m, w: v / o, lambda t, o, m, w: t.div_(o), lambda t, o, m, w: f"{t}.div_({o})"),
    "iadd": WriteOp(lambda L, v, o, m, w: v + o, lambda t, o, m, w: _eager_iadd(t, o),
                    lambda t, o, m, w: f"{t} += {o}"),
    "isub": WriteOp(lambda L, v, o, m, w: v - o, lambda t, o, m, w: _eager_isub(t, o),
                    lambda t, o, m, w: f"{t} -= {o}"),
    "imul": WriteOp(lambda L, v, o, m, w: v * o, lambda t, o, m, w: _eager_imul(t, o),
                    lambda t, o, m, w: f"{t} *= {o}"),
    "copy_": WriteOp(lambda L, v, o, m, w: L.expand(o, np.shape(v)), lambda t, o, m, w: t.copy_(o),
                     lambda t, o, m, w: f"{t}.copy_({o})"),
    "fill_": WriteOp(lambda L, v, o, m, w: L.m.full_like(v, o), lambda t, o, m, w: t.fill_(o),
                     lambda t, o, m, w: f"{t}.fill_({o})"),
    "zero_": WriteOp(lambda L, v, o, m, w: L.m.zeros_like(v), lambda t, o, m, w: t.zero_(),
                     lambda t, o, m, w: f"{t}.zero_()"),
    "clamp_": WriteOp(lambda L, v, o, m, w: _clamp(L, v, *w.bounds), lambda t, o, m, w: t.clamp_(*w.bounds),
                      lambda t, o, m, w: f"{t}.clamp_({w.bounds[0]!r}, {w.bounds[1]!r})"),
    "masked_fill_": WriteOp(lambda L, v, o, m, w: L.m.where(m, o, v), lambda t, o, m, w: t.masked_fill_(m, o),
                            lambda t, o, m, w: f"{t}.masked_fill_({m}, {o})"),
    "setitem_mask": WriteOp(lambda L, v, o, m, w: L.m.where(m, o, v), lambda t, o, m, w: _eager_setitem(t, m, o),
                            lambda t, o, m, w: f"{t}[{m}] = {o}"),
    "setitem_slice": WriteOp(lambda L, v, o, m, w: L.put(v, w.index, _region(L, v, o, w.index)),
                             lambda t, o, m, w: _eager_setitem(t, w.index, o),
                             lambda t, o, m, w: f"{t}[{_render_index(w.index)}] = {o}"),
}


def _render_index(index) -> str:
    return f"{index.start}:{index.stop}" if isinstance(index, slice) else str(index)


# ---------------------------------------------------------------- the block


@dataclass(frozen=True)
class View:
    """Take the view ``chain`` (a tuple of ``(name, *params)``) of the base as it is now."""
    chain: tuple


@dataclass(frozen=True)
class Write:
    """Write in place into view ``target`` (-1: the base). ``value``: ``("const", c)``, ``("arg", j)`` (the
    instruction's j-th argument) or ``("view", k)``; ``mask``: ``("self",)`` (the target's current values) or
    ``("arg", j)``, compared ``> 0``; ``index``: the key of ``setitem_slice`` (dim 0 of the target)."""
    target: int
    op: str
    value: tuple | None = None
    mask: tuple | None = None
    index: object = None
    alpha: float = 1
    bounds: tuple = (-1.0, 1.0)


@dataclass(frozen=True)
class Block:
    """``fresh``: how the base is made from argument 0 (``clone`` or ``mul1``: x * 1); ``steps``: Views and
    Writes in order; ``out``: ``("base",)``, ``("view", k)`` or ``("mixed", k)`` (base + sum of view k)."""
    fresh: str
    steps: tuple
    out: tuple

    def render(self, out: int, arg_names: list) -> list[str]:
        base = f"t{out}"
        lines = [f"{base} = {arg_names[0]}.clone()" if self.fresh == "clone" else f"{base} = {arg_names[0]} * 1"]
        n_views = 0
        for step in self.steps:
            if isinstance(step, View):
                text = base
                for name, *params in step.chain:
                    text = VIEWS[name].render(text, *params)
                lines.append(f"{base}_{n_views} = {text}")
                n_views += 1
                continue
            t = base if step.target < 0 else f"{base}_{step.target}"
            lines.append(WRITES[step.op].render(t, _render_operand(step.value, base, arg_names),
                                                _render_mask(step, t, base, arg_names), step))
        kind = self.out[0]
        result = {"base": base, "view": f"{base}_{self.out[-1]}", "mixed": f"{base} + {base}_{self.out[-1]}.sum()"}
        lines.append(f"v{out} = {result[kind]}")
        return lines


def _render_operand(value, base, arg_names):
    if value is None:
        return None
    kind, x = value
    return repr(x) if kind == "const" else arg_names[x] if kind == "arg" else f"{base}_{x}"


def _render_mask(step, t, base, arg_names):
    if step.mask is None:
        return None
    source = t if step.mask[0] == "self" else arg_names[step.mask[1]]
    return f"({source} > 0)"


def run_block(L, args: list, block: Block):
    """The block's result computed with library ``L`` (``L.functional``: jax's rewriting, else real views)."""
    base = L.fresh(args[0], block.fresh)
    views = []  # real views (eager, NumPy), or the chains a functional library re-derives from the base

    def now(k):
        if k < 0:
            return base
        return take(L, base, views[k]) if L.functional else views[k]

    for step in block.steps:
        if isinstance(step, View):
            views.append(step.chain if L.functional else take(L, base, step.chain))
            continue
        t = now(step.target)
        value = _operand(step.value, args, now)
        mask = None if step.mask is None else _mask(step, t, args)
        if L.name == "eager":
            WRITES[step.op].eager(t, value, mask, step)
        else:
            new = WRITES[step.op].new(L, t, value, mask, step)
            if L.functional:
                base = put(L, base, () if step.target < 0 else views[step.target], new)
            else:
                t[...] = new  # NumPy: into the view's memory, which the base and every other view share
    kind = block.out[0]
    if kind == "base":
        return base
    view = now(block.out[1])
    return view if kind == "view" else base + L.sum(view, None, False)


def _operand(value, args, now):
    if value is None:
        return None
    kind, x = value
    return x if kind == "const" else args[x] if kind == "arg" else now(x)


def _mask(step, t, args):
    return (t if step.mask[0] == "self" else args[step.mask[1]]) > 0


def take(L, x, chain: tuple):
    """The view ``chain`` of ``x`` in library ``L``."""
    for name, *params in chain:
        x = L.view(x, name, params)
    return x


def put(L, base, chain: tuple, new):
    """``base`` with its view ``chain`` replaced by ``new``, computed functionally (chain's first op outermost)."""
    if not chain:
        return new
    (name, *params), rest = chain[0], chain[1:]
    inner = VIEWS[name].get(L.m, base, *params)
    return VIEWS[name].put(L, base, put(L, inner, rest, new), *params)
