"""``cupyx.scipy.special`` of the fake CuPy."""

from __future__ import annotations

import scipy.special as _special
from cupy import _Ufunc

erf = _Ufunc(_special.erf)
