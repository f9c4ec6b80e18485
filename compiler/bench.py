"""Benchmarks of the compiled mode beside its peers, measured side by side in one run.

    python3 -m compiler.bench                 # all workloads, table on stdout
    python3 -m compiler.bench --out reports/compiler-cpu.md --torch-compile

Workloads (the issue's CPU goals in brackets): tanh-GELU 16M float32 [<= 35 ms], layer_norm 2048x2048 float32
[<= 2.1 ms], MLP 784-256-10 batch-64 Adam train step [<= 0.8 ms], cold trace+compile of that step [<= 1 s]
and warm (kernel cache hit, fresh process) [<= 50 ms]. Peers: NumPy, jax.jit, PyTorch eager, torch.compile
(``--torch-compile``: slow to build on CPU). Times are medians of ``--repeat`` runs after warm-up; GB/s counts
each input and output once.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

GOALS_MS = {"gelu 16M f32": 35.0, "layernorm 2048x2048 f32": 2.1, "MLP train step (Adam)": 0.8,
            "trace+compile cold": 1000.0, "trace+compile warm": 50.0}


def timeit(fn, repeat: int, warmup: int = 3) -> tuple[float, float]:
    """Median and interquartile spread in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0]


def _gelu_eager(x, lib):
    cube = x * x * x  # NumPy's x ** 3 goes through pow(): 10x slower, not a fair peer
    return 0.5 * x * (1 + lib.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * cube)))


def _peers(workload: str, arrays, torch_compile: bool):
    """name -> zero-argument callable, for each peer that is installed."""
    out = {"numpy": None}
    if workload == "gelu":
        (x,) = arrays
        out["numpy"] = lambda: _gelu_eager(x, np)
    else:
        x, w, b = arrays

        def ln():
            m = x.mean(-1, keepdims=True)
            c = x - m
            return c / np.sqrt((c * c).mean(-1, keepdims=True) + 1e-5) * w + b
        out["numpy"] = ln
    try:
        import jax
        import jax.numpy as jnp
        ja = [jnp.asarray(a) for a in arrays]
        if workload == "gelu":
            f = jax.jit(lambda x: _gelu_eager(x, jnp))
        else:
            def jln(x, w, b):
                m = x.mean(-1, keepdims=True)
                c = x - m
                return c * jax.lax.rsqrt((c * c).mean(-1, keepdims=True) + 1e-5) * w + b
            f = jax.jit(jln)
        out["jax.jit"] = lambda: f(*ja).block_until_ready()
    except ImportError:
        pass
    try:
        import torch
        import torch.nn.functional as tf
        ta = [torch.from_numpy(a) for a in arrays]
        tfn = (lambda x: tf.gelu(x, approximate="tanh")) if workload == "gelu" else \
            (lambda x, w, b: tf.layer_norm(x, (x.shape[-1],), w, b))
        out["torch"] = lambda: tfn(*ta)
        if torch_compile:
            cf = torch.compile(tfn)
            out["torch.compile"] = lambda: cf(*ta)
    except ImportError:
        pass
    return out


def bench_kernel(workload: str, repeat: int, torch_compile: bool) -> list[dict]:
    import compiler
    import eager
    import eager.nn.functional as F
    rng = np.random.default_rng(0)
    if workload == "gelu":
        name = "gelu 16M f32"
        arrays = [rng.standard_normal(1 << 24, dtype=np.float32)]
        fn = lambda x: F.gelu(x, approximate="tanh")  # noqa: E731
    else:
        name = "layernorm 2048x2048 f32"
        arrays = [rng.standard_normal((2048, 2048), dtype=np.float32), rng.standard_normal(2048, dtype=np.float32),
                  rng.standard_normal(2048, dtype=np.float32)]
        fn = lambda x, w, b: F.layer_norm(x, (2048,), w, b)  # noqa: E731
    tensors = [eager.tensor(a) for a in arrays]
    compiled = compiler.compile(fn, *tensors)
    nbytes = sum(a.nbytes for a in arrays) + arrays[0].nbytes
    rows = []
    runs = {"graphduel compiled": lambda: compiled(*tensors), "graphduel eager": lambda: fn(*tensors)}
    runs.update({k: v for k, v in _peers(workload, arrays, torch_compile).items() if v is not None})
    for peer, run in runs.items():
        med, spread = timeit(run, repeat)
        rows.append({"workload": name, "mode": peer, "median_ms": med, "iqr_ms": spread,
                     "GB/s": nbytes / med / 1e6, "kernels": len(compiled.kernels) if "compiled" in peer else None})
    return rows


MLP_SCRIPT = r"""
import time, sys
t0 = time.perf_counter()
import eager, compiler
from compiler.bench import _mlp
t1 = time.perf_counter()
step = _mlp()
x, y = eager.randn(64, 784), eager.randint(0, 10, (64,))
t2 = time.perf_counter()
c = compiler.compile(step, x, y)
c(x, y)
t3 = time.perf_counter()
print("TIMES", (t3 - t2) * 1e3, compiler.cache_stats.compilations)
"""


def _mlp():
    import eager
    import eager.nn as nn
    import eager.nn.functional as F
    import eager.optim as optim
    eager.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = optim.Adam(model.parameters(), lr=1e-3)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def bench_mlp(repeat: int, torch_compile: bool) -> list[dict]:
    import compiler
    import eager
    import tracer
    x, y = eager.randn(64, 784), eager.randint(0, 10, (64,))
    rows = []
    name = "MLP train step (Adam)"
    eager_step, traced_step, compiled_step = _mlp(), _mlp(), _mlp()
    traced = tracer.trace(traced_step, x, y)
    compiled = compiler.compile(compiled_step, x, y)
    runs = {"graphduel compiled": lambda: compiled(x, y), "graphduel traced": lambda: traced(x, y),
            "graphduel eager": lambda: eager_step(x, y)}
    try:
        import torch
        torch.manual_seed(0)
        tm = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
        topt = torch.optim.Adam(tm.parameters(), lr=1e-3)
        tx, ty = torch.from_numpy(x.numpy()), torch.from_numpy(y.numpy())

        def tstep():
            topt.zero_grad()
            loss = torch.nn.functional.cross_entropy(tm(tx), ty)
            loss.backward()
            topt.step()
        runs["torch"] = tstep
    except ImportError:
        pass
    try:
        import jax
        import jax.numpy as jnp

        def loss_fn(p, x, y):
            h = jnp.maximum(x @ p[0].T + p[1], 0)
            logits = h @ p[2].T + p[3]
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(64), y])

        @jax.jit
        def jstep(p, m, v, t, x, y):
            loss, g = jax.value_and_grad(loss_fn)(p, x, y)
            t = t + 1
            m = [0.9 * a + 0.1 * b for a, b in zip(m, g)]
            v = [0.999 * a + 0.001 * b * b for a, b in zip(v, g)]
            p = [w - 1e-3 * (a / (1 - 0.9 ** t)) / (jnp.sqrt(b / (1 - 0.999 ** t)) + 1e-8)
                 for w, a, b in zip(p, m, v)]
            return p, m, v, t, loss
        rng = np.random.default_rng(0)
        state = [[jnp.asarray(rng.standard_normal(s, dtype=np.float32) * 0.05) for s in
                  ((256, 784), (256,), (10, 256), (10,))]]
        state += [[jnp.zeros_like(a) for a in state[0]], [jnp.zeros_like(a) for a in state[0]], 0.0]
        jx, jy = jnp.asarray(x.numpy()), jnp.asarray(y.numpy())

        def jrun():
            p, m, v, t, loss = jstep(*state, jx, jy)
            state[:] = [p, m, v, t]
            loss.block_until_ready()
        runs["jax.jit"] = jrun
    except ImportError:
        pass
    for peer, run in runs.items():
        # 20 warm-up calls: our executable spends its first ~10 choosing its BLAS thread count
        med, spread = timeit(run, repeat, warmup=20)
        rows.append({"workload": name, "mode": peer, "median_ms": med, "iqr_ms": spread, "GB/s": None,
                     "kernels": len(compiled.kernels) if "compiled" in peer else None})
    return rows


def _compile_probe(cache: str) -> tuple[float, int]:
    """One fresh process: trace+compile+first call of the MLP step (ms) and how many kernels it compiled."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "GRAPHDUEL_CACHE_DIR": cache, "PYTHONPATH": root}
    out = subprocess.run([sys.executable, "-c", MLP_SCRIPT], capture_output=True, text=True, env=env, cwd=root)
    words = out.stdout.split()
    if "TIMES" not in words:
        raise RuntimeError(f"compile-time probe failed:\n{out.stderr[-2000:]}")
    i = words.index("TIMES")
    return float(words[i + 1]), int(words[i + 2])


def bench_compile_times(cold_runs: int = 3, warm_runs: int = 7) -> list[dict]:
    """Cold (each run with an empty kernel cache) and warm (cache hit) trace+compile+first call, each in a fresh
    process; several processes each, since one process's time swings by tens of ms."""
    samples = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as warm_cache:
        _compile_probe(warm_cache)  # fills the cache the warm runs read
        for _ in range(cold_runs):
            with tempfile.TemporaryDirectory() as cold_cache:
                samples["cold"].append(_compile_probe(cold_cache))
        samples["warm"] = [_compile_probe(warm_cache) for _ in range(warm_runs)]
    rows = []
    for label, runs in samples.items():
        ms = np.array([t for t, _ in runs])
        q1, med, q3 = np.percentile(ms, [25, 50, 75])
        rows.append({"workload": f"trace+compile {label}", "mode": "graphduel compiled",
                     "median_ms": float(med), "iqr_ms": float(q3 - q1), "GB/s": None, "kernels": None,
                     "compilations": max(c for _, c in runs)})
    return rows


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import numpy
    versions = [f"python {platform.python_version()}", f"numpy {numpy.__version__}"]
    for mod in ("jax", "torch"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; {', '.join(versions)}; "
            f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")


def _markdown(df) -> str:
    def cell(v):
        if v is None or (isinstance(v, float) and v != v):
            return ""
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main(argv=None) -> int:
    import pandas as pd
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--only", choices=["gelu", "layernorm", "mlp", "compile"], action="append")
    ap.add_argument("--torch-compile", action="store_true", help="also time torch.compile (slow to build)")
    ap.add_argument("--out", help="write the table as markdown to this file")
    ap.add_argument("--note", default="", help="a line written under the table (e.g. how loaded the machine was)")
    args = ap.parse_args(argv)
    for peer in ("torch", "jax"):  # import peers first: their thread pools start with their own defaults, before
        try:                       # our first kernel library sets OMP_WAIT_POLICY (see compiler.runtime.cache)
            __import__(peer)
        except ImportError:
            pass
    todo = args.only or ["gelu", "layernorm", "mlp", "compile"]
    rows = []
    for w in todo:
        try:
            if w in ("gelu", "layernorm"):
                rows += bench_kernel(w, args.repeat, args.torch_compile)
            elif w == "mlp":
                rows += bench_mlp(args.repeat * 5, args.torch_compile)
            else:
                rows += bench_compile_times()
        except Exception as e:  # one failing section must not lose the others' numbers
            print(f"{w}: failed: {type(e).__name__}: {e}", file=sys.stderr)
            rows.append({"workload": w, "mode": "FAILED", "median_ms": float("nan")})
    df = pd.DataFrame(rows)
    df["goal_ms"] = [GOALS_MS.get(w) if "compiled" in m else None for w, m in zip(df["workload"], df["mode"])]
    header = f"machine: {machine()}\ncommand: python3 -m compiler.bench {' '.join(argv or sys.argv[1:])}"
    table = df.to_string(index=False, float_format=lambda v: f"{v:.3f}")
    print(header)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"# compiler benchmarks\n\n{header}\n\n")
            f.write(_markdown(df) + "\n")
            try:
                load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
            except OSError:
                load = "n/a"
            f.write(f"\nLoad average at the end (1/5/15 min): {load}. {args.note}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
