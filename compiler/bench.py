"""Benchmarks of the compiled mode beside its peers, measured side by side in one run.

    python3 -m compiler.bench                                   # CPU: all workloads, table on stdout
    python3 -m compiler.bench --out reports/compiler-cpu.md --torch-compile
    python3 -m compiler.bench --device cuda --torch-compile --out reports/compiler-h100.md

Workloads and the issue's goals: on the CPU tanh-GELU 16M float32 [<= 35 ms], layer_norm 2048x2048 [<= 2.1 ms],
softmax 2048x2048, Adam update 4M params, MLP 784-256-10 batch-64 Adam train step [<= 0.8 ms], cold
trace+compile of that step [<= 1 s] and warm (kernel cache hit, fresh process) [<= 50 ms]. On cuda (effective
GB/s, each input and output counted once): GELU 64M [>= 2400 GB/s], layer_norm 8192x4096 [>= 1900], softmax
8192x4096 [>= 2100], Adam update 16M params [>= 2400], the MLP step replayed as a CUDA graph [<= 0.15 ms].
Peers: NumPy (CPU), jax.jit, PyTorch eager, torch.compile (``--torch-compile``: slow to build). Times are
medians of ``--repeat`` samples after warm-up; on cuda a sample is a batch of calls between two synchronisations.
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
from dataclasses import dataclass

import numpy as np

SIZES = {
    "cpu": {"gelu": (1 << 24,), "layernorm": (2048, 2048), "softmax": (2048, 2048), "adam": (1 << 22,)},
    "cuda": {"gelu": (1 << 26,), "layernorm": (8192, 4096), "softmax": (8192, 4096), "adam": (1 << 24,)},
    "tiny": {"gelu": (4096,), "layernorm": (64, 64), "softmax": (64, 64), "adam": (4096,)},  # the bench's test
}
# the goals: (device, workload) -> (unit, bound); "ms" is an upper bound, "GB/s" a lower one
GOALS = {("cpu", "gelu"): ("ms", 35.0), ("cpu", "layernorm"): ("ms", 2.1), ("cpu", "mlp"): ("ms", 0.8),
         ("cpu", "cold"): ("ms", 1000.0), ("cpu", "warm"): ("ms", 50.0),
         ("cuda", "gelu"): ("GB/s", 2400.0), ("cuda", "layernorm"): ("GB/s", 1900.0),
         ("cuda", "softmax"): ("GB/s", 2100.0), ("cuda", "adam"): ("GB/s", 2400.0), ("cuda", "mlp"): ("ms", 0.15)}
ADAM_T = 10  # the step count folded into the bias corrections


def timeit(fn, repeat: int, warmup: int = 3, sync=None, number: int = 1) -> tuple[float, float]:
    """Median and interquartile spread in milliseconds per call; each sample times ``number`` calls and then
    ``sync(last result)`` (a device synchronisation; None on the host)."""
    out = None
    for _ in range(warmup):
        out = fn()
    if sync:
        sync(out)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            out = fn()
        if sync:
            sync(out)
        times.append((time.perf_counter() - t) * 1e3 / number)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0]


def _gelu_eager(x, lib):
    cube = x * x * x  # NumPy's x ** 3 goes through pow(): 10x slower, not a fair peer
    return 0.5 * x * (1 + lib.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * cube)))


def _adam(sqrt, p, g, m, v):
    """One Adam update with the step count folded in; the same arithmetic for every library."""
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * (g * g)
    p = p - 1e-3 * (m / (1 - 0.9 ** ADAM_T)) / (sqrt(v / (1 - 0.999 ** ADAM_T)) + 1e-8)
    return p, m, v


def _layer_norm(x, w, b, rsqrt):
    m = x.mean(-1, keepdims=True)
    c = x - m
    return c * rsqrt((c * c).mean(-1, keepdims=True) + 1e-5) * w + b


@dataclass
class Kernel:
    """One memory-bound workload: its inputs, the bytes it must move, and its function in each library."""

    name: str
    shapes: list            # input shapes
    outputs: int            # how many outputs of the first input's size
    ours: object            # eager function (what gets compiled)
    numpy: object
    jax: object             # (jnp, jax) -> function
    torch: object           # torch -> function
    nonnegative: tuple = ()  # inputs drawn as |normal| (Adam's second moment)

    def arrays(self, rng) -> list[np.ndarray]:
        out = [rng.standard_normal(s, dtype=np.float32) for s in self.shapes]
        return [np.abs(a) if i in self.nonnegative else a for i, a in enumerate(out)]

    def label(self) -> str:
        dims = self.shapes[0]
        size = f"{dims[0] >> 20}M" if len(dims) == 1 and dims[0] % (1 << 20) == 0 else "x".join(map(str, dims))
        return f"{self.name} {size} f32"

    def nbytes(self, arrays) -> int:
        return sum(a.nbytes for a in arrays) + self.outputs * arrays[0].nbytes


def kernels(sizes: dict) -> dict[str, Kernel]:
    import eager
    import eager.nn.functional as F
    gelu, (n, d), (sn, sd), adam = sizes["gelu"], sizes["layernorm"], sizes["softmax"], sizes["adam"]
    return {
        "gelu": Kernel("gelu", [gelu], 1, lambda x: F.gelu(x, approximate="tanh"), lambda x: _gelu_eager(x, np),
                       lambda jnp, jax: lambda x: jax.nn.gelu(x, approximate=True),
                       lambda torch: lambda x: torch.nn.functional.gelu(x, approximate="tanh")),
        "layernorm": Kernel(
            "layernorm", [(n, d), (d,), (d,)], 1, lambda x, w, b: F.layer_norm(x, (d,), w, b),
            lambda x, w, b: _layer_norm(x, w, b, lambda v: 1 / np.sqrt(v)),
            lambda jnp, jax: lambda x, w, b: _layer_norm(x, w, b, jax.lax.rsqrt),
            lambda torch: lambda x, w, b: torch.nn.functional.layer_norm(x, (d,), w, b)),
        "softmax": Kernel(
            "softmax", [(sn, sd)], 1, lambda x: F.softmax(x, dim=-1),
            lambda x: (lambda e: e / e.sum(-1, keepdims=True))(np.exp(x - x.max(-1, keepdims=True))),
            lambda jnp, jax: lambda x: jax.nn.softmax(x, axis=-1),
            lambda torch: lambda x: torch.softmax(x, -1)),
        "adam": Kernel("adam update", [adam] * 4, 3, lambda p, g, m, v: _adam(eager.sqrt, p, g, m, v),
                       lambda p, g, m, v: _adam(np.sqrt, p, g, m, v),
                       lambda jnp, jax: lambda p, g, m, v: _adam(jnp.sqrt, p, g, m, v),
                       lambda torch: lambda p, g, m, v: _adam(torch.sqrt, p, g, m, v), nonnegative=(3,)),
    }


# ---------------------------------------------------------------- devices
class Device:
    """How each library puts an array on ``name`` and waits for it there."""

    def __init__(self, name: str):
        self.name = name
        self.cuda = name == "cuda"

    def ours(self, a):
        import eager
        return eager.tensor(a, device=self.name)

    def sync_ours(self, _out=None):
        if self.cuda:
            import cupy
            cupy.cuda.Device().synchronize()

    def torch(self, a):
        import torch
        t = torch.from_numpy(a)
        return t.cuda() if self.cuda else t

    def sync_torch(self, _out=None):
        if self.cuda:
            import torch
            torch.cuda.synchronize()

    def jax(self, a):
        import jax
        return jax.device_put(a, jax.devices("gpu" if self.cuda else "cpu")[0])

    @staticmethod
    def sync_jax(out):
        import jax
        jax.block_until_ready(out)

    def number(self, fn, sync) -> int:
        """Calls per sample: one on the host; on a GPU enough to fill ~2 ms, so a synchronisation's cost
        (tens of microseconds) does not count against a kernel that takes a few hundred."""
        if not self.cuda:
            return 1
        sync(fn())
        t = time.perf_counter()
        sync(fn())
        return max(1, math.ceil(2e-3 / max(time.perf_counter() - t, 1e-6)))


def _peers(k: Kernel, arrays, dev: Device, torch_compile: bool) -> dict:
    """name -> (zero-argument callable, sync), for each peer that is installed."""
    out = {}
    if not dev.cuda:
        out["numpy"] = (lambda: k.numpy(*arrays), None)
    try:
        import jax
        import jax.numpy as jnp
        ja = [dev.jax(a) for a in arrays]
        f = jax.jit(k.jax(jnp, jax))
        out["jax.jit"] = (lambda: f(*ja), dev.sync_jax)
    except (ImportError, RuntimeError) as e:  # not installed, or no backend for this device
        _skipped("jax.jit", e)
    try:
        import torch
        ta = [dev.torch(a) for a in arrays]
        tfn = k.torch(torch)
        out["torch"] = (lambda: tfn(*ta), dev.sync_torch)
        if torch_compile:
            cf = torch.compile(tfn)
            out["torch.compile"] = (lambda: cf(*ta), dev.sync_torch)
    except (ImportError, RuntimeError, AssertionError) as e:  # a CPU-only torch asserts on .cuda()
        _skipped("torch", e)
    return out


def _skipped(peer: str, why: Exception) -> None:
    print(f"{peer}: skipped: {type(why).__name__}: {why}", file=sys.stderr)


def _row(section: str, workload: str, mode: str, med: float, spread: float, **extra) -> dict:
    return {"section": section, "workload": workload, "mode": mode, "median_ms": med, "iqr_ms": spread, **extra}


def bench_kernel(section: str, k: Kernel, dev: Device, repeat: int, torch_compile: bool,
                 bandwidth: float) -> list[dict]:
    import compiler
    arrays = k.arrays(np.random.default_rng(0))
    tensors = [dev.ours(a) for a in arrays]
    compiled = compiler.compile(k.ours, *tensors, device=dev.name)
    nbytes = k.nbytes(arrays)
    runs = {"graphduel compiled": (lambda: compiled(*tensors), dev.sync_ours),
            "graphduel eager": (lambda: k.ours(*tensors), dev.sync_ours)}
    runs.update(_peers(k, arrays, dev, torch_compile))
    rows = []
    for mode, (run, sync) in runs.items():
        med, spread = timeit(run, repeat, sync=sync, number=dev.number(run, sync) if sync else 1)
        gbs = nbytes / med / 1e6
        rows.append(_row(section, k.label(), mode, med, spread, **{"GB/s": gbs, "%copy_bw": 100 * gbs / bandwidth},
                         kernels=len(compiled.kernels) if "compiled" in mode else None))
    return rows


# ---------------------------------------------------------------- the MLP train step
MLP_SCRIPT = r"""
import time, sys
t0 = time.perf_counter()
import eager, compiler
from compiler.bench import _mlp
device = sys.argv[1]
t1 = time.perf_counter()
step = _mlp(device)
x, y = eager.randn(64, 784, device=device), eager.randint(0, 10, (64,), device=device)
t2 = time.perf_counter()
c = compiler.compile(step, x, y, device=device)
c(x, y)
if device == "cuda":
    import cupy
    cupy.cuda.Device().synchronize()
t3 = time.perf_counter()
print("TIMES", (t3 - t2) * 1e3, compiler.cache_stats.compilations)
"""


def mlp_adam_step(device: str = "cpu", sizes: tuple = (784, 256, 10), lr: float = 1e-3):
    """(model, optimizer, step): a Linear-ReLU-Linear classifier's cross-entropy train step with Adam."""
    import eager
    import eager.nn as nn
    import eager.nn.functional as F
    import eager.optim as optim
    eager.manual_seed(0)
    n_in, hidden, n_out = sizes
    model = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out)).to(device)
    opt = optim.Adam(model.parameters(), lr=lr)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return model, opt, step


def _mlp(device: str = "cpu"):
    """The benchmarked MLP step (784-256-10, the issue's)."""
    return mlp_adam_step(device)[2]


def _torch_mlp(x, y, dev: Device, torch_compile: bool) -> dict:
    import torch
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    tm = tm.cuda() if dev.cuda else tm
    topt = torch.optim.Adam(tm.parameters(), lr=1e-3)
    tx, ty = dev.torch(x), dev.torch(y)

    def tstep():
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tm(tx), ty)
        loss.backward()
        topt.step()
        return loss
    out = {"torch": (tstep, dev.sync_torch)}
    if torch_compile:
        out["torch.compile"] = (torch.compile(tstep), dev.sync_torch)
    return out


def _jax_mlp(x, y, dev: Device, _torch_compile: bool = False) -> dict:
    import jax
    import jax.numpy as jnp

    def loss_fn(p, x, y):
        h = jnp.maximum(x @ p[0].T + p[1], 0)
        logits = h @ p[2].T + p[3]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(x.shape[0]), y])

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
    params = [dev.jax(rng.standard_normal(s, dtype=np.float32) * 0.05)
              for s in ((256, 784), (256,), (10, 256), (10,))]
    state = [params, [jnp.zeros_like(a) for a in params], [jnp.zeros_like(a) for a in params], 0.0]
    jx, jy = dev.jax(x), dev.jax(y)

    def jrun():
        p, m, v, t, loss = jstep(*state, jx, jy)
        state[:] = [p, m, v, t]
        return loss
    return {"jax.jit": (jrun, dev.sync_jax)}


def bench_mlp(dev: Device, repeat: int, torch_compile: bool) -> list[dict]:
    import compiler
    import eager
    import tracer
    x, y = eager.randn(64, 784), eager.randint(0, 10, (64,))
    xd, yd = dev.ours(x.numpy()), dev.ours(y.numpy())
    name = "MLP train step (Adam)" + (", CUDA graph" if dev.cuda else "")
    eager_step, traced_step, compiled_step = _mlp(dev.name), _mlp(dev.name), _mlp(dev.name)
    traced = tracer.trace(traced_step, xd, yd)
    compiled = compiler.compile(compiled_step, xd, yd, device=dev.name, cuda_graph=dev.cuda)
    runs = {"graphduel compiled": (lambda: compiled(xd, yd), dev.sync_ours),
            "graphduel traced": (lambda: traced(xd, yd), dev.sync_ours),
            "graphduel eager": (lambda: eager_step(xd, yd), dev.sync_ours)}
    for peer_name, peer in (("torch", _torch_mlp), ("jax.jit", _jax_mlp)):
        try:
            runs.update(peer(x.numpy(), y.numpy(), dev, torch_compile))
        except (ImportError, RuntimeError, AssertionError) as e:
            _skipped(peer_name, e)
    rows = []
    for mode, (run, sync) in runs.items():
        # 20 warm-up calls: our executable spends its first ~10 choosing its BLAS thread count
        med, spread = timeit(run, repeat, warmup=20, sync=sync, number=dev.number(run, sync))
        rows.append(_row("mlp", name, mode, med, spread, kernels=len(compiled.kernels) if "compiled" in mode else None))
    return rows


# ---------------------------------------------------------------- trace + compile, cold and warm
def _compile_probe(cache: str, device: str) -> tuple[float, int]:
    """One fresh process: trace+compile+first call of the MLP step (ms) and how many kernels it compiled."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "GRAPHDUEL_CACHE_DIR": cache, "CUPY_CACHE_DIR": os.path.join(cache, "cupy"),
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", MLP_SCRIPT, device], capture_output=True, text=True, env=env,
                         cwd=root)
    words = out.stdout.split()
    if "TIMES" not in words:
        raise RuntimeError(f"compile-time probe failed:\n{out.stderr[-2000:]}")
    i = words.index("TIMES")
    return float(words[i + 1]), int(words[i + 2])


def bench_compile_times(dev: Device, cold_runs: int = 3, warm_runs: int = 7) -> list[dict]:
    """Cold (each run with empty kernel caches) and warm (cache hit) trace+compile+first call, each in a fresh
    process; several processes each, since one process's time swings by tens of ms."""
    samples = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as warm_cache:
        _compile_probe(warm_cache, dev.name)  # fills the cache the warm runs read
        for _ in range(cold_runs):
            with tempfile.TemporaryDirectory() as cold_cache:
                samples["cold"].append(_compile_probe(cold_cache, dev.name))
        samples["warm"] = [_compile_probe(warm_cache, dev.name) for _ in range(warm_runs)]
    rows = []
    for label, runs in samples.items():
        ms = np.array([t for t, _ in runs])
        q1, med, q3 = np.percentile(ms, [25, 50, 75])
        rows.append(_row(label, f"trace+compile {label}", "graphduel compiled", float(med), float(q3 - q1),
                         compilations=max(c for _, c in runs)))
    return rows


# ---------------------------------------------------------------- table
def machine(dev: Device) -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    if dev.cuda:
        import cupy
        cpu += f"; GPU {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, cupy {cupy.__version__}"
    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    for mod in ("jax", "torch"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; {', '.join(versions)}; "
            f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")


def _goal(device: str, section: str, mode: str) -> str | None:
    if (device, section) not in GOALS or "compiled" not in mode:
        return None
    unit, bound = GOALS[(device, section)]
    return f"{'<=' if unit == 'ms' else '>='} {bound:g} {unit}"


def _markdown(df) -> str:
    def cell(v):
        if v is None or (isinstance(v, float) and v != v):
            return ""
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


SECTIONS = ["gelu", "layernorm", "softmax", "adam", "mlp", "compile"]


def main(argv=None) -> int:
    import pandas as pd
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--only", choices=SECTIONS, action="append")
    ap.add_argument("--tiny", action="store_true", help="tiny kernel sizes (the bench's own test)")
    ap.add_argument("--torch-compile", action="store_true", help="also time torch.compile (slow to build)")
    ap.add_argument("--out", help="write the table as markdown to this file")
    ap.add_argument("--note", default="", help="a line written under the table (e.g. how loaded the machine was)")
    args = ap.parse_args(argv)
    for peer in ("torch", "jax"):  # import peers first: their thread pools start with their own defaults, before
        try:                       # our first kernel library sets OMP_WAIT_POLICY (see compiler.runtime.cache)
            __import__(peer)
        except ImportError:
            pass
    from compiler.report import COPY_BYTES, copy_bandwidth_gbs
    dev = Device(args.device)
    if dev.cuda:
        import eager
        if not eager.cuda_available():
            ap.error("--device cuda needs CuPy and a CUDA GPU (eager.cuda_available() is False); install the gpu "
                     "extra (pip install -e '.[gpu]') on a machine with a GPU")
    bandwidth = copy_bandwidth_gbs(dev.name)
    specs = kernels(SIZES["tiny" if args.tiny else dev.name])
    rows = []
    for section in args.only or SECTIONS:
        try:
            if section in specs:
                rows += bench_kernel(section, specs[section], dev, args.repeat, args.torch_compile, bandwidth)
            elif section == "mlp":
                rows += bench_mlp(dev, args.repeat * 5, args.torch_compile)
            else:
                rows += bench_compile_times(dev)
        except Exception as e:  # one failing section must not lose the others' numbers
            print(f"{section}: failed: {type(e).__name__}: {e}", file=sys.stderr)
            rows.append(_row(section, section, "FAILED", float("nan"), float("nan")))
    df = pd.DataFrame(rows)
    # tiny sizes are the bench's own test: the goals are for the real sizes
    df["goal"] = [None if args.tiny else _goal(dev.name, s, m) for s, m in zip(df["section"], df["mode"])]
    df = df.drop(columns="section")
    header = (f"machine: {machine(dev)}\ncommand: python3 -m compiler.bench {' '.join(argv or sys.argv[1:])}\n"
              f"copy bandwidth (measured on {COPY_BYTES[dev.name] >> 20} MB buffers): {bandwidth:.1f} GB/s; a "
              "%copy_bw above 100 means the workload's buffers partly stay in the last-level cache between calls")
    print(header)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"# compiler benchmarks ({dev.name})\n\n{header}\n\n")
            f.write(_markdown(df) + "\n")
            try:
                load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
            except OSError:
                load = "n/a"
            f.write(f"\nLoad average at the end (1/5/15 min): {load}. {args.note}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
