#!/usr/bin/env bash
# gpu_check.sh - the one-call GPU check, run from the repo root on the 4x H100 machine:
# builds (unless $BUILD holds a build already), then
#   1. GPU test suite at TP 1-4, multi-process (mp) and single-process (sp), with
#      compute-sanitizer memcheck/racecheck and the PyTorch binding test running beside it
#      on the other GPUs (correctness only: nothing is timed while they run);
#   2. arnorm-bench (CUDA-graph replay and stream loop, NCCL + norm baseline in the same
#      run), then ../shared/bench/torch_baseline.py (carried in .carry/) on the same GPUs;
#   3. the Gemma decoder example;
# and prints a short table last. Logs and CSVs go to $OUT (device tool) or ./gpu-results.
#   QUICK=1: quick test matrix everywhere (default: full matrix at TP2 and TP4 mp)
#   STAGES="tests speed example" (default: all three; a device call may run one at a time)
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BUILD="${BUILD:-build-gpu}"
LOGS="${OUT:-$ROOT/gpu-results}"
mkdir -p "$LOGS"
export LD_LIBRARY_PATH="$ROOT/$BUILD:${LD_LIBRARY_PATH:-}:/usr/lib/x86_64-linux-gnu"
export ARNORM_LIBRARY="$ROOT/$BUILD/libarnorm.so" ARNORM_TIMEOUT_MS="${ARNORM_TIMEOUT_MS:-10000}"
SUMMARY="$LOGS/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

nvidia-smi -L 2>&1 | tee "$LOGS/gpus.txt"
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || echo 0)
note "date $(date -u +%FT%TZ) gpus $NGPU $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
nvidia-smi topo -m > "$LOGS/topo.txt" 2>&1

if [ ! -x "$BUILD/tests/gpu/test_fused_gpu" ] || [ "${REBUILD:-0}" = 1 ]; then
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="80;90" \
    > "$LOGS/build.log" 2>&1 && cmake --build "$BUILD" -j 16 >> "$LOGS/build.log" 2>&1 \
    || { tail -30 "$LOGS/build.log"; note "BUILD FAILED"; exit 1; }
fi
T="$BUILD/tests/gpu/test_fused_gpu"
B="$BUILD/bench/arnorm-bench"
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
Q="quick"; [ "${QUICK:-0}" = 1 ] || Q=""

run() { # name, timeout, command...  (PASS/FAIL line in the summary, log in $LOGS/name.log)
  local name="$1" to="$2"; shift 2
  local t0=$(date +%s)
  timeout "$to" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$? dt=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ]; then note "PASS  $name (${dt}s)"
  elif [ $rc -eq 77 ]; then note "SKIP  $name: $(grep -m1 SKIP "$LOGS/$name.log")"
  else note "FAIL  $name rc=$rc (${dt}s)"; tail -12 "$LOGS/$name.log"; fi
  return $rc
}

STAGES="${STAGES:-tests speed example}"
has() { [[ " $STAGES " == *" $1 "* ]]; }
fails=0
# ---- 1. correctness: two lanes of two GPUs at once, then all four GPUs
lane01() {
  export CUDA_VISIBLE_DEVICES=0,1
  run test_mp_w2 300 "$T" mp 2 $Q; run test_sp_w2 200 "$T" sp 2 quick
  run test_mp_w1 120 "$T" mp 1 quick; run test_sp_w1 120 "$T" sp 1 quick
}
lane23() {
  export CUDA_VISIBLE_DEVICES=2,3
  run memcheck_mp2 240 "$CS" --tool memcheck --report-api-errors no --error-exitcode 9 "$T" mp 2 tiny
  run racecheck_sp2 200 "$CS" --tool racecheck --report-api-errors no --error-exitcode 9 "$T" sp 2 tiny
  run torch_binding_tp2 240 torchrun --nproc-per-node=2 tests/gpu/test_torch_binding.py --quick --no-timing
}
if has tests; then
  lane01 & lane23 & wait
  run test_mp_w4 300 "$T" mp 4 $Q; run test_sp_w4 200 "$T" sp 4 quick
  run test_mp_w3 150 "$T" mp 3 quick; run test_sp_w3 150 "$T" sp 3 quick
  run torch_binding_tp4 240 torchrun --nproc-per-node=4 tests/gpu/test_torch_binding.py --quick --no-timing
  run faults_gpu 120 "$BUILD/tests/gpu/test_faults_gpu"
fi

# ---- 2. speed: arnorm-bench, then the PyTorch alternatives, same GPUs, nothing else running
if has speed; then
run bench_h4096 400 "$B" -B cuda -g 2,4 -t 1,8,32,128,512,2048,8192 -H 4096 -d bf16 -G 2 -o "$LOGS/bench.csv"
if [ -f .carry/torch_baseline.py ]; then
  for w in 2 4; do
    HIDDEN=4096 run torch_baseline_tp$w 240 torchrun --nproc-per-node=$w .carry/torch_baseline.py
  done
else
  note "SKIP  torch_baseline: .carry/torch_baseline.py not carried"
fi
# ---- 3. the example (before the extra hidden sizes: a call may run out of time)
has example && run example_tp2 200 torchrun --nproc-per-node=2 examples/gemma_decoder_step.py
run bench_h8192 300 "$B" -B cuda -g 4 -t 1,8,32,128,512,2048,8192 -H 8192 -d bf16 -G 1 -o "$LOGS/bench.csv"
run bench_h2304 300 "$B" -B cuda -g 2,4 -t 1,32,512 -H 2304 -d bf16 -G 1 -o "$LOGS/bench.csv"
run bench_h5376 300 "$B" -B cuda -g 2,4 -t 1,32,512 -H 5376 -d bf16 -G 1 -o "$LOGS/bench.csv"
fi

echo "==== arnorm-bench (bf16, median us per call; base = NCCL all-reduce + norm kernel, same run)"
grep -h -v '^#' "$LOGS"/bench_h4096.log "$LOGS"/bench_h8192.log 2>/dev/null | awk 'NF>=12'
for w in 2 4; do echo "==== torch_baseline TP$w"; tail -12 "$LOGS/torch_baseline_tp$w.log" 2>/dev/null; done
echo "==== summary"; cat "$SUMMARY"
fails=$(grep -c '^FAIL' "$SUMMARY")
echo "failures: $fails"
exit "$fails"
