#!/usr/bin/env bash
# Everything that needs a GPU, in one call (the device machine lends ~30 minutes per session, so batch it):
# the GPU tests, the H100 comparison report and the compiler's GPU benchmark. Run from the repository root:
#   bash scripts/gpu_proof.sh OUT_DIR        (on the device machine: bash scripts/gpu_proof.sh "$OUT")
# Each part runs even if an earlier one failed; the exit status is the first failure's.
# The device tool brings back at most 8 files from OUT_DIR: everything goes into OUT_DIR/gpu-proof.tar.gz
# (logs, the report folder, the bench table), with the two tables also beside it to read at once.
# GPU_PROOF_QUICK=1: a quick report, tiny bench sizes and the device tests only (CI's dry run on the fake GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: scripts/gpu_proof.sh OUT_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
export GRAPHDUEL_CACHE_DIR="$work/kernel-cache" CUPY_CACHE_DIR="$work/cupy-cache"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # works from the checkout even if the install below fails
quick="${GPU_PROOF_QUICK:-0}"
status=0
step() {  # step NAME COMMAND...: run, keep its log, remember the first failure
  local name="$1"; shift
  echo "== $name: $*"
  "$@" > "$work/$name.log" 2>&1
  local rc=$?
  tail -n 5 "$work/$name.log"
  echo "== $name: exit $rc"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}
if [ "$quick" = 1 ]; then
  step gpu-tests python3 -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_devices.py
  step h100-report python3 -m compare run --device cuda --quick --workloads softmax mlp_train_adam \
    --peers none --out "$work/h100"
  step compiler-bench python3 -m compiler.bench --device cuda --tiny --repeat 2 --only gelu --only mlp \
    --out "$work/compiler-h100.md"
else
  python3 -m pip install -q --no-deps --no-build-isolation -e . > "$work/install.log" 2>&1 || true
  nvidia-smi > "$work/nvidia-smi.txt" 2>&1 || true
  # every test marked gpu (CI runs the same ones on the fake CuPy of tests/fakegpu), then the CUDA source checks
  step gpu-tests python3 -m pytest -q -rs -m gpu tests
  step cuda-source python3 -m pytest -q -rs tests/test_compiler_codegen.py tests/test_compiler_gemm.py \
    tests/test_simt.py tests/test_nvrtc.py
  step h100-report python3 -m compare run --device cuda --out "$work/h100"
  step compiler-bench python3 -m compiler.bench --device cuda --torch-compile --out "$work/compiler-h100.md"
fi
rm -rf "$work/kernel-cache" "$work/cupy-cache"  # caches are not results
tar -czf "$out/gpu-proof.tar.gz" -C "$work" .
[ -f "$work/h100/report.md" ] && cp "$work/h100/report.md" "$out/h100-report.md"
[ -f "$work/compiler-h100.md" ] && cp "$work/compiler-h100.md" "$out/compiler-h100.md"
rm -rf "$work"
echo "== results: $out/gpu-proof.tar.gz (unpack into reports/: h100/ and compiler-h100.md); exit $status"
exit "$status"
