"""The seed programs (../shared/seeds), ported by changing ``import torch`` to the ``lib`` argument.

Where a seed's printed output is wrong, the reference follows mathematics and PyTorch instead:
``y = (x + w) * (w + 1)`` at w=1, x=2 has w.grad 5, x.grad 2, a.grad 2.
"""

from __future__ import annotations

import numpy as np

from compare.workloads import npref
from compare.workloads.registry import JaxStep, Program, as_lib_tensor, load_params, param_state, program

# ------------------------------------------------------------------ y = (x + w) * (w + 1), with gradients
ADD_MUL_SIZES = {"small": 1, "medium": 4096, "large": 1 << 20}


def _add_mul_inputs(size: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if size == "small":  # the seed's own numbers
        return {"x": np.array([2.0], np.float32), "w": np.array([1.0], np.float32)}
    n = ADD_MUL_SIZES[size]
    return {"x": rng.standard_normal(n).astype(np.float32), "w": rng.standard_normal(n).astype(np.float32)}


@program(kind="train", inputs=_add_mul_inputs, outputs=("y", "grad:w", "grad:x", "grad:a"))
def seed_add_mul(lib, arrays):
    """Seed 004: leaves w and x, a retained intermediate a = w + x, y = a * (w + 1), then backward."""
    x = as_lib_tensor(lib, arrays["x"], requires_grad=True)
    w = as_lib_tensor(lib, arrays["w"], requires_grad=True)

    def step(x, w):
        x.grad = None  # each call computes fresh gradients instead of accumulating into the last ones
        w.grad = None
        a = w + x
        a.retain_grad()
        b = w + 1
        y = a * b
        y.sum().backward()
        return y, w.grad, x.grad, a.grad
    return Program(step, (x, w))


def _add_mul_ref(x, w):
    return {"y": (x + w) * (w + 1), "grad:w": (w + 1) + (x + w), "grad:x": w + 1, "grad:a": w + 1}


seed_add_mul.reference = _add_mul_ref


@seed_add_mul.peer("jax")
def _(jnp, arrays):
    import jax

    def step(carry, x, w):
        y, vjp = jax.vjp(lambda x, w, a_shift: ((x + w + a_shift) * (w + 1)), x, w, jnp.zeros_like(x))
        gx, gw, ga = vjp(jnp.ones_like(y))
        return (y, gw, gx, ga), carry
    return JaxStep(step, None, (jnp.asarray(arrays["x"]), jnp.asarray(arrays["w"])))


# ------------------------------------------------------------------ DynamicNet: a call counter picks the branch
# batch, D_in, H, D_out (small is the seed's own 1 x 64 -> 32 -> 10)
DYN_SIZES = {"small": (1, 64, 32, 10), "medium": (64, 256, 512, 64), "large": (512, 1024, 2048, 256)}


def _dyn_inputs(size: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, d_in, h, d_out = DYN_SIZES[size]
    arrays = {"x": rng.standard_normal((n, d_in)).astype(np.float32)}
    npref.init_linear(rng, arrays, "linear1", d_in, h)
    npref.init_linear(rng, arrays, "linear2", h, d_out)
    return arrays


@program(kind="forward", inputs=_dyn_inputs, expect_divergence=True,
         note="Python state (self.counter) picks the branch. Our traced and compiled modes guard it (checked on "
              "entry, written back after the call) and retrace for each new value, running eagerly past cache_size "
              "programs, as torch.compile does: they agree with eager. Peers that freeze it (jax.jit, "
              "torch.jit.trace, onnxruntime) replay the branch of the call they saw and disagree on every other call.")
def dynamic_net(lib, arrays):
    """Seed 000: ``DynamicNet``, whose forward doubles the input on odd calls only. A divergence is expected of
    the peers that freeze Python state, not of our guarded traced and compiled modes (``compare.harness``)."""
    return _dynamic_net_program(lib, arrays)


def _dynamic_net_program(lib, arrays) -> Program:
    """The seed's module as written (a Python counter picks the branch), loaded with the workload's parameters."""
    nn = lib.nn

    class DynamicNet(nn.Module):
        def __init__(self, D_in, H, D_out):  # noqa: N803  (the seed's names)
            super().__init__()
            self.linear1 = nn.Linear(D_in, H)
            self.linear2 = nn.Linear(H, D_out)
            self.counter = 0

        def forward(self, x):
            self.counter += 1
            if self.counter % 2 == 0:
                h_relu = self.linear1(x).clamp(min=0)
            else:
                h_relu = self.linear1(x * 2).clamp(min=0)
            return self.linear2(h_relu)

    n, d_in = arrays["x"].shape
    model = DynamicNet(d_in, arrays["linear1.weight"].shape[0], arrays["linear2.weight"].shape[0])
    load_params(lib, model, arrays)
    return Program(model, (as_lib_tensor(lib, arrays["x"]),))


def _dyn_forward(xp, x, params, call):
    scale = 1.0 if call % 2 == 0 else 2.0
    return npref.dense_forward(params, ["linear1", "linear2"], x * scale, xp=xp)[0]


def _dyn_ref(x, **params):
    return {"out": _dyn_forward(np, x, params, call=1)}  # the first call is odd: x * 2


dynamic_net.reference = _dyn_ref
# The seed's module is TorchScript as written: torch.jit.script keeps its `if` on self.counter (a mutable int
# attribute of the scripted module) as a prim::If, so it agrees with eager on every call.
dynamic_net.torchscript_twin(dynamic_net.build)


@dynamic_net.peer("jax")
def _dyn_jax(jnp, arrays):
    params = {k: jnp.asarray(v) for k, v in arrays.items() if k != "x"}
    calls = [0]  # Python state, as in the seed: jax.jit bakes it in just as a trace does

    def step(p, x):
        calls[0] += 1
        return (_dyn_forward(jnp, x, p, calls[0]),), p
    return JaxStep(step, params, (jnp.asarray(arrays["x"]),))


@program(kind="forward", inputs=_dyn_inputs, expect_divergence=True, tags=("script",),
         note="Seed 000's DynamicNet unchanged, run through tracer.script in our traced and compiled modes: the "
              "source is rewritten so self.counter is lifted into a 0-d int64 state tensor (an int again after each "
              "call) and the branch on it becomes eager.cond: one program serves every call, with no retrace. "
              "Peers that freeze Python state (jax.jit, torch.jit.trace) still disagree on every other call.")
def dynamic_net_script(lib, arrays):
    """Seed 000's ``DynamicNet`` as written, for ``tracer.script`` (the workload's ``script`` tag asks the traced and
    compiled modes for it); eager and the peers run it as ``dynamic_net`` does."""
    return _dynamic_net_program(lib, arrays)


dynamic_net_script.reference = _dyn_ref
dynamic_net_script.peer("jax")(_dyn_jax)
dynamic_net_script.torchscript_twin(dynamic_net_script.build)


# ------------------------------------------------------------------ the ModuleList network
# batch, input width (small is the seed's 1 x 64)
LIST_SIZES = {"small": (1, 64), "medium": (64, 512), "large": (256, 2048)}
LIST_LAYERS = ["layers.0", "layers.1", "layers.2", "final_layer"]


def _list_inputs(size: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, width = LIST_SIZES[size]
    arrays = {"x": rng.standard_normal((n, width)).astype(np.float32)}
    for i in range(3):
        npref.init_linear(rng, arrays, f"layers.{i}", width, width // 2)
        width //= 2
    npref.init_linear(rng, arrays, "final_layer", width, 10)
    return arrays


def module_list_net(lib, input_size: int, output_size: int, corrected: bool = True):
    """Seed 003's network. The seed's own version (``corrected=False``) cannot run: its layers are
    ``Linear(n, n)`` while the width halves, so the second layer gets 64 features but expects 32.
    The corrected one makes each layer ``Linear(n, n // 2)``."""
    nn = lib.nn

    class DynamicNet(nn.Module):
        def __init__(self, input_size, output_size):
            super().__init__()
            self.layers = nn.ModuleList()
            for _ in range(3):
                out = input_size // 2 if corrected else input_size
                self.layers.append(nn.Linear(input_size, out))
                input_size = input_size // 2
            self.final_layer = nn.Linear(input_size, output_size)

        def forward(self, x):
            for layer in self.layers:
                x = lib.relu(layer(x))
            return self.final_layer(x)

    return DynamicNet(input_size, output_size)


@program(kind="forward", inputs=_list_inputs,
         note="Seed 003 with corrected layer sizes (Linear(n, n//2)); the seed's Linear(n, n) version does not run.")
def module_list(lib, arrays):
    """Seed 003: layers held in an ``nn.ModuleList`` and applied in a Python loop (unrolled by a trace)."""
    model = module_list_net(lib, arrays["x"].shape[1], 10)
    load_params(lib, model, arrays)
    return Program(model, (as_lib_tensor(lib, arrays["x"]),))


module_list.torchscript_twin(module_list.build)  # the ModuleList loop is unrolled by TorchScript as by a trace


@module_list.peer("numpy")
def _(xp, x, **params):
    return npref.dense_forward(params, LIST_LAYERS, x, xp=xp)[0]


# ------------------------------------------------------------------ the GAN step with detach()
# batch, noise width, hidden, data width
GAN_SIZES = {"small": (16, 8, 32, 16), "medium": (128, 32, 128, 64), "large": (512, 64, 512, 256)}
G_LAYERS, D_LAYERS = ["G.0", "G.2"], ["D.0", "D.2"]


def _gan_inputs(size: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, nz, h, d = GAN_SIZES[size]
    arrays = {"real": rng.standard_normal((n, d)).astype(np.float32),
              "noise": rng.standard_normal((n, nz)).astype(np.float32)}
    npref.init_linear(rng, arrays, "G.0", nz, h)
    npref.init_linear(rng, arrays, "G.2", h, d)
    npref.init_linear(rng, arrays, "D.0", d, h)
    npref.init_linear(rng, arrays, "D.2", h, 1)
    return arrays


@program(kind="train", inputs=_gan_inputs, outputs=("d_loss", "g_loss"))
def gan_step(lib, arrays):
    """Seed 000's GAN step: the discriminator learns on ``fake.detach()``, then the generator through D."""
    nn = lib.nn
    n, nz, h, d = (arrays["real"].shape[0], arrays["noise"].shape[1], arrays["G.0.weight"].shape[0],
                   arrays["real"].shape[1])
    G = nn.Sequential(nn.Linear(nz, h), nn.ReLU(), nn.Linear(h, d), nn.Tanh())
    D = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, 1), nn.Sigmoid())
    load_params(lib, G, arrays, "G.")
    load_params(lib, D, arrays, "D.")
    g_optimizer = lib.optim.Adam(G.parameters(), lr=0.001)
    d_optimizer = lib.optim.Adam(D.parameters(), lr=0.001)
    criterion = nn.BCELoss()
    real_label = as_lib_tensor(lib, np.ones((n, 1), arrays["real"].dtype))
    fake_label = as_lib_tensor(lib, np.zeros((n, 1), arrays["real"].dtype))

    def step(real_data, noise):
        d_optimizer.zero_grad()
        real_output = D(real_data)
        fake_data = G(noise)
        fake_output = D(fake_data.detach())
        d_loss = criterion(real_output, real_label) + criterion(fake_output, fake_label)
        d_loss.backward()
        d_optimizer.step()

        g_optimizer.zero_grad()
        fake_output = D(fake_data)
        g_loss = criterion(fake_output, real_label)
        g_loss.backward()
        g_optimizer.step()
        return d_loss, g_loss

    def state():
        return {**param_state(G, "G.")(), **param_state(D, "D.")()}
    return Program(step, (as_lib_tensor(lib, arrays["real"]), as_lib_tensor(lib, arrays["noise"])), state,
                   (G, D), (d_optimizer, g_optimizer))


def _gan_ref(real, noise, **params):
    G = {k: v for k, v in params.items() if k.startswith("G.")}
    D = {k: v for k, v in params.items() if k.startswith("D.")}
    ones, zeros = np.ones((len(real), 1)), np.zeros((len(real), 1))
    fake, g_cache = npref.dense_forward(G, G_LAYERS, noise, last="tanh")
    p_real, c_real = npref.dense_forward(D, D_LAYERS, real, last="sigmoid")
    p_fake, c_fake = npref.dense_forward(D, D_LAYERS, fake, last="sigmoid")  # fake.detach(): no grad to G
    d_loss = npref.bce(p_real, ones) + npref.bce(p_fake, zeros)
    g_r, _ = npref.dense_backward(D, D_LAYERS, c_real, npref.bce_grad(p_real, ones))
    g_f, _ = npref.dense_backward(D, D_LAYERS, c_fake, npref.bce_grad(p_fake, zeros))
    D, _ = npref.adam(D, {k: g_r[k] + g_f[k] for k in g_r}, lr=0.001)
    p_fake2, c_fake2 = npref.dense_forward(D, D_LAYERS, fake, last="sigmoid")  # through the updated D
    _, g_fake = npref.dense_backward(D, D_LAYERS, c_fake2, npref.bce_grad(p_fake2, ones))
    g_grads, _ = npref.dense_backward(G, G_LAYERS, g_cache, g_fake)
    G, _ = npref.adam(G, g_grads, lr=0.001)
    return {"d_loss": d_loss, "g_loss": npref.bce(p_fake2, ones),
            **{f"state:{k}": v for k, v in {**G, **D}.items()}}


gan_step.reference = _gan_ref


@gan_step.peer("jax")
def _(jnp, arrays):
    import jax

    def d_loss_fn(D, real, fake):
        ones, zeros = jnp.ones((len(real), 1)), jnp.zeros((len(real), 1))
        return (npref.bce(npref.dense_forward(D, D_LAYERS, real, last="sigmoid", xp=jnp)[0], ones, xp=jnp)
                + npref.bce(npref.dense_forward(D, D_LAYERS, fake, last="sigmoid", xp=jnp)[0], zeros, xp=jnp))

    def g_loss_fn(G, D, noise):
        fake = npref.dense_forward(G, G_LAYERS, noise, last="tanh", xp=jnp)[0]
        p = npref.dense_forward(D, D_LAYERS, fake, last="sigmoid", xp=jnp)[0]
        return npref.bce(p, jnp.ones_like(p), xp=jnp)

    def step(carry, real, noise):
        G, D, sg, sd = carry
        fake = jax.lax.stop_gradient(npref.dense_forward(G, G_LAYERS, noise, last="tanh", xp=jnp)[0])
        d_loss, dg = jax.value_and_grad(d_loss_fn)(D, real, fake)
        D, sd = npref.adam(D, dg, lr=0.001, state=sd, xp=jnp)
        g_loss, gg = jax.value_and_grad(g_loss_fn)(G, D, noise)
        G, sg = npref.adam(G, gg, lr=0.001, state=sg, xp=jnp)
        return (d_loss, g_loss), (G, D, sg, sd)
    G = {k: jnp.asarray(v) for k, v in arrays.items() if k.startswith("G.")}
    D = {k: jnp.asarray(v) for k, v in arrays.items() if k.startswith("D.")}
    return JaxStep(step, (G, D, npref.adam_state(G, jnp), npref.adam_state(D, jnp)),
                   (jnp.asarray(arrays["real"]), jnp.asarray(arrays["noise"])),
                   state=lambda c: {f"state:{k}": v for k, v in {**c[0], **c[1]}.items()})


# ------------------------------------------------------------------ the custom sigmoid Function
SIGMOID_SIZES = {"small": (64, 64), "medium": (512, 1024), "large": (2048, 4096)}


def _sigmoid_inputs(size: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": (2.0 * rng.standard_normal(SIGMOID_SIZES[size])).astype(np.float32)}


@program(kind="train", inputs=_sigmoid_inputs, outputs=("y", "grad:x"))
def custom_sigmoid(lib, arrays):
    """Seed 001: sigmoid as an ``autograd.Function`` (one graph node) with backward ``y * (1 - y)``."""

    class Sigmoid(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = 1.0 / (1.0 + lib.exp(-x))
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, grad_y):
            (y,) = ctx.saved_tensors
            return grad_y * y * (1.0 - y)

    def step(x):
        x.grad = None
        y = Sigmoid.apply(x)
        y.sum().backward()
        return y, x.grad
    return Program(step, (as_lib_tensor(lib, arrays["x"], requires_grad=True),))


def _sigmoid_ref(x):
    y = npref.sigmoid(np, x)
    return {"y": y, "grad:x": y * (1.0 - y)}


custom_sigmoid.reference = _sigmoid_ref


@custom_sigmoid.peer("jax")
def _(jnp, arrays):
    import jax

    def step(carry, x):
        y, vjp = jax.vjp(lambda x: npref.sigmoid(jnp, x), x)
        return (y, vjp(jnp.ones_like(y))[0]), carry
    return JaxStep(step, None, (jnp.asarray(arrays["x"]),))
