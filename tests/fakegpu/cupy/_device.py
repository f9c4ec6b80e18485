"""The simulated device behind the fake CuPy: which stream is current, whether a graph capture is under way,
and what the capture recorded.

Capture follows CUDA's rules, which is the point of the fake: work issued while a stream captures is recorded,
not run (its results hold garbage until the graph is launched); synchronising with the host is an error; and
memory a captured graph writes must stay allocated while the graph can be launched.
"""

from __future__ import annotations

import traceback
import weakref

import numpy as np


class CUDARuntimeError(RuntimeError):
    """As ``cupy.cuda.runtime.CUDARuntimeError``: ``status`` is the CUDA error name."""

    def __init__(self, status: str, message: str):
        self.status = status
        super().__init__(f"{status}: {message}")


class Capture:
    """One capture under way: the thunks it recorded and the arrays allocated while it ran."""

    def __init__(self, stream):
        self.stream = stream
        self.thunks: list = []
        self.allocated: list = []  # (weakref to a Memory, where it was allocated or first used by the graph)

    def uses(self, memories) -> None:
        """Memory that recorded work reads or writes (allocated before the capture too): it must outlive the
        graph as well."""
        seen = {id(ref()) for ref, _ in self.allocated}
        for mem in memories:
            if id(mem) not in seen:
                seen.add(id(mem))
                self.allocated.append((weakref.ref(mem), _caller()))


CURRENT = {"stream": None, "capture": None}


def capturing() -> Capture | None:
    return CURRENT["capture"]


# every host<->device copy and wait so far: a test can assert that a compiled step makes none per call
TRANSFERS = {"D2H": 0, "H2D": 0, "sync": 0}


def check_no_sync(what: str) -> None:
    """Waiting for the device is not allowed while a stream captures (it invalidates the capture)."""
    TRANSFERS["sync"] += 1
    if CURRENT["capture"] is not None:
        raise CUDARuntimeError("cudaErrorStreamCaptureUnsupported",
                               f"{what} synchronises with the host, which is not permitted when a stream is "
                               "capturing")


def check_no_transfer(direction: str) -> None:
    """CuPy refuses host<->device copies while capturing (before any CUDA call: the capture stays valid)."""
    TRANSFERS[direction] += 1
    if CURRENT["capture"] is not None:
        raise RuntimeError(f"the current stream is capturing, so {direction} transfers are disallowed")


def check_stream() -> None:
    """Work issued while a capture is under way must go to the capturing stream."""
    cap = CURRENT["capture"]
    if cap is not None and CURRENT["stream"] is not cap.stream:
        raise CUDARuntimeError("cudaErrorStreamCaptureImplicit",
                               "work was issued on another stream while a stream is capturing")


def poison(a: np.ndarray) -> None:
    """What fresh device memory holds (``cupy.empty``, a captured result before its graph runs): nothing
    meaningful. All bytes 0xFF: NaN as a float, -1 as an integer."""
    if a.size == 0:
        return
    if a.flags.c_contiguous:
        a.reshape(-1).view(np.uint8).fill(0xFF)
    else:
        a.fill(np.nan if a.dtype.kind == "f" else -1)


class Memory:
    """A device allocation, shared by an array and its views (as CuPy's ``MemoryPointer``). When the last array
    holding it dies, CuPy returns the memory to its pool: if a captured graph still writes there, a later
    allocation may be handed the same bytes and every replay overwrites them."""

    __slots__ = ("nbytes", "ptr", "during_capture", "__weakref__")

    def __init__(self, buffer: np.ndarray):
        self.nbytes = buffer.nbytes
        self.ptr = buffer.ctypes.data
        cap = CURRENT["capture"]
        self.during_capture = cap is not None
        if cap is not None:
            cap.allocated.append((weakref.ref(self), _caller()))


def _caller() -> str:
    """Where outside the fake an allocation was made: what a lifetime error names."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "fakegpu" not in frame.filename:
            return f"{frame.filename}:{frame.lineno} ({frame.line})"
    return "?"
