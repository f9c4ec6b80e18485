"""What a result was measured on: machine, versions, commit, command and date (attached to every run).

A *machine kind* is the hardware a timing ratio belongs to (the GPU model on cuda; the CPU model and core count
on the CPU): rows of one kind are compared with each other, never with another kind's, when a run spread over
several machines is reported or gated.

    >>> info = describe(command="graphduel run --quick")
    >>> sorted(k for k in info if k in ("cpu", "numpy", "commit", "command", "host"))
    ['command', 'commit', 'cpu', 'host', 'numpy']
    >>> machine_kind({"device": "cpu", "cpu": "AMD EPYC 7763", "cores": "2"})
    'cpu: AMD EPYC 7763 x2'
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("numpy", "scipy", "jax", "jaxlib", "torch", "pandas", "cupy-cuda13x", "cupy-cuda12x")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """The checkout's commit, with ``+dirty`` when the measured code has uncommitted changes (reports/ does not
    count: rewriting a committed report must not mark its own run dirty); ``unknown`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!reports"],
                               cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) if head else "unknown"


def gpu_name() -> str | None:
    from eager.backend import cuda_available
    if not cuda_available():  # no CuPy, or no GPU it can see
        return None
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(0)
    return props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])


def describe(command: str | None = None, device: str = "cpu") -> dict[str, str]:
    """Machine and versions as flat strings (JSON- and CSV-friendly)."""
    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": command or " ".join(["graphduel", *sys.argv[1:]]),
        "host": platform.node() or "unknown",
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "commit": git_commit(),
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = gpu_name() or "none visible"
    for pkg in PACKAGES:
        try:
            info[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        info["graphduel"] = importlib.metadata.version("graphduel")
    except importlib.metadata.PackageNotFoundError:
        info["graphduel"] = "not installed (run from a checkout)"
    return info


# what identifies the hardware, and what a machine record carries besides (versions, commit)
HARDWARE_KEYS = ("device", "gpu", "cpu", "cores")
MACHINE_KEYS = ("host", *HARDWARE_KEYS, "platform", "python", "commit", *PACKAGES, "graphduel")


def machine_kind(info: dict) -> str:
    """The hardware a result was timed on, from a :func:`describe` dict: ``"cuda: <GPU model>"`` or
    ``"cpu: <CPU model> x<cores>"``. Two hosts of one kind give comparable timing ratios."""
    if info.get("device") == "cuda":
        return f"cuda: {info.get('gpu') or 'unknown GPU'}"
    return f"cpu: {info.get('cpu') or 'unknown CPU'} x{info.get('cores') or '?'}"


def machine_record(info: dict) -> dict[str, str]:
    """The part of a :func:`describe` dict that belongs to the machine (not to the run): host, hardware,
    versions and the commit of the code it ran, plus its kind."""
    return {**{k: str(info[k]) for k in MACHINE_KEYS if k in info}, "kind": machine_kind(info)}
