"""``cupy.lib``: only ``stride_tricks`` (CuPy has ``as_strided`` there, as NumPy does)."""

from cupy.lib import stride_tricks

__all__ = ["stride_tricks"]
