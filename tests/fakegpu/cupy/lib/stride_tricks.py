"""``cupy.lib.stride_tricks.as_strided``: a view of the same device memory with other shape and strides."""

import numpy as _np

from cupy import _function

as_strided = _function("as_strided", _np.lib.stride_tricks.as_strided)

__all__ = ["as_strided"]
