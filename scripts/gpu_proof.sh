#!/usr/bin/env bash
# Everything that needs a GPU: the GPU tests, the H100 comparison report and the compiler's GPU benchmark.
# Run from the repository root:
#   bash scripts/gpu_proof.sh OUT_DIR [tests] [report] [bench]     (no part named: all three)
# A device call may run 10 minutes at most, so on the device machine run the parts one call each:
#   bash scripts/gpu_proof.sh "$OUT" tests;  then ... "$OUT" report;  then ... "$OUT" bench
# Each part runs even if an earlier one failed; the exit status is the first failure's.
# The device tool brings back at most 8 files from OUT_DIR: everything goes into OUT_DIR/gpu-proof.tar.gz
# (logs, the report folder, the bench table), rewritten after every step so a call cut off by its time limit
# still returns what finished; the two tables are also copied beside it.
# GPU_PROOF_QUICK=1: a quick report, tiny bench sizes and the device tests only (CI's dry run on the fake GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: scripts/gpu_proof.sh OUT_DIR [tests] [report] [bench]}"
shift
parts="${*:-tests report bench}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export GRAPHDUEL_CACHE_DIR="$work/.kernel-cache" CUPY_CACHE_DIR="$work/.cupy-cache"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # works from the checkout even if the install below fails
quick="${GPU_PROOF_QUICK:-0}"
status=0
pack() {  # the results so far, as the files the device tool brings back
  tar -czf "$out/gpu-proof.tar.gz" -C "$work" --exclude ./.kernel-cache --exclude ./.cupy-cache .
  if [ -f "$work/h100/report.md" ]; then cp "$work/h100/report.md" "$out/h100-report.md"; fi
  if [ -f "$work/compiler-h100.md" ]; then cp "$work/compiler-h100.md" "$out/compiler-h100.md"; fi
}
step() {  # step NAME COMMAND...: run, keep its log, remember the first failure, pack
  local name="$1"; shift
  echo "== $name: $*"
  "$@" > "$work/$name.log" 2>&1
  local rc=$?
  tail -n 5 "$work/$name.log"
  echo "== $name: exit $rc"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
  pack
}
wants() { case " $parts " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
for part in $parts; do
  case "$part" in tests|report|bench) ;; *) echo "unknown part '$part': use tests, report or bench"; exit 2 ;; esac
done
if [ "$quick" != 1 ]; then
  python3 -m pip install -q --no-deps --no-build-isolation -e . > "$work/install.log" 2>&1 || true
  nvidia-smi > "$work/nvidia-smi.txt" 2>&1 || true
fi
if wants tests; then
  if [ "$quick" = 1 ]; then
    step gpu-tests python3 -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_devices.py
  else
    # every test marked gpu (CI runs the same ones on the fake CuPy of tests/fakegpu), then the CUDA source checks
    step gpu-tests python3 -m pytest -q -rs -m gpu tests
    step cuda-source python3 -m pytest -q -rs tests/test_compiler_codegen.py tests/test_compiler_gemm.py \
      tests/test_simt.py tests/test_nvrtc.py
  fi
fi
if wants report; then
  if [ "$quick" = 1 ]; then
    step h100-report python3 -m compare run --device cuda --quick --workloads softmax mlp_train_adam \
      --peers none --out "$work/h100"
  else
    step h100-report python3 -m compare run --device cuda --out "$work/h100"
  fi
fi
if wants bench; then
  if [ "$quick" = 1 ]; then
    step compiler-bench python3 -m compiler.bench --device cuda --tiny --repeat 2 --only gelu --only mlp \
      --out "$work/compiler-h100.md"
  else
    step compiler-bench python3 -m compiler.bench --device cuda --torch-compile --out "$work/compiler-h100.md"
  fi
fi
pack
echo "== results: $out/gpu-proof.tar.gz (unpack h100/ and compiler-h100.md into reports/); exit $status"
exit "$status"
