"""The data pointer of an array, as native calls take it (the C kernels' ``void**`` arguments, the SIMT
emulator's launches).

    >>> import numpy as np
    >>> a = np.zeros(3, np.float32)
    >>> address(a) == a.ctypes.data
    True
"""

from __future__ import annotations

import ctypes

_from_buffer, _addressof = ctypes.c_byte.from_buffer, ctypes.addressof


def address(a) -> int:
    """The data pointer of a C-contiguous array. Through the buffer protocol it costs 0.3 us against 0.9 us for
    ``a.ctypes.data``, which adds up over the few arguments of each of a step's kernels; read-only and empty
    arrays export no writable buffer and take the slow path."""
    try:
        return _addressof(_from_buffer(a))
    except (TypeError, ValueError):
        return a.ctypes.data
