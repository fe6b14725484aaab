#!/usr/bin/env bash
# gpu_check.sh - the one-call GPU check (run on the 4x H100 machine from the repo root):
# builds (unless BUILD holds a build already), runs the GPU tests at TP 1-4 multi-process
# and single-process, compute-sanitizer memcheck + racecheck on a small case, then the
# benchmark; prints a short table last. Logs go to $OUT (device tool) or ./gpu-results.
#   STAGES="tests sanitize bench" (default all)   QUICK=1: the quick test matrix
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BUILD="${BUILD:-build-gpu}"
LOGS="${OUT:-$ROOT/gpu-results}"
mkdir -p "$LOGS"
STAGES="${STAGES:-tests sanitize bench crossover}"
MODE=""
[ "${QUICK:-0}" = 1 ] && MODE=quick
export LD_LIBRARY_PATH="$ROOT/$BUILD:${LD_LIBRARY_PATH:-}:/usr/lib/x86_64-linux-gnu"
SUMMARY="$LOGS/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

nvidia-smi -L 2>&1 | tee "$LOGS/gpus.txt"
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || echo 0)
note "date $(date -u +%FT%TZ) gpus $NGPU driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)"

if [ ! -x "$BUILD/tests/gpu/test_fused_gpu" ] || [ "${REBUILD:-0}" = 1 ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="80;90" \
    > "$LOGS/build.log" 2>&1 && ninja -C "$BUILD" >> "$LOGS/build.log" 2>&1 \
    || { tail -30 "$LOGS/build.log"; note "BUILD FAILED"; exit 1; }
fi
T="$BUILD/tests/gpu/test_fused_gpu"

run() { # name, timeout, command...
  local name="$1" to="$2"; shift 2
  local t0=$(date +%s)
  timeout "$to" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$? dt=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ]; then note "PASS  $name (${dt}s)"; else note "FAIL  $name rc=$rc (${dt}s)"; tail -15 "$LOGS/$name.log"; fi
  return $rc
}

fails=0
if [[ " $STAGES " == *" tests "* ]]; then
  for w in 1 2 3 4; do
    [ "$w" -gt "$NGPU" ] && { note "SKIP  world $w (only $NGPU GPUs)"; continue; }
    M="$MODE"; [[ " ${FULL_WORLDS:-} " == *" $w "* ]] && M=""
    run "test_mp_w$w" "${TEST_TIMEOUT:-900}" "$T" mp "$w" $M || fails=$((fails+1))
    run "test_sp_w$w" "${TEST_TIMEOUT:-900}" "$T" sp "$w" $M || fails=$((fails+1))
  done
fi
if [[ " $STAGES " == *" sanitize "* ]]; then
  CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  run memcheck_mp2 600 "$CS" --tool memcheck --report-api-errors no --error-exitcode 9 "$T" mp 2 tiny || fails=$((fails+1))
  run racecheck_sp2 600 "$CS" --tool racecheck --report-api-errors no --error-exitcode 9 "$T" sp 2 tiny || fails=$((fails+1))
  run memcheck_w1 300 "$CS" --tool memcheck --report-api-errors no --error-exitcode 9 "$T" sp 1 tiny || fails=$((fails+1))
fi
if [[ " $STAGES " == *" bench "* ]]; then
  B="$BUILD/bench/arnorm-bench"
  run bench 600 "$B" -B cuda -g 2,4 -t 1,8,32,128,512,2048,8192 -H 4096 -d bf16 -G 2 -o "$LOGS/bench.csv" || fails=$((fails+1))
  cat "$LOGS/bench.log"
fi
if [[ " $STAGES " == *" crossover "* ]]; then
  # fused forced (one-shot, then two-shot) against NCCL + norm in the same run, all sizes
  for algo in oneshot twoshot; do
    ARNORM_FUSE_MAX_BYTES=1073741824 ARNORM_ALGO=$algo run "cross_$algo" 300 "$BUILD/bench/arnorm-bench" -B cuda \
      -g 2,3,4 -t 1,8,32,64,128,256,512,1024,2048,4096,8192,16384 -H 4096 -d bf16 -G 1 -n 20 -r 5 \
      -o "$LOGS/cross_$algo.csv" || true
    grep -v '^#' "$LOGS/cross_$algo.log" | head -40
  done
fi
echo "==== summary"; cat "$SUMMARY"; echo "failures: $fails"
exit $fails
