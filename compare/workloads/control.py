"""Control-flow workloads: a static graph that must decide on every call (``cond``, ``while_loop``, ``scan``).

Each is written once with ``lib.cond`` / ``lib.while_loop`` / ``lib.scan`` (eager's, or PyTorch's higher-order
ops for the torch peer); traced and compiled modes record ONE control node with regions, so they take another
branch or trip count when the data asks. The NumPy peer (Python control flow, float64) is the reference; the
JAX peer uses ``jax.lax.cond`` / ``while_loop`` / ``scan`` under ``jax.jit``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from compare.workloads.registry import (
    JaxStep,
    Program,
    as_lib_tensor,
    load_params,
    program,
    scripted_twin,
    workload,
)


def _ops(lib):
    """cond, while_loop and scan of ``lib`` (PyTorch keeps scan among its higher-order ops)."""
    if getattr(lib, "__name__", "") == "torch":
        from torch._higher_order_ops import scan
        return SimpleNamespace(cond=lib.cond, while_loop=lib.while_loop, scan=scan)
    return SimpleNamespace(cond=lib.cond, while_loop=lib.while_loop, scan=lib.scan)


# ------------------------------------------------------------------ an Elman RNN over a sequence: scan
# (sequence length, batch, input width, hidden width)
RNN_SIZES = {"small": (16, 8, 16, 32), "medium": (64, 32, 64, 128), "large": (256, 64, 128, 256)}


def _rnn_inputs(size: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    t, b, d, h = RNN_SIZES[size]
    return {"xs": rng.standard_normal((t, b, d)).astype(np.float32),
            "w_ih": (rng.standard_normal((d, h)) / np.sqrt(d)).astype(np.float32),
            "w_hh": (rng.standard_normal((h, h)) / np.sqrt(h)).astype(np.float32),
            "b": (0.1 * rng.standard_normal(h)).astype(np.float32),
            "h0": np.zeros((b, h), np.float32)}


@workload(inputs=_rnn_inputs, size_names=tuple(RNN_SIZES), outputs=("h", "ys"), tags=("control-flow", "scan"))
def rnn_scan(lib, xs, w_ih, w_hh, b, h0):
    """h_t = tanh(x_t W_ih + h_{t-1} W_hh + b) over the sequence: ``scan`` (one node, not T unrolled steps)."""
    def step(h, x):
        h = lib.tanh(x @ w_ih + h @ w_hh + b)
        return h, h.clone()  # torch's scan refuses a carry that aliases a y
    return _ops(lib).scan(step, h0, xs)


@rnn_scan.peer("numpy")
def _(xp, xs, w_ih, w_hh, b, h0):
    h, ys = h0, []
    for x in xs:
        h = xp.tanh(x @ w_ih + h @ w_hh + b)
        ys.append(h)
    return h, xp.stack(ys)


@rnn_scan.peer("jax")
def _(jnp, arrays):
    import jax

    def step(carry, xs, w_ih, w_hh, b, h0):
        h, ys = jax.lax.scan(lambda h, x: (jnp.tanh(x @ w_ih + h @ w_hh + b),) * 2, h0, xs)
        return (h, ys), carry
    names = ("xs", "w_ih", "w_hh", "b", "h0")
    return JaxStep(step, (), tuple(jnp.asarray(arrays[k]) for k in names))


rnn_scan.torchscript_twin(scripted_twin("rnn_scan", ("xs", "w_ih", "w_hh", "b", "h0")))  # a Python for: prim::Loop


# ------------------------------------------------------------------ power iteration to a tolerance: while_loop
POWER_SIZES = {"small": 32, "medium": 256, "large": 1024}
POWER_TOL, POWER_MAX_STEPS = 1e-4, 500


def _power_inputs(size: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = POWER_SIZES[size]
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    spectrum = np.linspace(1.0, 2.0, n) ** 4  # a gap that needs tens of steps; the count depends on the data
    a = (q * spectrum) @ q.T
    return {"a": a.astype(np.float32), "v0": rng.standard_normal(n).astype(np.float32)}


@workload(inputs=_power_inputs, size_names=tuple(POWER_SIZES), outputs=("eigenvalue", "vector"),
          tags=("control-flow", "while_loop"))
def power_iteration(lib, a, v0):
    """The dominant eigenpair of a symmetric matrix, iterated until the vector moves less than a tolerance:
    ``while_loop`` (the trip count is decided by the data on every call)."""
    def step(i, v, delta):
        w = a @ v
        w = w / lib.sqrt((w * w).sum())
        return i + 1, w, lib.sqrt(((w - v) * (w - v)).sum())

    def running(i, v, delta):
        return (delta > POWER_TOL) & (i < POWER_MAX_STEPS)
    v = v0 / lib.sqrt((v0 * v0).sum())
    start = (lib.zeros((), dtype=lib.int64), v, lib.ones((), dtype=v.dtype))
    _, v, _ = _ops(lib).while_loop(running, step, start)
    return (v * (a @ v)).sum(), v


@power_iteration.peer("numpy")
def _(xp, a, v0):
    v, delta, i = v0 / xp.sqrt((v0 * v0).sum()), 1.0, 0
    while delta > POWER_TOL and i < POWER_MAX_STEPS:
        w = a @ v
        w = w / xp.sqrt((w * w).sum())
        v, delta, i = w, float(xp.sqrt(((w - v) * (w - v)).sum())), i + 1
    return (v * (a @ v)).sum(), v


@power_iteration.peer("jax")
def _(jnp, arrays):
    import jax

    def step(carry, a, v0):
        def body(c):
            i, v, _ = c
            w = a @ v
            w = w / jnp.sqrt((w * w).sum())
            return i + 1, w, jnp.sqrt(((w - v) * (w - v)).sum())
        v = v0 / jnp.sqrt((v0 * v0).sum())
        _, v, _ = jax.lax.while_loop(lambda c: (c[2] > POWER_TOL) & (c[0] < POWER_MAX_STEPS), body,
                                     (0, v, jnp.ones((), v.dtype)))
        return ((v * (a @ v)).sum(), v), carry
    return JaxStep(step, (), (jnp.asarray(arrays["a"]), jnp.asarray(arrays["v0"])))


power_iteration.torchscript_twin(scripted_twin("power_iteration", ("a", "v0")))  # a Python while: prim::Loop


# ------------------------------------------------------------------ a data-dependent gate between two nets: cond
GATE_SIZES = {"small": (16, 64), "medium": (128, 512), "large": (512, 2048)}


def _gate_inputs(size: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, d = GATE_SIZES[size]
    scale = 1.0 / np.sqrt(d)
    return {"x": rng.standard_normal((n, d)).astype(np.float32),
            "w_a": (scale * rng.standard_normal((d, d))).astype(np.float32),
            "w_b": (scale * rng.standard_normal((d, d))).astype(np.float32)}


@workload(inputs=_gate_inputs, size_names=tuple(GATE_SIZES), tags=("control-flow", "cond"))
def branch_gate(lib, x, w_a, w_b):
    """One of two sub-networks, picked by the batch's own statistics: ``cond`` (both branches in the graph)."""
    return _ops(lib).cond(x.mean() > 0, lambda v: lib.tanh(v @ w_a), lambda v: lib.relu(v @ w_b) * 0.5, (x,))


@branch_gate.peer("numpy")
def _(xp, x, w_a, w_b):
    return xp.tanh(x @ w_a) if x.mean() > 0 else xp.maximum(x @ w_b, 0) * 0.5


@branch_gate.peer("jax")
def _(jnp, arrays):
    import jax

    def step(carry, x, w_a, w_b):
        out = jax.lax.cond(x.mean() > 0, lambda v: jnp.tanh(v @ w_a), lambda v: jnp.maximum(v @ w_b, 0) * 0.5, x)
        return (out,), carry
    return JaxStep(step, (), tuple(jnp.asarray(arrays[k]) for k in ("x", "w_a", "w_b")))


branch_gate.torchscript_twin(scripted_twin("branch_gate", ("x", "w_a", "w_b")))  # a Python if: prim::If


# ------------------------------------------------------------------ DynamicNet with its counter as state: cond
def _dyn_seed():
    from compare.workloads import seeds
    return seeds


@program(kind="forward", inputs=lambda size, rng: _dyn_seed()._dyn_inputs(size, rng),
         size_names=tuple(("small", "medium", "large")), tags=("control-flow", "cond"),
         reference=lambda x, **params: _dyn_seed()._dyn_ref(x, **params),
         note="Seed 000's DynamicNet written the static way: the call counter is a 0-d int64 buffer and the branch "
              "is eager.cond on it (torch.cond for the torch peer, lax.cond with the counter carried for JAX), so "
              "one traced program serves every call with no retrace.")
def dynamic_net_cond(lib, arrays):
    """DynamicNet with ``self.counter`` a tensor and ``cond`` picking the branch: odd calls double the input."""
    nn = lib.nn
    ops = _ops(lib)

    class DynamicNet(nn.Module):
        def __init__(self, d_in, h, d_out):
            super().__init__()
            self.linear1 = nn.Linear(d_in, h)
            self.linear2 = nn.Linear(h, d_out)
            self.register_buffer("counter", lib.zeros((), dtype=lib.int64))

        def forward(self, x):
            self.counter.add_(1)
            h = ops.cond((self.counter & 1) == 0, lambda v: self.linear1(v), lambda v: self.linear1(v * 2), (x,))
            return self.linear2(h.clamp(min=0))

    model = DynamicNet(arrays["x"].shape[1], arrays["linear1.weight"].shape[0], arrays["linear2.weight"].shape[0])
    load_params(lib, model, arrays)
    return Program(model, (as_lib_tensor(lib, arrays["x"]),))


@dynamic_net_cond.peer("jax")
def _(jnp, arrays):
    import jax

    from compare.workloads import npref
    params = {k: jnp.asarray(v) for k, v in arrays.items() if k != "x"}

    def step(carry, x):
        p, counter = carry
        counter = counter + 1
        h = jax.lax.cond(counter % 2 == 0, lambda v: v, lambda v: v * 2, x)
        return (npref.dense_forward(p, ["linear1", "linear2"], h, xp=jnp)[0],), (p, counter)
    return JaxStep(step, (params, jnp.zeros((), jnp.int32)), (jnp.asarray(arrays["x"]),))


@dynamic_net_cond.torchscript_twin
def _(torch, arrays):
    """The same module with a Python ``if`` on its counter buffer where the workload has ``cond``."""
    from compare.workloads.torchscript import DynamicNetCond
    model = DynamicNetCond(arrays["x"].shape[1], arrays["linear1.weight"].shape[0], arrays["linear2.weight"].shape[0])
    load_params(torch, model, arrays)
    return Program(model, (as_lib_tensor(torch, arrays["x"]),))


# ------------------------------------------------------------------ the Elman RNN's SGD train step: scan + backward
RNN_LR = 0.05
RNN_GRADS = ("grad:w_ih", "grad:w_hh", "grad:b", "grad:w_out")


def _rnn_train_inputs(size: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    arrays = _rnn_inputs(size, rng)
    h = arrays["w_hh"].shape[0]
    arrays["w_out"] = (rng.standard_normal((h, 4)) / np.sqrt(h)).astype(np.float32)
    arrays["y"] = rng.standard_normal((arrays["xs"].shape[1], 4)).astype(np.float32)
    return arrays


@program(kind="train", inputs=_rnn_train_inputs, size_names=tuple(RNN_SIZES), outputs=("loss", *RNN_GRADS),
         tags=("control-flow", "scan"))
def rnn_scan_train(lib, arrays):
    """One SGD step of an Elman RNN read out from its last state: backward through ``scan`` (a reverse scan)."""
    nn = lib.nn
    ops = _ops(lib)

    class Elman(nn.Module):
        def __init__(self):
            super().__init__()
            for name in ("w_ih", "w_hh", "b", "w_out"):
                setattr(self, name, nn.Parameter(as_lib_tensor(lib, arrays[name])))

        def forward(self, xs, h0):
            def cell(h, x):
                h = lib.tanh(x @ self.w_ih + h @ self.w_hh + self.b)
                return h, h.clone()
            h, _ = ops.scan(cell, h0, xs)
            return h @ self.w_out

    model = Elman()
    opt = lib.optim.SGD(model.parameters(), lr=RNN_LR)
    params = [model.w_ih, model.w_hh, model.b, model.w_out]

    def step(xs, h0, y):
        opt.zero_grad()
        loss = ((model(xs, h0) - y) ** 2).mean()
        loss.backward()
        opt.step()
        return (loss, *[p.grad for p in params])
    args = tuple(as_lib_tensor(lib, arrays[k]) for k in ("xs", "h0", "y"))
    return Program(step, args, lambda: {f"state:{n}": p for n, p in model.named_parameters()}, (model,), (opt,))


def _rnn_train_ref(xs, h0, y, w_ih, w_hh, b, w_out, **_):
    """Backpropagation through time by hand, in float64."""
    hs = [h0]
    for x in xs:
        hs.append(np.tanh(x @ w_ih + hs[-1] @ w_hh + b))
    out = hs[-1] @ w_out
    loss = ((out - y) ** 2).mean()
    d_out = 2 * (out - y) / out.size
    grads = {"w_out": hs[-1].T @ d_out, "w_ih": np.zeros_like(w_ih), "w_hh": np.zeros_like(w_hh),
             "b": np.zeros_like(b)}
    dh = d_out @ w_out.T
    for t in range(len(xs), 0, -1):
        da = dh * (1 - hs[t] ** 2)
        grads["w_ih"] += xs[t - 1].T @ da
        grads["w_hh"] += hs[t - 1].T @ da
        grads["b"] += da.sum(0)
        dh = da @ w_hh.T
    params = {"w_ih": w_ih, "w_hh": w_hh, "b": b, "w_out": w_out}
    return {"loss": loss, **{f"grad:{k}": grads[k] for k in params},
            **{f"state:{k}": v - RNN_LR * grads[k] for k, v in params.items()}}


rnn_scan_train.reference = _rnn_train_ref


@rnn_scan_train.peer("jax")
def _(jnp, arrays):
    import jax

    def loss_fn(p, xs, h0, y):
        h, _ = jax.lax.scan(lambda h, x: (jnp.tanh(x @ p["w_ih"] + h @ p["w_hh"] + p["b"]), None), h0, xs)
        return ((h @ p["w_out"] - y) ** 2).mean()

    def step(p, xs, h0, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, xs, h0, y)
        new = {k: v - RNN_LR * grads[k] for k, v in p.items()}
        return (loss, *[grads[k.removeprefix("grad:")] for k in RNN_GRADS]), new
    params = {k: jnp.asarray(arrays[k]) for k in ("w_ih", "w_hh", "b", "w_out")}
    return JaxStep(step, params, tuple(jnp.asarray(arrays[k]) for k in ("xs", "h0", "y")),
                   state=lambda p: {f"state:{k}": v for k, v in p.items()})
