"""NVRTC, as CuPy's RawModule uses it, compiles generated CUDA on a machine without a GPU (``compiler.nvrtc``):
it is stricter than nvcc, so every CUDA source check in the tests runs through it too."""

from __future__ import annotations

import pytest

from compiler import nvrtc

pytestmark = pytest.mark.skipif(nvrtc.library() is None, reason="NVRTC is not installed (pip install "
                                "nvidia-cuda-nvrtc): CUDA source is checked with nvcc alone")


def test_nvrtc_compiles_a_kernel_to_ptx():
    ptx = nvrtc.compile_ptx('extern "C" __global__ void k(float* p) { p[threadIdx.x] = expf(p[0]); }',
                            ("--std=c++17", "--fmad=false"))
    assert ".entry k" in ptx and "sm_90" in ptx


def test_nvrtc_rejects_what_only_nvcc_accepts():
    """Host headers (and INFINITY, which comes from them) build with nvcc but not in CuPy: the checks would miss it
    with nvcc alone."""
    with pytest.raises(nvrtc.NvrtcError, match="cmath"):
        nvrtc.compile_ptx('#include <cmath>\nextern "C" __global__ void k(float* p) { p[0] = INFINITY; }')


def test_the_cuda_backends_header_and_options_are_accepted():
    from compiler.codegen.cuda import header
    from compiler.runtime.cuda import NVRTC_OPTIONS
    assert ".entry z" in nvrtc.compile_ptx(header() + 'extern "C" __global__ void z(float* p) { p[0] = 1; }',
                                           NVRTC_OPTIONS)
