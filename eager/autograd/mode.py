"""Per-thread (per-context) engine state: grad mode, anomaly mode and the recorders a tracer attaches.

State lives in one ContextVar holding an immutable ``Mode``: one lookup per op, and two threads (or two
asyncio tasks) never see each other's ``no_grad`` or trace.

    >>> import eager
    >>> with eager.no_grad():
    ...     eager.is_grad_enabled()
    False
"""

from __future__ import annotations

import contextlib
import functools
import threading
from contextvars import ContextVar
from typing import NamedTuple


class Mode(NamedTuple):
    grad_enabled: bool = True
    anomaly: bool = False
    # objects with record(), mutate(), escape() and optionally before_write(): see tracer/recorder.py
    recorders: tuple = ()


MODE: ContextVar[Mode] = ContextVar("graphduel_mode", default=Mode())  # noqa: B039  (Mode is immutable)


@contextlib.contextmanager
def _set(**changes):
    token = MODE.set(MODE.get()._replace(**changes))
    try:
        yield
    finally:
        MODE.reset(token)


class _GradMode(contextlib.ContextDecorator):
    """Usable as ``with no_grad():`` and as ``@no_grad()``.

    One object may be entered by several threads at once (a decorated function always is), so the state
    to restore is kept per thread, never on the shared object.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._local = threading.local()

    def __enter__(self):
        stack = self._local.__dict__.setdefault("tokens", [])
        stack.append(MODE.set(MODE.get()._replace(grad_enabled=self.enabled)))
        return self

    def __exit__(self, *exc):
        MODE.reset(self._local.tokens.pop())
        return False


def no_grad() -> _GradMode:
    """Ops inside record no autograd graph (a tracer still sees them)."""
    return _GradMode(False)


def enable_grad() -> _GradMode:
    """Re-enable graph recording inside a ``no_grad`` block."""
    return _GradMode(True)


class set_grad_enabled(_GradMode):  # noqa: N801  (PyTorch's name)
    """Switch grad mode now (a plain call lasts for this thread); as a context manager it is restored on exit.

        >>> import eager
        >>> with eager.set_grad_enabled(False):
        ...     eager.is_grad_enabled()
        False
    """

    def __init__(self, enabled: bool):
        super().__init__(enabled)
        self._previous = MODE.get().grad_enabled
        MODE.set(MODE.get()._replace(grad_enabled=bool(enabled)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        MODE.set(MODE.get()._replace(grad_enabled=self._previous))
        return False

    def __call__(self, fn):
        """As a decorator (``@set_grad_enabled(False)``): decorating must not switch the mode now."""
        MODE.set(MODE.get()._replace(grad_enabled=self._previous))
        return _GradMode(self.enabled)(fn)


def is_grad_enabled() -> bool:
    return MODE.get().grad_enabled


def detect_anomaly() -> contextlib.AbstractContextManager:
    """Record each op's source line and stop backward at the first NaN/Inf gradient, naming the forward op.

        >>> import eager
        >>> with eager.autograd.detect_anomaly():
        ...     pass
    """
    return _set(anomaly=True)


def add_recorder(recorder) -> contextlib.AbstractContextManager:
    """Attach a recorder (the tracer) to every op run in this context."""
    return _set(recorders=MODE.get().recorders + (recorder,))


@functools.cache
def _package_dirs() -> tuple[str, ...]:
    import os

    import eager
    root = os.path.dirname(os.path.dirname(os.path.abspath(eager.__file__)))
    return tuple(os.path.join(root, pkg) + os.sep for pkg in ("eager", "tracer", "compiler"))


def user_source(skip_dirs: tuple[str, ...] | None = None) -> str:
    """``file:line`` of the innermost frame outside graphduel's engine: the user's line that ran an op."""
    import os
    import sys
    dirs = skip_dirs or _package_dirs()
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(dirs) and "contextlib" not in path:
            return f"{os.path.basename(path)}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"
