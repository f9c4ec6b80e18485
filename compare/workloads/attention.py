"""A pre-norm multi-head self-attention block: LayerNorm, QKV projection, softmax attention, residual."""

from __future__ import annotations

import math

import numpy as np

from compare.workloads import npref
from compare.workloads.registry import JaxStep, Program, as_lib_tensor, load_params, program

# batch, tokens, width, heads
SIZES = {"small": (2, 16, 32, 4), "medium": (8, 64, 128, 4), "large": (16, 256, 256, 8)}


def _inputs(size: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    b, t, d, h = SIZES[size]
    arrays = {"x": rng.standard_normal((b, t, d)).astype(np.float32),
              "ln.weight": (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32),
              "ln.bias": (0.1 * rng.standard_normal(d)).astype(np.float32),
              "heads": np.array(h)}
    npref.init_linear(rng, arrays, "qkv", d, 3 * d)
    npref.init_linear(rng, arrays, "proj", d, d)
    return arrays


@program(kind="forward", inputs=_inputs, tags=("matmul",))
def attention_block(lib, arrays):
    """``x + proj(softmax(q k^T / sqrt(d_head)) v)`` on ``LayerNorm(x)``, heads split by reshape."""
    nn, F = lib.nn, lib.nn.functional
    heads = int(arrays["heads"])

    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.ln = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln(x)).split(d, dim=-1)
            q, k, v = (z.reshape(b, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
            att = F.softmax(q @ k.transpose(-2, -1) * (1.0 / math.sqrt(d // heads)), dim=-1)
            y = (att @ v).transpose(1, 2).reshape(b, t, d)
            return x + self.proj(y)

    block = Block(arrays["x"].shape[-1])
    load_params(lib, block, arrays)
    return Program(block, (as_lib_tensor(lib, arrays["x"]),))


def _block(xp, x, heads, params):
    b, t, d = x.shape
    h = npref.layer_norm(xp, x, params["ln.weight"], params["ln.bias"])
    qkv = npref.linear(h, params["qkv.weight"], params["qkv.bias"])
    q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3) for i in range(3))
    att = npref.softmax(xp, q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // heads))
    y = (att @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
    return x + npref.linear(y, params["proj.weight"], params["proj.bias"])


@attention_block.peer("numpy")
def _(xp, x, heads, **params):
    return _block(xp, x, int(heads), params)


@attention_block.peer("jax")
def _(jnp, arrays):
    heads = int(arrays["heads"])
    params = {k: jnp.asarray(v) for k, v in arrays.items() if k not in ("x", "heads")}
    return JaxStep(lambda p, x: ((_block(jnp, x, heads, p),), p), params, (jnp.asarray(arrays["x"]),))
