"""``scripts/gpu_proof.sh``, the one device call a GPU session makes, runs end to end on the fake GPU (quick
mode): a broken script would waste the scarce GPU time. Its results come back as at most 8 files (the device
tool's limit): a tarball and the two tables."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

import eager

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(eager.cuda_available(), reason="a real GPU is here: run the script itself")
@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler: the SIMT emulator cannot build")
def test_the_gpu_proof_script_runs_end_to_end_on_the_fake_gpu(tmp_path):
    fake = str(REPO / "tests" / "fakegpu")
    env = {**os.environ, "GPU_PROOF_QUICK": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [fake, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(["bash", "scripts/gpu_proof.sh", str(tmp_path / "out")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["compiler-h100.md", "gpu-proof.tar.gz", "h100-report.md"]
    with tarfile.open(out / "gpu-proof.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"./h100/report.html", "./h100/results.json", "./compiler-h100.md", "./gpu-tests.log"} <= names
    assert "compiled+graph" in (out / "h100-report.md").read_text()
    assert "CUDA graph" in (out / "compiler-h100.md").read_text()


def test_the_gpu_proof_script_refuses_an_unknown_part(tmp_path):
    proc = subprocess.run(["bash", "scripts/gpu_proof.sh", str(tmp_path), "benchmark"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown part 'benchmark'" in proc.stdout
