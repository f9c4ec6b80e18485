"""Kernel cache on disk: a shared library per program, keyed by a hash of its C source and the build command.

Location: ``$GRAPHDUEL_CACHE_DIR``, else ``$XDG_CACHE_HOME/graphduel``, else ``~/.cache/graphduel``.
Writes are atomic (temp file + ``os.replace``), so concurrent writers never leave a half-written library;
each library has a sidecar with the SHA-256 of its bytes, checked before loading, so a truncated or corrupt
entry is rebuilt instead of crashing. ``STATS`` counts compilations, so a test can assert that a warm
process compiles nothing.

    >>> key_of("int f(void){return 1;}", ["-O3"]) == key_of("int f(void){return 1;}", ["-O3"])
    True
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from compiler.codegen.c import needs_mvec


@dataclass
class Stats:
    compilations: int = 0
    hits: int = 0
    rebuilt_corrupt: int = 0
    compile_seconds: float = 0.0


STATS = Stats()  # the whole process's (tests assert on it)
_THREAD = threading.local()


def thread_stats() -> Stats:
    """This thread's counters: a compile reads what IT built, not what other threads compiled meanwhile."""
    stats = getattr(_THREAD, "stats", None)
    if stats is None:
        stats = _THREAD.stats = Stats()
    return stats


class CompileError(RuntimeError):
    """The C compiler rejected generated source: the message names the kernel file and the compiler output."""


class NoCompiler(RuntimeError):
    """No C compiler was found (``$CC`` or ``cc``)."""


def cache_dir() -> Path:
    base = os.environ.get("GRAPHDUEL_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "graphduel")
    path = Path(base) / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def c_compiler() -> str | None:
    """The C compiler to use: ``$CC`` (may be a full path) or ``cc``; None when it cannot be found."""
    return shutil.which(os.environ.get("CC") or "cc")


@functools.cache
def _compiler_identity(cc: str) -> str:
    """The compiler binary's real path, size and mtime: changes with an upgrade, costs no subprocess (running
    ``cc --version`` in every process was most of a warm start)."""
    try:
        real = os.path.realpath(cc)
        st = os.stat(real)
        return f"{real}:{st.st_size}:{int(st.st_mtime)}"
    except OSError:
        return cc


def flags() -> list[str]:
    # -ffp-contract=off: no fused multiply-adds. A value recomputed in two kernels (or in two phases of one) must
    # round the same way in both, or a mask like (y - max(y)) >= 0 misses the maximum it was computed from
    base = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
            "-std=gnu11", "-shared", "-fPIC"]
    return base + (["-lmvec"] if needs_mvec() else []) + ["-lm"]


def key_of(source: str, build_flags: list[str], cc: str = "cc") -> str:
    h = hashlib.sha256()
    for part in (source, " ".join(build_flags), _compiler_identity(cc)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _valid(lib: Path, meta: Path) -> bool:
    try:
        return lib.exists() and meta.read_text().strip() == _sha(lib)
    except OSError:
        return False


def _compile(cc: str, source: str, lib: Path, build_flags: list[str], suffix: str) -> None:
    src = lib.with_suffix(suffix)
    _atomic_write(src, source.encode())
    fd, tmp = tempfile.mkstemp(dir=lib.parent, prefix=lib.name + ".", suffix=".tmp")
    os.close(fd)
    cmd = [cc, str(src), "-o", tmp] + build_flags
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    for stats in (STATS, thread_stats()):
        stats.compile_seconds += seconds
        stats.compilations += 1
    if proc.returncode != 0:
        os.unlink(tmp)
        raise CompileError(f"C compiler failed on {src} ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    os.replace(tmp, lib)


def _quiet_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning: kernels alternate with BLAS calls (OpenBLAS has its own
    threads) and share the machine with other processes, and spinning workers starve them (measured on 2 cores
    with one busy elsewhere: a small layer_norm took 182-330 us spinning vs 21 us passive; on a loaded machine
    the MLP train step took 8 ms spinning vs 0.85 ms passive). Waking sleepers costs ~50 us, which is why small
    kernels stay on one thread (codegen.c.PARALLEL_WORK). Must be set before libgomp loads, i.e. before the
    first kernel library; a user's setting wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def load_library(source: str, build_flags: list[str] | None = None, cc: str | None = None,
                 suffix: str = ".c") -> tuple[ctypes.CDLL, Path]:
    """Compile ``source`` (or take it from the cache) and load it. Raises NoCompiler without a compiler.
    Defaults: the C kernels' ``flags()`` and ``c_compiler()``; the SIMT emulator passes its C++ ones."""
    _quiet_openmp()
    build_flags = flags() if build_flags is None else build_flags
    cc = c_compiler() if cc is None else cc
    key = key_of(source, build_flags, cc or "cc")
    lib, meta = cache_dir() / f"{key}.so", cache_dir() / f"{key}.sha256"
    if _valid(lib, meta):
        try:
            handle = ctypes.CDLL(str(lib))
            STATS.hits += 1
            return handle, lib
        except OSError:
            pass
    if lib.exists():
        STATS.rebuilt_corrupt += 1
        warnings.warn(f"graphduel: kernel cache entry {lib.name} is corrupt or truncated; rebuilding it",
                      RuntimeWarning, stacklevel=3)
    if cc is None:
        raise NoCompiler(f"no C compiler found (CC={os.environ.get('CC') or 'cc'})")
    _compile(cc, source, lib, build_flags, suffix)
    _atomic_write(meta, _sha(lib).encode())
    return ctypes.CDLL(str(lib)), lib
