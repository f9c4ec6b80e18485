"""TorchScript twins of workloads whose ``lib``-generic code ``torch.jit.script`` cannot compile.

A workload is written once against ``lib`` with closures (``lib.cond(pred, lambda v: ...)``), which TorchScript
cannot compile; its twin here is the same computation written the way a TorchScript user writes it: plain
functions with Python ``if`` / ``while`` / ``for`` on tensors, which TorchScript keeps as real control flow
(``prim::If``, ``prim::Loop``) instead of freezing the branch taken, as ``torch.jit.trace`` does. The factories
in the workload files build a twin's :class:`Program` from the workload's own arrays, so the harness checks it
against float64 like every peer.

Imported only by the ``torch.jit.script`` peer (it needs torch at import). No ``from __future__ import
annotations``: TorchScript reads the annotations as written.

    >>> import torch
    >>> scripted = torch.jit.script(branch_gate)
    >>> x, w = torch.ones(2, 3), torch.eye(3)
    >>> bool((scripted(x, w, w) == torch.tanh(x)).all())
    True
"""

import torch
from torch import Tensor

from compare.workloads.control import POWER_MAX_STEPS, POWER_TOL


def rnn_scan(xs: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """The Elman RNN as a Python ``for`` over the sequence: one ``prim::Loop``, not T unrolled steps."""
    h = h0
    ys: list[Tensor] = []
    for t in range(xs.size(0)):
        h = torch.tanh(xs[t] @ w_ih + h @ w_hh + b)
        ys.append(h)
    return h, torch.stack(ys)


def power_iteration(a: Tensor, v0: Tensor, tol: float = POWER_TOL,
                    max_steps: int = POWER_MAX_STEPS) -> tuple[Tensor, Tensor]:
    """Power iteration as a Python ``while`` on the tensor tolerance: the trip count is decided on every call.
    (The limits are defaults, not globals: TorchScript reads no Python global numbers.)"""
    v = v0 / torch.sqrt((v0 * v0).sum())
    delta = torch.ones((), dtype=v.dtype)
    i = 0
    while bool(delta > tol) and i < max_steps:
        w = a @ v
        w = w / torch.sqrt((w * w).sum())
        delta = torch.sqrt(((w - v) * (w - v)).sum())
        v = w
        i += 1
    return (v * (a @ v)).sum(), v


def branch_gate(x: Tensor, w_a: Tensor, w_b: Tensor) -> Tensor:
    """The gate as a Python ``if`` on the batch mean: a ``prim::If`` with both sub-networks in the graph."""
    if bool(x.mean() > 0):
        return torch.tanh(x @ w_a)
    return torch.relu(x @ w_b) * 0.5


class DynamicNetCond(torch.nn.Module):
    """``dynamic_net_cond``'s module: the call counter a 0-d int64 buffer, the branch a Python ``if`` on it."""

    def __init__(self, d_in: int, h: int, d_out: int):
        super().__init__()
        self.linear1 = torch.nn.Linear(d_in, h)
        self.linear2 = torch.nn.Linear(h, d_out)
        self.register_buffer("counter", torch.zeros((), dtype=torch.int64))

    def forward(self, x: Tensor) -> Tensor:
        self.counter.add_(1)
        if bool((self.counter & 1) == 0):
            h = self.linear1(x)
        else:
            h = self.linear1(x * 2)
        return self.linear2(h.clamp(min=0))


def tanh_gelu(x: Tensor) -> Tensor:
    return torch.nn.functional.gelu(x, approximate="tanh")


def softmax(x: Tensor) -> Tensor:
    return torch.softmax(x, dim=-1)
