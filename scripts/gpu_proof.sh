#!/usr/bin/env bash
# Everything that needs a GPU, in one call (the device machine lends ~30 minutes per session, so batch it):
# the GPU tests, the H100 comparison report and the compiler's GPU benchmark. Run from the repository root:
#   bash scripts/gpu_proof.sh OUT_DIR        (on the device machine: bash scripts/gpu_proof.sh "$OUT")
# Each part runs even if an earlier one failed; the exit status is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: scripts/gpu_proof.sh OUT_DIR}"
mkdir -p "$out"
export GRAPHDUEL_CACHE_DIR="$out/kernel-cache" CUPY_CACHE_DIR="$out/cupy-cache"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # works from the checkout even if the install below fails
status=0
step() {  # step NAME COMMAND...: run, keep its log, remember the first failure
  local name="$1"; shift
  echo "== $name: $*"
  "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 5 "$out/$name.log"
  echo "== $name: exit $rc"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$out/install.log" 2>&1 || true
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
# every test marked gpu (CI runs the same ones on the fake CuPy of tests/fakegpu), then the CUDA source checks
step gpu-tests python3 -m pytest -q -rs -m gpu tests
step cuda-source python3 -m pytest -q -rs tests/test_compiler_codegen.py tests/test_compiler_gemm.py tests/test_simt.py
step h100-report python3 -m compare run --device cuda --out "$out/h100"
step compiler-bench python3 -m compiler.bench --device cuda --torch-compile --out "$out/compiler-h100.md"
rm -rf "$out/kernel-cache" "$out/cupy-cache"  # caches are not results
exit "$status"
