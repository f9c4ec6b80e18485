"""Eager against PyTorch eager on the same inputs, measured in one run: ``python3 -m compare.eager_vs_torch``.

Each case is one callable per library; the two are timed interleaved (a repeat of ours, then one of torch's,
...), so load on a shared machine hits both alike, and the table gives medians and ours/torch. ``--threads 1``
pins both to one thread (``torch.set_num_threads(1)``; OpenBLAS through ``compiler.runtime.blas``): on a small
shared VM PyTorch's thread pool swings 2-5x when anything else runs. The goals are issue 14's ratios.

    >>> [c.name for c in cases()][:2]
    ['add, requires_grad (64, 10)', 'relu (64, 10)']
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from compare import timing


@dataclass
class Case:
    name: str
    make: Callable  # make(lib) -> a callable running one step on lib (eager or torch)
    goal: float  # the ratio ours/torch to reach (issue 14)


def _small(lib):
    rng = np.random.default_rng(0)
    x = lib.tensor(rng.standard_normal((64, 10)).astype(np.float32))
    w = lib.tensor(rng.standard_normal((64, 10)).astype(np.float32), requires_grad=True)
    y = lib.tensor(rng.integers(0, 10, 64))
    return x, w, y


def _mlp(lib, optimizer: str):
    rng = np.random.default_rng(0)
    nn, F = lib.nn, lib.nn.functional
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    with lib.no_grad():
        for p in model.parameters():
            p.copy_(lib.tensor(rng.standard_normal(tuple(p.shape)).astype(np.float32) * 0.05))
    x = lib.tensor(rng.standard_normal((64, 784)).astype(np.float32))
    y = lib.tensor(rng.integers(0, 10, 64))
    opt = (lib.optim.SGD(model.parameters(), lr=0.01) if optimizer == "sgd"
           else lib.optim.Adam(model.parameters(), lr=1e-3))

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    step()  # creates the gradients and the optimizer state
    return step, opt


def cases() -> list[Case]:
    def add(lib):
        x, w, _ = _small(lib)
        return lambda: w + x

    def relu(lib):
        x, _, _ = _small(lib)
        return lambda: lib.relu(x)

    def cross_entropy(lib):
        x, _, y = _small(lib)
        return lambda: lib.nn.functional.cross_entropy(x, y)

    return [Case("add, requires_grad (64, 10)", add, 1.15), Case("relu (64, 10)", relu, 2.0),
            Case("cross_entropy (64, 10)", cross_entropy, 2.0),
            Case("MLP SGD step", lambda lib: _mlp(lib, "sgd")[0], 1.0),
            Case("MLP Adam step", lambda lib: _mlp(lib, "adam")[0], 1.0),
            Case("optimizer.step() (Adam)", lambda lib: _mlp(lib, "adam")[1].step, 1.5)]


def measure(case: Case, repeat: int, torch) -> dict:
    """Median seconds per call of ours and torch's, timed round-robin (``compare.timing``, ~20 ms a repeat)."""
    import eager
    samples = timing.measure({"ours": case.make(eager), "torch": case.make(torch)}, repeats=repeat, warmup=3,
                             target_s=0.02)
    ours_s, torch_s = (timing.summarize(samples[k])["median"] for k in ("ours", "torch"))
    return {"case": case.name, "ours_us": ours_s * 1e6, "torch_us": torch_s * 1e6, "ratio": ours_s / torch_s,
            "goal": case.goal, "met": ours_s / torch_s <= case.goal}


def table(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "", "| case | eager us | torch us | eager/torch | goal | met |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['ours_us']:.1f} | {r['torch_us']:.1f} | {r['ratio']:.2f} | "
                     f"<= {r['goal']} | {'yes' if r['met'] else 'no'} |")
    return "\n".join(lines)


def run(threads: list[int | None], repeat: int) -> str:
    import torch

    from compiler.runtime.blas import BlasThreads
    sections = []
    for n in threads:
        default = torch.get_num_threads()
        torch.set_num_threads(n or default)
        try:
            with BlasThreads(n) if n else contextlib.nullcontext():
                rows = []
                for case in cases():
                    rows.append(measure(case, repeat, torch))
                    print(f"  {case.name}: {rows[-1]['ratio']:.2f}x", flush=True)
        finally:
            torch.set_num_threads(default)
        sections.append(table(rows, f"{n} thread each" if n else f"default threads (torch {default})"))
    return "\n\n".join(sections)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m compare.eager_vs_torch", description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 0], help="thread counts (0: defaults)")
    parser.add_argument("--out", help="write the report (Markdown) here")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    from compare.machine import describe
    info = describe(command=" ".join(["python3 -m compare.eager_vs_torch", *argv]))
    body = run([n or None for n in args.threads], args.repeat)
    head = (f"# eager vs PyTorch eager (cpu)\n\nmachine: {info['cpu']}, {info['cores']} cores, {info['platform']}; "
            f"python {info['python']}, numpy {info.get('numpy')}, torch {info.get('torch')}; commit {info['commit']}; "
            f"{info['date']}\ncommand: {info['command']}\n\nMedians over {args.repeat} interleaved repeats "
            "(ours, then torch's, each a ~20 ms block of calls).\n")
    text = head + "\n" + body + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
