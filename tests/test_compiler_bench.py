"""The benchmark script itself (``python3 -m compiler.bench``) runs end to end at tiny sizes and writes a table
with a finite time for every mode of every section; the issue's goals attach to the right rows."""

from __future__ import annotations

import math

import pytest

from compiler import bench


def test_tiny_bench_writes_a_finite_row_for_every_mode(tmp_path):
    out = tmp_path / "bench.md"
    assert bench.main(["--tiny", "--repeat", "2", "--only", "gelu", "--only", "layernorm", "--only", "softmax",
                       "--only", "adam", "--only", "mlp", "--out", str(out)]) == 0
    text = out.read_text()
    assert "machine:" in text and "copy bandwidth (measured on 64 MB buffers)" in text and "FAILED" not in text
    rows = [ln.split(" | ") for ln in text.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    workloads = {r[0].strip("| ") for r in rows}
    assert workloads == {"gelu 4096 f32", "layernorm 64x64 f32", "softmax 64x64 f32", "adam update 4096 f32",
                         "MLP train step (Adam)"}
    for r in rows:
        assert math.isfinite(float(r[2])) and float(r[2]) > 0, r
    compiled_mlp = next(r for r in rows if r[0].startswith("| MLP") and r[1] == "graphduel compiled")
    assert int(float(compiled_mlp[6])) <= 12  # kernels


@pytest.mark.gpu
def test_tiny_cuda_bench_replays_the_mlp_step_as_a_cuda_graph(tmp_path):
    out = tmp_path / "bench.md"
    assert bench.main(["--device", "cuda", "--tiny", "--repeat", "2", "--only", "gelu", "--only", "mlp",
                       "--out", str(out)]) == 0
    text = out.read_text()
    assert "GPU " in text and "FAILED" not in text and "MLP train step (Adam), CUDA graph" in text


def test_goals_attach_to_their_own_section():
    assert bench._goal("cuda", "mlp", "graphduel compiled") == "<= 0.15 ms"
    assert bench._goal("cuda", "adam", "graphduel compiled") == ">= 2400 GB/s"
    assert bench._goal("cpu", "gelu", "graphduel compiled") == "<= 35 ms"
    assert bench._goal("cpu", "gelu", "torch") is None
    assert bench._goal("cpu", "softmax", "graphduel compiled") is None


def test_adam_peers_compute_the_same_update():
    import numpy as np

    import eager
    k = bench.kernels(bench.SIZES["tiny"])["adam"]
    arrays = k.arrays(np.random.default_rng(0))
    assert (arrays[3] >= 0).all()
    ours = [t.numpy() for t in k.ours(*[eager.tensor(a) for a in arrays])]
    for a, b in zip(ours, k.numpy(*arrays)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
