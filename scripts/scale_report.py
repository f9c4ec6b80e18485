"""Scale measurements: big graphs through every mode, a transformer encoder train step traced and compiled, and
the kernel size limit (``compiler.fusion.MAX_KERNEL_OPS``) against native compile time. Writes
``reports/scale-cpu.md`` with the machine, versions, command and date of the run:

    python3 scripts/scale_report.py --out reports/scale-cpu.md            # everything (a few minutes)
    python3 scripts/scale_report.py --layers 2 --skip-limit               # a quick look

The workloads live here so that the tests (``tests/test_scale.py``), the benchmarks
(``tests/benchmarks/test_scale_bench.py``) and this report measure the same programs. Cold numbers are taken in
a fresh process with an empty kernel cache; warm ones in a fresh process whose kernel cache holds the program
(what a second run of a training script pays).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script: the packages are beside scripts/
    sys.path.insert(0, REPO)

# the model: 12 pre-norm encoder layers of width 256 (4 heads, MLP 4x wide), on 2 sequences of 32 tokens
ENCODER = dict(layers=12, width=256, heads=4, batch=2, tokens=32)
COLD_GOAL_S = 10.0  # the goal: cold trace + compile of the 12-layer step on the project's 2-core CPU


# ---------------------------------------------------------------- workloads

def chain(n: int):
    """``a * 1.0001``, n times: a graph n ops deep (one fused kernel, before the size limit split it)."""
    def f(a):
        for _ in range(n):
            a = a * 1.0001
        return a
    return f


def wide(n: int):
    """n/2 independent scalings of one input, summed by a balanced tree of adds: n ops, log2(n) deep."""
    def f(a):
        terms = [a * (1.0 + i * 1e-4) for i in range(n // 2)]
        while len(terms) > 1:
            terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
        return terms[0]
    return f


def encoder_step(layers: int = 12, width: int = 256, heads: int = 4, batch: int = 2, tokens: int = 32,
                 dtype: str = "float32", seed: int = 0, lr: float = 1e-3):
    """(model, optimizer, step, (x, target)): a pre-norm transformer encoder's MSE train step with Adam. Each layer
    is ``x + proj(attention(ln1(x)))`` then ``x + fc2(gelu(fc1(ln2(x))))``; the same seed gives the same weights
    and data in every dtype (initialised in float32, then cast), so a float64 model is the float32 one's judge."""
    import eager
    import eager.nn as nn
    import eager.nn.functional as F
    import eager.optim as optim

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
            q, k, v = (z.reshape(b, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
            att = F.softmax(q @ k.transpose(-2, -1) * (1.0 / math.sqrt(d // heads)), dim=-1)
            x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))

    eager.manual_seed(seed)
    model = nn.Sequential(*[Layer() for _ in range(layers)])
    if dtype == "float64":
        model = model.double()
    opt = optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    x = eager.tensor(rng.standard_normal((batch, tokens, width)).astype(dtype))
    target = eager.tensor(rng.standard_normal((batch, tokens, width)).astype(dtype))

    def step(x, target):
        opt.zero_grad()
        loss = F.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        return loss
    return model, opt, step, (x, target)


# ---------------------------------------------------------------- measurements

def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_encoder(layers: int, width: int = 256, steps: int = 10) -> dict:
    """Trace and compile the encoder step in this process (the kernel cache is whatever ``GRAPHDUEL_CACHE_DIR``
    holds) and time a few calls: node and kernel counts, trace / pass / build / native compile seconds, peak RSS."""
    import compiler
    import eager
    _, _, step, (x, target) = encoder_step(layers, width)
    start = time.perf_counter()
    f = compiler.compile(step, x, target)
    total = time.perf_counter() - start
    lowerings = f.lowerings
    first = time.perf_counter()
    f(x, target)
    first = time.perf_counter() - first
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        f(x, target)
        times.append(time.perf_counter() - t)
    eager.manual_seed(0)
    return {"layers": layers, "width": width,
            "traced_nodes": sum(len(lw.source_graph.nodes) for lw in lowerings),
            "optimized_nodes": sum(len(lw.graph.nodes) for lw in lowerings),
            "programs": len(lowerings), "kernels": sum(len(lw.kernels) for lw in lowerings),
            "kernels_steady": len(f.kernels),
            "trace_s": f.trace_seconds, "pass_s": sum(lw.pass_seconds for lw in lowerings),
            "build_s": sum(lw.build_seconds for lw in lowerings),
            "native_s": sum(lw.native_seconds for lw in lowerings),
            "compilations": sum(lw.compilations for lw in lowerings),
            "trace_compile_s": total, "first_call_s": first, "step_ms": float(np.median(times)) * 1e3,
            "peak_rss_mib": peak_rss_mib()}


def _child(kind: str, layers: int, cache: str) -> dict:
    """``measure_encoder`` in a fresh process over kernel cache ``cache``: cold and warm as a user meets them."""
    env = dict(os.environ, GRAPHDUEL_CACHE_DIR=cache, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, "--layers", str(layers)],
                         capture_output=True, text=True, env=env, cwd=REPO, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def encoder_cold_warm(layers: int, runs: int = 3) -> list[dict]:
    """``runs`` pairs of fresh processes: cold over an empty kernel cache, then warm over the cache it filled."""
    out = []
    for i in range(runs):
        with tempfile.TemporaryDirectory() as cache:
            out += [dict(_child("encoder", layers, cache), run=f"cold {i + 1}"),
                    dict(_child("encoder", layers, cache), run=f"warm {i + 1}")]
    return out


def eager_encoder_step(layers: int, width: int = 256, steps: int = 10) -> float:
    """Median seconds of one eager step (the baseline a compiled step is compared with)."""
    _, _, step, (x, target) = encoder_step(layers, width)
    step(x, target)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step(x, target)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def measure_graph(kind: str, n: int) -> dict:
    """A ``chain`` or ``wide`` graph of n ops: eager call, trace, traced call, compile, compiled call (seconds)."""
    import compiler
    import eager
    import tracer
    fn = chain(n) if kind == "chain" else wide(n)
    x = eager.ones(3)
    row = {"graph": kind, "ops": n}
    t = time.perf_counter()
    fn(x)
    row["eager_s"] = time.perf_counter() - t
    t = time.perf_counter()
    traced = tracer.trace(fn, x)
    row["trace_s"] = time.perf_counter() - t
    t = time.perf_counter()
    traced(x)
    row["traced_call_s"] = time.perf_counter() - t
    t = time.perf_counter()
    compiled = compiler.compile(fn, x)
    row["compile_s"] = time.perf_counter() - t
    row["kernels"] = len(compiled.kernels)
    t = time.perf_counter()
    compiled(x)
    row["compiled_call_s"] = time.perf_counter() - t
    return row


def gelu_blocks(n: int):
    """n ops of tanh-GELU applied again and again (8 ops a block): one long fusable chain with fan-out."""
    def f(x):
        for _ in range(n // 8):
            inner = 0.7978845608 * (x + 0.044715 * x * x * x)
            x = x * 0.5 * (1.0 + inner.tanh())
        return x
    return f


def limit_sweep(n: int, limits: list[int], repeat: int = 3) -> list[dict]:
    """Native compile time of the same n-op programs (a GELU chain and a wide tree over a 64x256 float32 input)
    fused with each kernel size limit: the C module by the system compiler, the CUDA module by NVRTC (CPU
    seconds, the best of ``repeat``, so other processes on the machine move them less)."""
    import compiler.fusion as fusion
    import eager
    import tracer
    from compiler import nvrtc
    from compiler.passes import optimize
    from compiler.program import build
    from compiler.runtime import cache, cpu
    from compiler.runtime import cuda as rcuda
    x = eager.tensor(np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32))
    rows = []
    saved = fusion.MAX_KERNEL_OPS
    try:
        for name, fn in (("gelu chain", gelu_blocks(n)), ("wide tree", wide(n))):
            graph = optimize(tracer.trace(fn, x).graph)
            for limit in limits:
                fusion.MAX_KERNEL_OPS = limit
                program = build(graph, None)
                c_source = cpu.module_source(cpu.generate(program))
                cuda_source = rcuda.module_source(rcuda.generate(program))
                row = {"graph": name, "ops": len(graph.calls), "limit": str(limit) if limit < 1 << 20 else "none",
                       "kernels": len(program.kernels),
                       "largest": max(len(k.group.members) for k in program.kernels.values()),
                       "gcc_s": min(_gcc_seconds(c_source, cache) for _ in range(repeat))}
                if nvrtc.library() is not None:
                    row["nvrtc_s"] = min(_nvrtc_seconds(cuda_source, nvrtc, rcuda) for _ in range(repeat))
                rows.append(row)
    finally:
        fusion.MAX_KERNEL_OPS = saved
    return rows


def _gcc_seconds(source: str, cache) -> float:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.c")
        with open(path, "w") as f:
            f.write(source)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([cache.c_compiler(), path, "-o", os.path.join(d, "m.so")] + cache.flags(), check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _nvrtc_seconds(source: str, nvrtc, rcuda) -> float:
    start = time.process_time()
    nvrtc.compile_ptx(source, rcuda.NVRTC_OPTIONS)
    return time.process_time() - start


# ---------------------------------------------------------------- the report

def machine() -> list[str]:
    import numpy
    cc = None
    try:
        from compiler.runtime.cache import c_compiler
        cc = c_compiler()
        version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[0] if cc \
            else "none"
    except (OSError, IndexError):
        version = "unknown"
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return [f"- machine: {cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}",
            f"- Python {platform.python_version()}, NumPy {numpy.__version__}, C compiler: {version} ({cc})",
            f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; load average at the start "
            f"{os.getloadavg()[0]:.2f} (the machine is shared: wall times move with it)",
            f"- command: `python3 scripts/scale_report.py {' '.join(sys.argv[1:])}`".replace("  ", " ")]


def _table(rows: list[dict], columns: list[tuple[str, str, str]]) -> list[str]:
    """Markdown table; ``columns``: (header, key, format)."""
    out = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(format(r[k], f) if k in r else "-" for _, k, f in columns) + " |")
    return out


def report(args) -> str:
    import compiler.fusion as fusion
    lines = [f"# Scale on the CPU: big graphs, a {args.layers}-layer encoder train step, the kernel size limit", ""]
    lines += machine() + [""]
    rows = encoder_cold_warm(args.layers)
    eager_s = eager_encoder_step(args.layers)
    lines += [f"## Transformer encoder train step ({args.layers} layers, width 256, 4 heads, MLP 1024, batch 2 x 32 "
              "tokens, MSE loss, Adam)", "",
              "Each row is a fresh process; cold: an empty kernel cache, warm: the cache the cold run before it "
              "filled. Step: the median of 10 calls after the first.", ""]
    lines += _table(rows, [("run", "run", ""), ("traced nodes", "traced_nodes", "d"),
                           ("nodes after passes", "optimized_nodes", "d"), ("kernels", "kernels", "d"),
                           ("trace s", "trace_s", ".2f"), ("passes s", "pass_s", ".2f"), ("build s", "build_s", ".2f"),
                           ("of which C compiler s", "native_s", ".2f"),
                           ("trace + compile s", "trace_compile_s", ".2f"),
                           ("first call s", "first_call_s", ".3f"), ("step ms", "step_ms", ".1f"),
                           ("peak RSS MiB", "peak_rss_mib", ".0f")])
    cold = sorted(r["trace_compile_s"] for r in rows if r["run"].startswith("cold"))
    warm = sorted(r["trace_compile_s"] for r in rows if r["run"].startswith("warm"))
    steps = sorted(r["step_ms"] for r in rows)
    median = cold[len(cold) // 2]
    verdict = "met" if median <= COLD_GOAL_S else "NOT met"
    lines += ["", f"Goal: cold trace + compile under {COLD_GOAL_S:.0f} s: {verdict} (median {median:.2f} s "
              f"cold, range {cold[0]:.2f}-{cold[-1]:.2f} s; warm median {warm[len(warm) // 2]:.2f} s). Compiled step "
              f"median {steps[len(steps) // 2]:.1f} ms vs eager {eager_s * 1e3:.1f} ms.", ""]
    lines += [f"## {args.ops:,}-op graphs in every mode (seconds, one process, one call each)", ""]
    graphs = [measure_graph(kind, args.ops) for kind in ("chain", "wide")]
    lines += _table(graphs, [("graph", "graph", ""), ("ops", "ops", "d"), ("eager", "eager_s", ".3f"),
                             ("trace", "trace_s", ".2f"), ("traced call", "traced_call_s", ".3f"),
                             ("trace + compile", "compile_s", ".2f"), ("kernels", "kernels", "d"),
                             ("compiled call", "compiled_call_s", ".4f")])
    lines += [""]
    if not args.skip_limit:
        lines += [f"## Kernel size limit (MAX_KERNEL_OPS = {fusion.MAX_KERNEL_OPS})", "",
                  "Native compile time of one program fused under each limit (CPU seconds of the compiler, best of "
                  "3, so that other processes on the machine move it less); a larger limit means fewer, longer "
                  "kernels. The limit is where both compilers' time has stopped falling (see "
                  "``compiler.fusion.MAX_KERNEL_OPS``).", ""]
        sweep = limit_sweep(args.limit_ops, [64, 128, 256, 512, 1024, 2048, 1 << 20])
        lines += _table(sweep, [("graph", "graph", ""), ("ops", "ops", "d"), ("limit", "limit", ""),
                                ("kernels", "kernels", "d"), ("largest kernel", "largest", "d"),
                                ("C compiler s", "gcc_s", ".2f"), ("NVRTC s", "nvrtc_s", ".2f")])
        lines += [""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the report here (default: stdout)")
    parser.add_argument("--layers", type=int, default=ENCODER["layers"])
    parser.add_argument("--ops", type=int, default=10_000, help="size of the chain and wide graphs")
    parser.add_argument("--limit-ops", type=int, default=8192, help="size of the kernel-limit sweep's programs")
    parser.add_argument("--skip-limit", action="store_true", help="leave out the kernel size limit sweep")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "encoder":
        print(json.dumps(measure_encoder(args.layers)))
        return 0
    text = report(args)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
