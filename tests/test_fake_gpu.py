"""Every GPU test runs in CI, without a GPU, against the fake CuPy in ``tests/fakegpu``.

A child pytest gets ``tests/fakegpu`` first on its path, so ``import cupy`` there finds NumPy memory behind CuPy's
rules (no implicit host/device mixing, garbage in fresh memory, graph capture that records instead of running,
no synchronisation while capturing, graphs that must keep their memory) and the generated CUDA kernels run under
the SIMT emulator. It runs the tests marked ``gpu`` (eager on cuda, the cuda backend, CUDA-graph replay, the
harness and the benchmark with ``--device cuda``) and the fake's own specification (marked ``fakegpu``).

What this cannot show: CuPy's, NVRTC's and the GPU's own behaviour, and speed. On a machine with a real GPU the
``gpu`` tests run against it directly and this test is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import eager

TESTS = Path(__file__).resolve().parent


@pytest.mark.skipif(eager.cuda_available(), reason="a real GPU is here: the gpu tests run on it directly")
@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler: the SIMT emulator cannot build")
def test_every_gpu_test_passes_on_the_fake_gpu():
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS / "fakegpu"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu or fakegpu",
                           "-rs", str(TESTS)], capture_output=True, text=True, env=env, cwd=TESTS.parent,
                          timeout=1200)
    tail = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, tail
    assert int(summary.split(" passed")[0].split()[-1]) >= 45, summary  # the gpu tests and the fake's own
