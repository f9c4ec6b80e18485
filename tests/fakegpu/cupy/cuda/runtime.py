"""``cupy.cuda.runtime`` of the fake CuPy: one device that says what it is."""

from __future__ import annotations

from cupy._device import CUDARuntimeError

__all__ = ["CUDARuntimeError", "getDeviceCount", "getDeviceProperties", "runtimeGetVersion", "driverGetVersion"]


def getDeviceCount() -> int:
    return 1


def getDeviceProperties(device: int) -> dict:
    if device != 0:
        raise CUDARuntimeError("cudaErrorInvalidDevice", f"the fake has one device, not {device}")
    return {"name": b"fake GPU (graphduel tests: NumPy memory, SIMT emulator)", "totalGlobalMem": 1 << 30,
            "multiProcessorCount": 1, "major": 9, "minor": 0, "clockRate": 0, "memoryClockRate": 0,
            "memoryBusWidth": 0, "l2CacheSize": 0, "sharedMemPerBlock": 48 << 10, "warpSize": 32}


def runtimeGetVersion() -> int:
    return 13000


def driverGetVersion() -> int:
    return 13000
