"""Memory: long training loops do not grow (no graph or array kept alive across steps), eager and traced."""

import gc

import pytest

import eager
import eager.nn as nn
import tracer


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _train_step():
    eager.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = eager.optim.Adam(model.parameters(), lr=1e-3)
    x, y = eager.randn(16, 32), eager.randn(16, 4)

    def step(x, y):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step, x, y


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs Linux /proc for RSS")
@pytest.mark.parametrize("mode", ["eager", "traced"])
def test_a_thousand_training_steps_do_not_grow_memory(mode):
    step, x, y = _train_step()
    run = step if mode == "eager" else tracer.trace(step, x, y)
    for _ in range(100):  # warm-up: allocator pools, optimizer state, caches
        run(x, y)
    gc.collect()
    before = _rss_bytes()
    for _ in range(1000):
        loss = run(x, y)
    gc.collect()
    grown = _rss_bytes() - before
    # one step's arrays are ~20 KB; a leak of even one graph per step would add > 20 MB over 1000 steps
    assert grown < 8 * 2**20, f"{mode}: RSS grew by {grown / 2**20:.1f} MiB over 1000 steps"
    assert loss.item() < 2.0
