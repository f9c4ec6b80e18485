"""``cupy.cuda`` of the fake CuPy: one device, streams with graph capture, events, a memory pool's counters."""

from __future__ import annotations

import time

from cupy import _device
from cupy.cuda import runtime

__all__ = ["Device", "Stream", "Graph", "Event", "get_elapsed_time", "get_current_stream", "runtime",
           "MemoryPool", "get_default_memory_pool"]


class Device:
    def __init__(self, device: int | None = None):
        self.id = 0 if device is None else int(device)
        if self.id != 0:
            raise runtime.CUDARuntimeError("cudaErrorInvalidDevice", f"the fake has one device, not {self.id}")

    compute_capability = "90"

    def synchronize(self) -> None:
        _device.check_no_sync("Device.synchronize()")

    def use(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Stream:
    """A stream; ``with stream:`` makes it current. ``begin_capture``/``end_capture`` record a Graph."""

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False):
        self.null = null
        self._outer: list = []

    def __enter__(self):
        self._outer.append(_device.CURRENT["stream"])
        _device.CURRENT["stream"] = self
        return self

    def __exit__(self, *exc):
        _device.CURRENT["stream"] = self._outer.pop()
        return False

    def use(self) -> Stream:
        _device.CURRENT["stream"] = self
        return self

    def synchronize(self) -> None:
        _device.check_no_sync("Stream.synchronize()")

    def is_capturing(self) -> bool:
        cap = _device.capturing()
        return cap is not None and cap.stream is self

    def begin_capture(self, mode=None) -> None:
        if self.null:
            raise runtime.CUDARuntimeError("cudaErrorStreamCaptureUnsupported",
                                           "the null (legacy default) stream cannot capture")
        if _device.capturing() is not None:
            raise runtime.CUDARuntimeError("cudaErrorIllegalState", "a capture is already under way")
        _device.CURRENT["capture"] = _device.Capture(self)

    def end_capture(self) -> Graph:
        cap = _device.capturing()
        if cap is None or cap.stream is not self:
            raise runtime.CUDARuntimeError("cudaErrorIllegalState", "this stream is not capturing")
        _device.CURRENT["capture"] = None
        return Graph(cap)


Stream.null = Stream(null=True)  # CuPy's name for the legacy default stream
_device.CURRENT["stream"] = Stream.null


def get_current_stream() -> Stream:
    return _device.CURRENT["stream"]


class Graph:
    """A captured graph: ``launch()`` replays the recorded work on the memory it was captured with."""

    def __init__(self, capture: _device.Capture):
        self._thunks = capture.thunks
        self._allocated = capture.allocated

    def launch(self, stream: Stream | None = None) -> None:
        _device.check_stream()
        freed = [where for ref, where in self._allocated if ref() is None]
        if freed:
            raise RuntimeError(f"fake cupy: graph launched after {len(freed)} of the {len(self._allocated)} arrays "
                               "it uses (allocated during its capture or before) were released: CuPy's pool may "
                               "have handed that memory to other arrays, which every replay now overwrites. Keep "
                               f"what the captured work uses alive as long as the graph. Released: {'; '.join(freed)}")
        for thunk in self._thunks:
            thunk()

    def upload(self, stream: Stream | None = None) -> None:
        pass


class Event:
    def __init__(self, block: bool = False, disable_timing: bool = False, interprocess: bool = False):
        self._t: float | None = None

    def record(self, stream: Stream | None = None) -> None:
        self._t = time.perf_counter()

    def synchronize(self) -> None:
        _device.check_no_sync("Event.synchronize()")

    def query(self) -> bool:
        return True


def get_elapsed_time(start: Event, stop: Event) -> float:
    """Milliseconds between two recorded events."""
    if start._t is None or stop._t is None:
        raise runtime.CUDARuntimeError("cudaErrorInvalidResourceHandle", "an event was not recorded")
    return (stop._t - start._t) * 1e3


class MemoryPool:
    def used_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0

    def free_all_blocks(self) -> None:
        pass


_POOL = MemoryPool()


def get_default_memory_pool() -> MemoryPool:
    return _POOL
