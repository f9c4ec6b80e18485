"""The eager demo: train a small MLP on a synthetic 2-D spiral with Adam (``graphduel demo``).

    >>> result = train_spiral_classifier(steps=5, log=lambda line: None)
    >>> sorted(result)
    ['accuracy', 'loss', 'seconds', 'steps', 'test_accuracy']
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def make_spiral(n_per_class: int = 100, n_classes: int = 3, noise: float = 0.2, seed: int = 0):
    """CS231n's spiral: ``n_classes`` interleaved arms in the unit disc; returns (points [N, 2] f32, labels [N])."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in range(n_classes):
        r = np.linspace(0.0, 1.0, n_per_class)
        theta = np.linspace(k * 4.0, (k + 1) * 4.0, n_per_class) + rng.standard_normal(n_per_class) * noise
        xs.append(np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1))
        ys.append(np.full(n_per_class, k))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def train_spiral_classifier(steps: int = 300, seed: int = 0, log: Callable[[str], None] = print,
                            device: str = "cpu", hidden: int = 64, lr: float = 0.02) -> dict:
    """Train Linear-ReLU-Linear-ReLU-Linear with Adam and cross-entropy on a 3-arm spiral.

    Returns ``loss`` (final training loss), ``accuracy`` (on the training points), ``test_accuracy`` (on a
    fresh draw of the same spiral), ``steps`` and ``seconds`` (wall time of the training loop).
    """
    import eager
    from eager import nn, optim
    from eager.nn import functional as F

    eager.manual_seed(seed)
    x_np, y_np = make_spiral(seed=seed)
    x_test_np, y_test_np = make_spiral(seed=seed + 1)
    x, y = eager.tensor(x_np, device=device), eager.tensor(y_np, device=device)
    model = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, 3)).to(device)
    opt = optim.Adam(model.parameters(), lr=lr)
    every = max(steps // 6, 1)
    start = time.perf_counter()
    loss = None
    for step in range(1, steps + 1):
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            acc = (logits.argmax(1) == y).float().mean().item()
            log(f"step {step:4d}  loss {loss.item():.4f}  train accuracy {acc:.1%}")
    seconds = time.perf_counter() - start
    with eager.no_grad():
        model.eval()
        accuracy = (model(x).argmax(1) == y).float().mean().item()
        x_test = eager.tensor(x_test_np, device=device)
        test_accuracy = (model(x_test).argmax(1) == eager.tensor(y_test_np, device=device)).float().mean().item()
    return {"loss": float(loss.item()) if loss is not None else float("nan"), "accuracy": accuracy,
            "test_accuracy": test_accuracy, "steps": steps, "seconds": seconds}


if __name__ == "__main__":
    r = train_spiral_classifier()
    print(f"final loss {r['loss']:.4f}, accuracy {r['accuracy']:.1%}, held-out {r['test_accuracy']:.1%}")
