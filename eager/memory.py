"""Keep freed array memory in the process, as a tensor library's caching allocator does.

In-place ops write a tensor's memory instead of replacing its array, so a training step's large temporaries
(``g * lr``, a layer's gradient) are freed and allocated again every step. glibc hands memory back to the
system when the top of its heap has over 128 KiB free, and serves blocks over a moving threshold with fresh
mmap()s: every step then page-faults its temporaries in again (measured: 360 faults per MLP 784-256-10 SGD step,
2.4 ms a step instead of 1.35 ms). Raising both thresholds keeps up to 64 MiB of freed memory for reuse.

Only on glibc, and a user's ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_`` or
``GRAPHDUEL_MALLOC=system`` leaves malloc as it is.

    >>> isinstance(keep_freed_memory(), bool)
    True
"""

from __future__ import annotations

import ctypes
import functools
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_BYTES = 64 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds once per process; False where it was not done (and why is the
    environment: another libc, or the user's own setting)."""
    if os.environ.get("GRAPHDUEL_MALLOC") == "system" or any(
            k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES))
