"""Kernel cache on disk: a shared library per program, keyed by a hash of its C source and the build command.

Location: ``$GRAPHDUEL_CACHE_DIR``, else ``$XDG_CACHE_HOME/graphduel``, else ``~/.cache/graphduel``.
Writes are atomic (temp file + ``os.replace``), so concurrent writers never leave a half-written library;
each library has a sidecar with the SHA-256 of its bytes, checked before loading, so a truncated or corrupt
entry is rebuilt instead of crashing. ``STATS`` counts compilations, so a test can assert that a warm
process compiles nothing. A module of many kernels is compiled as one translation unit per core, then linked.

The cache is bounded (``$GRAPHDUEL_CACHE_MAX_SIZE``, default ``DEFAULT_MAX_SIZE`` = 1 GiB: a few hundred
programs the size of a 12-layer transformer's train step): after each new library is written, the entries used
least recently (a hit touches its library's mtime) are removed until the cache fits, as ccache does. Processes
share it safely: a process validating and loading an entry holds a shared lock (``flock``) on its library, and
eviction only removes an entry whose library it can lock exclusively without waiting, so an entry is never
removed from under a reader; once loaded, a library stays mapped even if it is removed later. ``entries()``,
``total_size()``, ``evict()`` and ``clear()`` are the API the ``graphduel cache`` command uses.

    >>> key_of("int f(void){return 1;}", ["-O3"]) == key_of("int f(void){return 1;}", ["-O3"])
    True
    >>> parse_size("512M"), parse_size("2G"), parse_size("unlimited")
    (536870912, 2147483648, None)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
import weakref
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


def _sha_of_fd(fd: int) -> str:
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _compile(cc: str, source: str, lib: Path, build_flags: list[str], suffix: str) -> None:
    src = lib.with_suffix(suffix)
    _atomic_write(src, source.encode())
    fd, tmp = tempfile.mkstemp(dir=lib.parent, prefix=lib.name + ".", suffix=".tmp")
    os.close(fd)
    parts = _split_module(source) if suffix == ".c" else []
    start = time.perf_counter()
    try:
        if parts:
            _compile_parts(cc, parts, src, tmp, build_flags)
        else:
            _run_compiler([cc, str(src), "-o", tmp] + build_flags, src)
    except CompileError:
        os.unlink(tmp)
        raise
    finally:
        seconds = time.perf_counter() - start
        for stats in (STATS, thread_stats()):
            stats.compile_seconds += seconds
            stats.compilations += 1
    os.replace(tmp, lib)


def _run_compiler(cmd: list[str], src) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompileError(f"C compiler failed on {src} ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")


# A module of many kernels is compiled as several translation units side by side, one per core, then linked: the
# compiler is single-threaded, and a 12-layer transformer's 314 kernels took 2.26 s in one unit, 1.46 s in two
# on the project's 2-core machine. Each unit is the module's header and every n-th kernel function.
PARALLEL_MIN_FUNCTIONS = 32
PARALLEL_MAX_UNITS = 8
_FUNCTION = re.compile(r"(?m)^(?=void \w+\(void\*\* restrict args\) \{$)")  # codegen.c's kernel functions


def _split_module(source: str) -> list[str]:
    """The translation units a generated C module is compiled as ([]: one, the module itself)."""
    units = min(PARALLEL_MAX_UNITS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    pieces = _FUNCTION.split(source)
    header, functions = pieces[0], pieces[1:]
    if units < 2 or len(functions) < PARALLEL_MIN_FUNCTIONS:
        return []
    return [header + "".join(functions[i::units]) for i in range(units)]


def _compile_parts(cc: str, parts: list[str], src: Path, out: str, build_flags: list[str]) -> None:
    """Compile each part to an object at once (one process each), then link them into ``out``."""
    compile_flags = ["-c"] + [f for f in build_flags if f != "-shared" and not f.startswith("-l")]
    with tempfile.TemporaryDirectory(prefix="graphduel-units-") as d:
        jobs = []
        for i, part in enumerate(parts):
            unit = os.path.join(d, f"{src.stem}.unit{i}.c")
            with open(unit, "w") as f:
                f.write(part)
            cmd = [cc, unit, "-o", unit[:-2] + ".o"] + compile_flags
            jobs.append((cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        failed = None
        for cmd, job in jobs:
            _, err = job.communicate()
            if job.returncode != 0 and failed is None:
                failed = (cmd, err)
        if failed is not None:
            raise CompileError(f"C compiler failed on {src} (one of {len(parts)} units: {' '.join(failed[0])}):\n"
                               f"{failed[1][-4000:]}")
        _run_compiler([cc] + [cmd[1][:-2] + ".o" for cmd, _ in jobs] + ["-o", out] + build_flags, src)


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
    directory = cache_dir()
    lib, meta = directory / f"{key}.so", directory / f"{key}.sha256"
    handle, found = _load_cached(lib, meta)
    if handle is not None:
        STATS.hits += 1
        return handle, lib
    if found:
        STATS.rebuilt_corrupt += 1
        warnings.warn(f"graphduel: kernel cache entry {lib.name} is corrupt or truncated; rebuilding it",
                      RuntimeWarning, stacklevel=3)
    if cc is None:
        raise NoCompiler(f"no C compiler found (CC={os.environ.get('CC') or 'cc'})")
    _compile(cc, source, lib, build_flags, suffix)
    _atomic_write(meta, _sha(lib).encode())
    handle, _ = _load_cached(lib, meta)
    if handle is None:  # removed or replaced by another process between our write and our load: load ours
        handle = _open_library(lib)
    evict(keep={key})
    return handle, lib


def _load_cached(lib: Path, meta: Path) -> tuple[ctypes.CDLL | None, bool]:
    """(the loaded library, True) for a valid entry; (None, True) when the entry exists but is corrupt (its
    bytes do not match the sidecar, or it does not load); (None, False) when there is no entry (or it was removed
    while we waited for its lock). The library is validated and loaded under a shared lock, so no eviction can
    remove it in between; a hit marks it used now (its mtime: the LRU order)."""
    with _locked(lib, shared=True, wait=True) as fd:
        if fd is None:
            return None, False
        try:
            expected = meta.read_text().strip()
        except FileNotFoundError:  # another process wrote the library and is writing its sidecar: build ours
            return None, False
        if expected != _sha_of_fd(fd):
            return None, True
        try:
            handle = _open_library(lib)
        except OSError:
            return None, True
        _touch(lib)
        return handle, True


def _open_library(lib: Path) -> ctypes.CDLL:
    """dlopen ``lib``, to be dlclosed when the handle and every function taken from it are garbage (a ctypes
    function keeps its library referenced): a process that compiles a program for each new shape, its signature
    cache dropping the old ones, then holds a bounded set of libraries instead of one per shape ever seen. The
    libraries it pulls in (the OpenMP runtime, whose idle threads live in it; libstdc++) stay loaded for good."""
    handle = ctypes.CDLL(str(lib))
    if _DLCLOSE is not None and _pin_dependencies(lib.parent):
        # not at exit: a library still referenced then may still run (a daemon thread, a later atexit hook)
        weakref.finalize(handle, _DLCLOSE, ctypes.c_void_p(handle._handle)).atexit = False
    return handle


def _find_dlclose():
    for name in (None, "libdl.so.2"):  # glibc >= 2.34 has it in libc itself
        try:
            return ctypes.CDLL(name).dlclose
        except (OSError, AttributeError):
            continue
    return None


_DLCLOSE = _find_dlclose() if os.path.exists("/proc/self/maps") else None
_PINNED: dict[str, ctypes.CDLL] = {}  # shared libraries kernels pulled in: one more reference each, forever
_KERNEL_LIBRARY = re.compile(r"[0-9a-f]{32}\.so")  # ``key_of``'s names


def _pin_dependencies(directory: Path) -> bool:
    """Take a reference to every shared library mapped in this process outside the kernel cache ``directory``
    (once each), so that closing a kernel library never unloads one of them. False where that cannot be read."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[5].strip() for line in f if line.count(" ") >= 5 and ".so" in line}
    except OSError:
        return False
    inside = str(directory.resolve()) + os.sep
    for path in paths:
        if not path.startswith("/") or path in _PINNED or _KERNEL_LIBRARY.fullmatch(os.path.basename(path)):
            continue  # a kernel library of any cache directory (a test's, an earlier $GRAPHDUEL_CACHE_DIR)
        if not os.path.realpath(path).startswith(inside):
            try:
                _PINNED[path] = ctypes.CDLL(path)
            except OSError:  # not loadable by name (deleted, or a vDSO-like mapping): nothing to pin
                _PINNED[path] = None
    return True


@contextlib.contextmanager
def _locked(lib: Path, shared: bool, wait: bool):
    """Hold a lock on library ``lib``: yields its open descriptor, or None when the file is gone (or was replaced
    while we waited: then the lock would be on a file nobody can find) or, with ``wait=False``, when another
    process holds a conflicting lock."""
    try:
        fd = os.open(lib, os.O_RDONLY)
    except FileNotFoundError:
        yield None
        return
    try:
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            yield None
            return
        try:
            same = os.stat(lib).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        yield fd if same else None
    finally:
        os.close(fd)  # releases the lock


def _touch(lib: Path) -> None:
    """Mark an entry used now. A read-only cache (a shared directory, a read-only file system) keeps its order."""
    try:
        os.utime(lib)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise


# ---------------------------------------------------------------- size bound, listing, clearing

DEFAULT_MAX_SIZE = 1 << 30  # 1 GiB: room for a few hundred big programs, little on a laptop's disk
STALE_TEMP_SECONDS = 3600  # a temp file older than this was left by a process that died mid-write
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int | None:
    """Bytes from ``"1073741824"``, ``"500M"``, ``"2G"``, ``"1.5GiB"`` (powers of 1024); None for ``"unlimited"``
    (or ``"0"``): no bound. A ValueError names the forms accepted."""
    if text.strip().lower() in ("unlimited", "none", "0"):
        return None
    m = _SIZE.match(text)
    if m is None:
        raise ValueError(f"GRAPHDUEL_CACHE_MAX_SIZE={text!r} is not a size; use bytes or a number with K, M, G or T "
                         "(powers of 1024), e.g. 500M or 2G, or 'unlimited'")
    power = " kmgt".index(m.group(2).lower() or " ")
    return int(float(m.group(1)) * 1024 ** power)


def max_size() -> int | None:
    """The cache's bound in bytes (``$GRAPHDUEL_CACHE_MAX_SIZE``, default 1 GiB); None when unbounded."""
    value = os.environ.get("GRAPHDUEL_CACHE_MAX_SIZE")
    return DEFAULT_MAX_SIZE if value in (None, "") else parse_size(value)


@dataclass
class Entry:
    """One cached program: its key, its files (library, sidecar, source), their total bytes, and when it was
    last used (the library's mtime, seconds since the epoch)."""

    key: str
    files: list[Path]
    size: int
    last_used: float

    @property
    def library(self) -> Path:
        return self.files[0].parent / f"{self.key}.so"

    @property
    def source(self) -> Path | None:
        return next((f for f in self.files if f.suffix in (".c", ".cpp", ".cu")), None)


def entries(directory: Path | None = None) -> list[Entry]:
    """Every entry of the cache, least recently used first. Temp files of writes in progress are not entries.

        >>> import tempfile; d = Path(tempfile.mkdtemp())
        >>> _ = (d / "ab12.so").write_bytes(b"x" * 10), (d / "ab12.sha256").write_text("y")
        >>> [(e.key, e.size, len(e.files)) for e in entries(d)]
        [('ab12', 11, 2)]
    """
    directory = cache_dir() if directory is None else directory
    by_key: dict[str, list[tuple[Path, os.stat_result]]] = {}
    with os.scandir(directory) as it:
        for item in it:
            if item.name.endswith(".tmp") or item.name.startswith(".") or not item.is_file():
                continue
            try:
                st = item.stat()
            except FileNotFoundError:  # removed meanwhile by another process
                continue
            by_key.setdefault(item.name.split(".", 1)[0], []).append((Path(item.path), st))
    out = []
    for key, files in by_key.items():
        files.sort(key=lambda f: (f[0].suffix != ".so", f[0].name))  # the library first
        lib = [st for f, st in files if f.suffix == ".so"]
        last = lib[0].st_mtime if lib else max(st.st_mtime for _, st in files)
        out.append(Entry(key, [f for f, _ in files], sum(st.st_size for _, st in files), last))
    return sorted(out, key=lambda e: (e.last_used, e.key))


def total_size(directory: Path | None = None) -> int:
    """Bytes the cache's entries take."""
    return sum(e.size for e in entries(directory))


def evict(limit: int | None = -1, keep: set[str] = frozenset(), directory: Path | None = None) -> list[Entry]:
    """Remove least-recently-used entries until the cache takes at most ``limit`` bytes (-1: ``max_size()``;
    None: no bound, nothing is removed), never the keys in ``keep`` nor an entry another process is loading.
    Stale temp files are removed too. Returns the entries removed. One process evicts at a time; another that
    finds the cache being evicted leaves it to that one."""
    limit = max_size() if limit == -1 else limit
    directory = cache_dir() if directory is None else directory
    if limit is None:
        return []
    removed: list[Entry] = []
    with _exclusive(directory / ".evict.lock") as mine:
        if not mine:
            return removed
        _remove_stale_temps(directory)
        current = entries(directory)
        total = sum(e.size for e in current)
        for e in current:
            if total <= limit:
                break
            if e.key not in keep and _remove(e):
                removed.append(e)
                total -= e.size
    return removed


def clear(directory: Path | None = None) -> list[Entry]:
    """Remove every entry no process is loading right now (and stale temp files); returns those removed."""
    return evict(0, directory=directory)


@contextlib.contextmanager
def _exclusive(path: Path):
    """Yields True while this process holds ``path``'s exclusive lock, False when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _remove(e: Entry) -> bool:
    """Remove an entry's files while holding its library's exclusive lock (never waiting: a reader holds it
    shared while it validates and loads). An entry without a library (its sidecar left over) goes as it is."""
    lib = e.library
    if not lib.exists():
        for f in e.files:
            with contextlib.suppress(FileNotFoundError):  # another process removed it first: the goal is met
                f.unlink()
        return True
    with _locked(lib, shared=False, wait=False) as fd:
        if fd is None:
            return False
        for f in e.files:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
    return True


def _remove_stale_temps(directory: Path) -> None:
    now = time.time()
    for f in directory.glob("*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if now - f.stat().st_mtime > STALE_TEMP_SECONDS:
                f.unlink()
