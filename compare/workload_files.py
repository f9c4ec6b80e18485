"""Workload files: a user's own ``@workload`` / ``@program`` definitions, imported from a ``.py`` file.

:func:`load_workload_file` imports the file and returns its workloads without leaving them in the built-in
registry (what the file's decorators registered is taken out again); :func:`registered` puts workloads in the
registry for the length of a ``with`` block, which is how ``graphduel run --workloads-from PATH.py`` and
``graphduel explain PATH.py:NAME`` run them through the harness. A file that cannot be used raises
:class:`WorkloadFileError` naming the file and the line (a syntax error, an exception while importing, a name
clash with a built-in workload, no workloads at all).

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "mine.py"
    >>> _ = path.write_text('''
    ... from compare.workloads import workload
    ... @workload(sizes={"small": {"x": (4, 8)}})
    ... def my_double_tanh(lib, x):
    ...     return lib.tanh(x) * 2
    ... ''')
    >>> [wl.name for wl in load_workload_file(path)]
    ['my_double_tanh']
    >>> from compare.workloads import REGISTRY
    >>> "my_double_tanh" in REGISTRY
    False
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import sys
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path

from compare.workloads.registry import REGISTRY, Workload, register

MODULE_PREFIX = "graphduel_workload_file_"


class WorkloadFileError(ValueError):
    """A workload file cannot be used; the message names the file, the line and what to do.

    A ``ValueError``, so the ``graphduel`` command prints it as one line instead of a traceback."""


def load_workload_file(path: str | Path) -> list[Workload]:
    """The workloads a user's file defines, in definition order: those its decorators registered and any other
    module-level :class:`Workload` (``register=False``). The built-in registry is left as it was."""
    path = _checked_path(path)
    import compare.workloads  # noqa: F401  (built-ins first: a clash is then the user file's, at its line)
    before = dict(REGISTRY)
    try:
        module = _import_file(path)
        added = [wl for name, wl in REGISTRY.items() if before.get(name) is not wl]
    finally:
        REGISTRY.clear()
        REGISTRY.update(before)
    loose = [v for v in vars(module).values() if isinstance(v, Workload)]
    found = list({id(wl): wl for wl in added + loose}.values())
    if not found:
        raise WorkloadFileError(
            f"{path}: defines no workloads; decorate a forward function with @workload(sizes=...) or a builder "
            "with @program(kind=..., inputs=...), both from compare.workloads (README: 'Workload files')")
    _check_unique(path, found)
    return found


@contextlib.contextmanager
def registered(workloads: Iterable[Workload]) -> Iterator[list[str]]:
    """Register ``workloads`` for the ``with`` block (yields their names); the registry is restored on exit.
    A name a built-in workload already has is refused (rename it with ``name=``)."""
    import compare.workloads  # noqa: F401  (the built-ins, so that a clash is seen now)
    workloads = list(workloads)
    before = dict(REGISTRY)
    try:
        for wl in workloads:
            if wl.name in REGISTRY and REGISTRY[wl.name] is not wl:
                raise WorkloadFileError(f"workload {wl.name!r} ({wl.source}) has the name of the workload defined at "
                                        f"{REGISTRY[wl.name].source}; give yours another name=")
            register(wl)
        yield [wl.name for wl in workloads]
    finally:
        REGISTRY.clear()
        REGISTRY.update(before)


@contextlib.contextmanager
def registered_files(paths: Iterable[str | Path]) -> Iterator[list[str]]:
    """Load every file of ``paths`` and register their workloads for the ``with`` block (yields their names)."""
    workloads = [wl for p in paths for wl in load_workload_file(p)]
    with registered(workloads) as names:
        yield names


def split_spec(spec: str) -> tuple[Path | None, str]:
    """``"models.py:my_net"`` -> (Path("models.py"), "my_net"); a plain name -> (None, name).

        >>> split_spec("dir/models.py:my_net")
        (PosixPath('dir/models.py'), 'my_net')
        >>> split_spec("softmax")
        (None, 'softmax')
    """
    file, sep, name = spec.rpartition(":")
    if sep and file.endswith(".py"):
        if not name:
            raise WorkloadFileError(f"{spec!r}: name the workload after the colon, as in {file}:WORKLOAD")
        return Path(file), name
    if spec.endswith(".py"):
        raise WorkloadFileError(f"{spec!r}: name one of the file's workloads, as in {spec}:WORKLOAD")
    return None, spec


@contextlib.contextmanager
def workload_spec(spec: str) -> Iterator[str]:
    """For the ``with`` block, the registered name of ``spec``: a built-in name as it is, or ``PATH.py:NAME``
    with the file's workloads registered (an unknown NAME is an error listing the file's workloads)."""
    path, name = split_spec(spec)
    if path is None:
        yield name
        return
    workloads = load_workload_file(path)
    names = [wl.name for wl in workloads]
    if name not in names:
        raise WorkloadFileError(f"{path}: no workload named {name!r}; the file defines {', '.join(names)}")
    with registered(workloads):
        yield name


# ------------------------------------------------------------------ importing
def _checked_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise WorkloadFileError(f"workload file {path} does not exist")
    if path.is_dir() or path.suffix != ".py":
        raise WorkloadFileError(f"workload file {path}: expected a Python file (PATH.py) of @workload/@program "
                                "definitions")
    return path.resolve()


def _module_name(path: Path) -> str:
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    return f"{MODULE_PREFIX}{path.stem}_{digest}"


def _import_file(path: Path):
    """Import ``path`` as a fresh module (its directory on ``sys.path`` meanwhile, as for a script, so it can
    import its neighbours); failures become a :class:`WorkloadFileError` at the file's line."""
    name = _module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # while it runs (dataclasses and pickling look modules up); replaced on reload
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(name, None)
        raise WorkloadFileError(_syntax_message(path, e)) from e
    except Exception as e:  # noqa: BLE001  (re-raised at once, with the file's line)
        sys.modules.pop(name, None)
        raise WorkloadFileError(f"{path}:{_line_in(path, e)}: {type(e).__name__} while importing the workload "
                                f"file: {e}") from e
    finally:
        with contextlib.suppress(ValueError):  # the file may have taken its own directory off the path
            sys.path.remove(str(path.parent))
    return module


def _syntax_message(path: Path, e: SyntaxError) -> str:
    where = f"{path}:{e.lineno}" if e.lineno else str(path)
    text = f"\n    {e.text.rstrip()}" if e.text else ""
    return f"{where}: syntax error: {e.msg}{text}"


def _line_in(path: Path, e: BaseException) -> str:
    """The innermost line of ``path`` in the exception's traceback (the line that raised, or called what did)."""
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if Path(f.filename) == path]
    return str(lines[-1]) if lines else "?"


def _check_unique(path: Path, workloads: list[Workload]) -> None:
    seen: dict[str, Workload] = {}
    for wl in workloads:
        if wl.name in seen:
            raise WorkloadFileError(f"{path}: two workloads are named {wl.name!r} ({seen[wl.name].source} and "
                                    f"{wl.source}); give one of them another name=")
        seen[wl.name] = wl
