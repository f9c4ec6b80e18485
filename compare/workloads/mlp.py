"""Linear-ReLU-Linear networks: forward, SGD and Adam train steps, Adam's update alone, a small classifier.

The train steps are written as a PyTorch user writes them (``zero_grad``, ``loss.backward()``, ``step``) and
return the loss and the gradients, so the harness checks gradients as well as the parameters after the step.
"""

from __future__ import annotations

import numpy as np

from compare.workloads import npref
from compare.workloads.registry import JaxStep, Program, as_lib_tensor, load_params, param_state, program

# batch, d_in, hidden, d_out
MLP_SIZES = {"small": (32, 64, 128, 10), "medium": (128, 256, 512, 64), "large": (512, 1024, 2048, 256)}
LAYERS = ["0", "2"]  # nn.Sequential(Linear, ReLU, Linear) names its Linears 0 and 2
GRADS = tuple(f"grad:{n}.{p}" for n in LAYERS for p in ("weight", "bias"))
LR = 0.01


def _mlp_inputs(size: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, d_in, h, d_out = MLP_SIZES[size]
    arrays = {"x": rng.standard_normal((n, d_in)).astype(np.float32),
              "y": rng.standard_normal((n, d_out)).astype(np.float32)}
    npref.init_linear(rng, arrays, "0", d_in, h)
    npref.init_linear(rng, arrays, "2", h, d_out)
    return arrays


def mlp(lib, arrays: dict):
    """``Sequential(Linear, ReLU, Linear)`` with the workload's initial parameters."""
    nn = lib.nn
    d_out, h = arrays["2.weight"].shape
    model = nn.Sequential(nn.Linear(arrays["0.weight"].shape[1], h), nn.ReLU(), nn.Linear(h, d_out))
    load_params(lib, model, arrays)
    return model


def _params(arrays: dict) -> dict:
    return {k: v for k, v in arrays.items() if k[0].isdigit()}


# ------------------------------------------------------------------ forward
@program(kind="forward", inputs=_mlp_inputs)
def mlp_forward(lib, arrays):
    """Linear-ReLU-Linear forward (the module is what gets traced)."""
    model = mlp(lib, arrays)
    return Program(model, (as_lib_tensor(lib, arrays["x"]),))


def _mlp_forward_ref(x, y, **params):
    return {"out": npref.dense_forward(params, LAYERS, x)[0]}


mlp_forward.reference = _mlp_forward_ref
mlp_forward.torchscript_twin(mlp_forward.build)  # nn.Sequential of Linear and ReLU is TorchScript as built


@mlp_forward.peer("numpy")
def _(xp, x, y, **params):
    return npref.dense_forward(params, LAYERS, x, xp=xp)[0]


@mlp_forward.peer("jax")
def _(jnp, arrays):
    params = {k: jnp.asarray(v) for k, v in _params(arrays).items()}
    return JaxStep(lambda p, x: ((npref.dense_forward(p, LAYERS, x, xp=jnp)[0],), p), params,
                   (jnp.asarray(arrays["x"]),))


# ------------------------------------------------------------------ train steps
def _train_step(lib, arrays, make_opt):
    F = lib.nn.functional
    model = mlp(lib, arrays)
    opt = make_opt(lib, model.parameters())
    params = list(model.parameters())

    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return (loss, *[p.grad for p in params])
    return Program(step, (as_lib_tensor(lib, arrays["x"]), as_lib_tensor(lib, arrays["y"])), param_state(model),
                   (model,), (opt,))


def _mlp_grads(x, y, params):
    out, cache = npref.dense_forward(params, LAYERS, x)
    grads, _ = npref.dense_backward(params, LAYERS, cache, npref.mse_grad(out, y))
    return npref.mse(out, y), grads


def _train_ref(update):
    def ref(x, y, **params):
        loss, grads = _mlp_grads(x, y, params)
        new = update(params, grads)
        return {"loss": loss, **{f"grad:{k}": g for k, g in grads.items()},
                **{f"state:{k}": v for k, v in new.items()}}
    return ref


def _jax_train(jnp, arrays, update, opt_state):
    import jax

    def loss_fn(p, x, y):
        return npref.mse(npref.dense_forward(p, LAYERS, x, xp=jnp)[0], y)

    def step(carry, x, y):
        p, s = carry
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        new_p, new_s = update(p, grads, s)
        return (loss, *[grads[k.removeprefix("grad:")] for k in GRADS]), (new_p, new_s)
    params = {k: jnp.asarray(v) for k, v in _params(arrays).items()}
    return JaxStep(step, (params, opt_state(params)), (jnp.asarray(arrays["x"]), jnp.asarray(arrays["y"])),
                   state=lambda carry: {f"state:{k}": v for k, v in carry[0].items()})


@program(kind="train", inputs=_mlp_inputs, outputs=("loss", *GRADS))
def mlp_train_sgd(lib, arrays):
    """One SGD training step of the MLP on an MSE loss."""
    return _train_step(lib, arrays, lambda lib, ps: lib.optim.SGD(ps, lr=LR))


mlp_train_sgd.reference = _train_ref(lambda p, g: npref.sgd(p, g, LR))


@mlp_train_sgd.peer("jax")
def _(jnp, arrays):
    return _jax_train(jnp, arrays, lambda p, g, s: (npref.sgd(p, g, LR), s), lambda p: 0)


@program(kind="train", inputs=_mlp_inputs, outputs=("loss", *GRADS))
def mlp_train_adam(lib, arrays):
    """One Adam training step of the MLP on an MSE loss."""
    return _train_step(lib, arrays, lambda lib, ps: lib.optim.Adam(ps, lr=1e-3))


mlp_train_adam.reference = _train_ref(lambda p, g: npref.adam(p, g, lr=1e-3)[0])


@mlp_train_adam.peer("jax")
def _(jnp, arrays):
    return _jax_train(jnp, arrays, lambda p, g, s: npref.adam(p, g, lr=1e-3, state=s, xp=jnp),
                      lambda p: npref.adam_state(p, jnp))


# ------------------------------------------------------------------ Adam's update alone
ADAM_SIZES = {"small": [(64, 64), (64,)], "medium": [(512, 512), (512,), (512, 1024)],
              "large": [(2048, 2048), (2048,), (2048, 1024)]}


def _adam_inputs(size: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    arrays = {}
    for i, shape in enumerate(ADAM_SIZES[size]):
        arrays[f"p{i}"] = rng.standard_normal(shape).astype(np.float32)
        arrays[f"g{i}"] = rng.standard_normal(shape).astype(np.float32)
    return arrays


def _adam_outputs() -> tuple[str, ...]:
    return tuple(f"new:p{i}" for i in range(3))


@program(kind="train", inputs=_adam_inputs, outputs=_adam_outputs())
def adam_update(lib, arrays):
    """``optim.Adam.step()`` alone on given gradients: a long chain of elementwise ops per parameter."""
    n = sum(k.startswith("p") for k in arrays)
    params = [as_lib_tensor(lib, arrays[f"p{i}"], requires_grad=True) for i in range(n)]
    opt = lib.optim.Adam(params, lr=1e-3)

    def step(*grads):
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        return tuple(p.detach() for p in params)
    return Program(step, tuple(as_lib_tensor(lib, arrays[f"g{i}"]) for i in range(n)), optimizers=(opt,))


def _adam_ref(**arrays):
    n = sum(k.startswith("p") for k in arrays)
    params = {f"p{i}": arrays[f"p{i}"] for i in range(n)}
    new, _ = npref.adam(params, {f"p{i}": arrays[f"g{i}"] for i in range(n)}, lr=1e-3)
    return {f"new:{k}": v for k, v in new.items()}


adam_update.reference = _adam_ref


@adam_update.peer("jax")
def _(jnp, arrays):
    n = sum(k.startswith("p") for k in arrays)
    params = {f"p{i}": jnp.asarray(arrays[f"p{i}"]) for i in range(n)}

    def step(carry, *grads):
        p, s = carry
        new, s = npref.adam(p, {f"p{i}": g for i, g in enumerate(grads)}, lr=1e-3, state=s, xp=jnp)
        return tuple(new[f"p{i}"] for i in range(n)), (new, s)
    return JaxStep(step, (params, npref.adam_state(params, jnp)),
                   tuple(jnp.asarray(arrays[f"g{i}"]) for i in range(n)))


# ------------------------------------------------------------------ a small classifier
# samples, features, hidden, classes
CLS_SIZES = {"small": (64, 16, 64, 4), "medium": (512, 64, 256, 10), "large": (2048, 256, 1024, 10)}
CLS_LAYERS = ["fc1", "fc2"]
CLS_GRADS = tuple(f"grad:{n}.{p}" for n in CLS_LAYERS for p in ("weight", "bias"))


def _cls_inputs(size: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, d, h, c = CLS_SIZES[size]
    arrays = {"x": rng.standard_normal((n, d)).astype(np.float32),
              "labels": rng.integers(0, c, n).astype(np.int64)}
    npref.init_linear(rng, arrays, "fc1", d, h)
    npref.init_linear(rng, arrays, "fc2", h, c)
    return arrays


@program(kind="train", inputs=_cls_inputs, outputs=("loss", *CLS_GRADS))
def classifier_train(lib, arrays):
    """A GELU classifier's training step: cross-entropy on class labels, AdamW with weight decay."""
    nn, F = lib.nn, lib.nn.functional

    class Classifier(nn.Module):
        def __init__(self, d, h, c):
            super().__init__()
            self.fc1 = nn.Linear(d, h)
            self.fc2 = nn.Linear(h, c)

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))

    h, d = arrays["fc1.weight"].shape
    model = Classifier(d, h, arrays["fc2.weight"].shape[0])
    load_params(lib, model, arrays)
    opt = lib.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)

    def step(x, labels):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
        return (loss, model.fc1.weight.grad, model.fc1.bias.grad, model.fc2.weight.grad, model.fc2.bias.grad)
    return Program(step, (as_lib_tensor(lib, arrays["x"]), as_lib_tensor(lib, arrays["labels"])), param_state(model),
                   (model,), (opt,))


def _cls_ref(x, labels, **params):
    logits, cache = npref.dense_forward(params, CLS_LAYERS, x, hidden="gelu")
    grads, _ = npref.dense_backward(params, CLS_LAYERS, cache, npref.cross_entropy_grad(logits, labels))
    new, _ = npref.adam(params, grads, lr=1e-2, weight_decay=1e-2, decoupled=True)
    return {"loss": npref.cross_entropy(logits, labels), **{f"grad:{k}": g for k, g in grads.items()},
            **{f"state:{k}": v for k, v in new.items()}}


classifier_train.reference = _cls_ref


@classifier_train.peer("jax")
def _(jnp, arrays):
    import jax

    def loss_fn(p, x, labels):
        return npref.cross_entropy(npref.dense_forward(p, CLS_LAYERS, x, hidden="gelu", xp=jnp)[0], labels, xp=jnp)

    def step(carry, x, labels):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p, x, labels)
        new, s = npref.adam(p, g, lr=1e-2, weight_decay=1e-2, decoupled=True, state=s, xp=jnp)
        return (loss, *[g[k.removeprefix("grad:")] for k in CLS_GRADS]), (new, s)
    params = {k: jnp.asarray(v) for k, v in arrays.items() if k.startswith("fc")}
    return JaxStep(step, (params, npref.adam_state(params, jnp)),
                   (jnp.asarray(arrays["x"]), jnp.asarray(arrays["labels"])),
                   state=lambda carry: {f"state:{k}": v for k, v in carry[0].items()})
