#!/usr/bin/env bash
# gpu_check.sh - the one-call GPU check, run from the repo root on the 4x H100 machine:
# builds (unless $BUILD holds a build already), then
#   1. GPU test suite at TP 1-4, multi-process (mp) and single-process (sp), with
#      compute-sanitizer memcheck/racecheck and the PyTorch binding test running beside it
#      on the other GPUs (correctness only: nothing is timed while they run); TP2 and TP4
#      mp and racecheck once more with the grid capped (ARNORM_TEST_MAX_UNITS), so small
#      calls take the two-shot's row hand-out;
#   2. arnorm-floors (the machine's graph node, NVLink latency and copy times), arnorm-bench
#      (CUDA-graph replay and stream loop, NCCL + norm baseline in the same run), then
#      ../shared/bench/torch_baseline.py (carried in .carry/) on the same GPUs;
#   3. the Gemma decoder example;
#   reliability: fault tests (killed rank, skipped call, shape mismatch in check mode), a
#      10^6-call soak at TP2 and compute-sanitizer synccheck, beside each other;
#   ab: A/B timing of this build against the libraries in $AB_LIBS ("name=dir ...", e.g.
#      the previous commit's, built into .carry/old) and against settings in $AB_VARIANTS,
#      alternating, graph replay, same GPUs, then the cost of check mode;
# and prints a short table last. Logs and CSVs go to $OUT (device tool) or ./gpu-results.
# On a machine of 2 GPUs the TP3/TP4 runs are skipped (said in the summary) and the lanes
# that run beside each other on 4 GPUs run one after the other; on 1 GPU only TP1 runs (the
# norm path: tests, sanitizers, the benchmark and torch.compile's norm beside it).
#   QUICK=1: quick test matrix everywhere (default: full matrix at TP2 and TP4 mp)
#   TEST_VARIANTS="VAR=value ...": the quick TP2 test again under each setting (after
#     ARNORM_TEST_MAX_UNITS=2, always run)
#   AB_TOKENS, AB_HIDDEN: the ab stage's token list and hidden sizes (default 4096)
#   STAGES="ab tests reliability speed example" (default: tests reliability speed example)
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
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
note "date $(date -u +%FT%TZ) gpus $NGPU $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
nvidia-smi topo -m > "$LOGS/topo.txt" 2>&1
if [ "$NGPU" -ge 4 ]; then WORLDS="2,4"; LANE2="2,3"
elif [ "$NGPU" -ge 2 ]; then WORLDS="2"; LANE2="0,1"
else WORLDS="1"; LANE2="0"; fi
multi() { [ "$NGPU" -ge 2 ] || { note "SKIP  $1: this machine has $NGPU GPU"; return 1; }; }

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

STAGES="${STAGES:-tests reliability speed example}"
has() { [[ " $STAGES " == *" $1 "* ]]; }
fails=0
# ---- 1. correctness: two lanes of two GPUs at once, then all four GPUs
lane01() {
  export CUDA_VISIBLE_DEVICES=0,1
  run test_mp_w2 300 "$T" mp 2 $Q; run test_sp_w2 200 "$T" sp 2 quick
  run test_mp_w1 120 "$T" mp 1 quick; run test_sp_w1 120 "$T" sp 1 quick
  # the grid capped at 2 units first: the two-shot hands its rows out at every size
  for v in ARNORM_TEST_MAX_UNITS=2 ${TEST_VARIANTS:-}; do
    run "test_mp_w2_$v" 200 env "$v" "$T" mp 2 quick
  done
}
sanitizers() { # world: memcheck multi-process, racecheck single-process, tiny matrix
  run memcheck_mp$1 240 "$CS" --tool memcheck --report-api-errors no --error-exitcode 9 "$T" mp "$1" tiny
  run racecheck_sp$1 200 "$CS" --tool racecheck --report-api-errors no --error-exitcode 9 "$T" sp "$1" tiny
  # the tiny matrix's calls have a block per row: a one-unit grid makes the two-shot hand
  # its rows out (forEachRow), the path racecheck must see
  [ "$1" -lt 2 ] || run racecheck_sp${1}_grid1 200 env ARNORM_TEST_MAX_UNITS=1 \
    "$CS" --tool racecheck --report-api-errors no --error-exitcode 9 "$T" sp "$1" tiny
}
lane23() {
  export CUDA_VISIBLE_DEVICES=$LANE2
  sanitizers 2
  run torch_binding_tp2 240 torchrun --nproc-per-node=2 tests/gpu/test_torch_binding.py --quick --no-timing
}
if has tests; then
  if [ "$NGPU" -ge 4 ]; then
    lane01 & lane23 & wait
    run test_mp_w4 300 "$T" mp 4 $Q; run test_sp_w4 200 "$T" sp 4 quick
    run test_mp_w4_grid2 200 env ARNORM_TEST_MAX_UNITS=2 "$T" mp 4 quick
    run test_mp_w3 150 "$T" mp 3 quick; run test_sp_w3 150 "$T" sp 3 quick
    run torch_binding_tp4 240 torchrun --nproc-per-node=4 tests/gpu/test_torch_binding.py --quick --no-timing
  elif [ "$NGPU" -ge 2 ]; then
    lane01; lane23
    note "SKIP  TP3/TP4 tests: this machine has $NGPU GPUs"
  else
    run test_mp_w1 120 "$T" mp 1 quick; run test_sp_w1 120 "$T" sp 1 quick
    sanitizers 1
    note "SKIP  TP2-TP4 tests and the torch binding test: this machine has $NGPU GPU"
  fi
fi

# ---- reliability: faults and the soak on GPUs 0,1; synccheck on the other lane ($LANE2:
# beside them on 4 GPUs, after them on 2)
if has reliability && multi "reliability (faults, soak, synccheck at TP2)"; then
  ( export CUDA_VISIBLE_DEVICES=0,1
    run faults_gpu 120 "$BUILD/tests/gpu/test_faults_gpu"
    run soak_gpu_tp2 300 "$BUILD/tests/gpu/test_soak_gpu" 2 1000000 ) &
  [ "$NGPU" -ge 4 ] || wait
  ( export CUDA_VISIBLE_DEVICES=$LANE2
    run synccheck_sp2 240 "$CS" --tool synccheck --report-api-errors no --error-exitcode 9 "$T" sp 2 tiny ) &
  wait
  grep -h "calls" "$LOGS/soak_gpu_tp2.log" | tee -a "$SUMMARY"
fi

# ---- ab: this build against the libraries in $AB_LIBS ("name=dir ...") and settings in
# $AB_VARIANTS (space-separated VAR=value), alternating (graph replay; NCCL baseline in
# each run)
if has ab; then
  for h in ${AB_HIDDEN:-4096}; do
    ABT="-B cuda -g $WORLDS -t ${AB_TOKENS:-1,8,32,128,512,2048,8192} -H $h -d bf16 -G 1 -r 9"
    for i in 1 2; do
      run abh${h}_default_$i 200 "$B" $ABT
      for l in ${AB_LIBS:-}; do
        LD_LIBRARY_PATH="$ROOT/${l#*=}:$LD_LIBRARY_PATH" run "abh${h}_lib-${l%%=*}_$i" 200 "$B" $ABT
      done
      for v in ${AB_VARIANTS:-}; do run "abh${h}_${v}_$i" 200 env "$v" "$B" $ABT; done
    done
  done
  run checkmode_off 120 "$B" -B cuda -g "${WORLDS##*,}" -t 1,128 -H 4096 -d bf16 -G 0
  run checkmode_on 120 "$B" -B cuda -g "${WORLDS##*,}" -t 1,128 -H 4096 -d bf16 -G 0 -C 1
  echo "==== ab (graph us per call, one column per library or setting, rounds 1/2)"
  python3 scripts/ab_table.py "$LOGS" abh | tee -a "$SUMMARY"
  for f in checkmode_off checkmode_on; do
    echo "-- $f"; awk '!/^#/ && NF>=12 {printf "%s/%s %s %s | ", $1,$4,$6,$7} END {print ""}' "$LOGS/$f.log"
  done | tee -a "$SUMMARY"
fi

# ---- 2. speed: arnorm-bench, then the PyTorch alternatives, same GPUs, nothing else running
if has speed; then
# the machine's own floors first (graph node, NVLink latency and bandwidth, HBM copy)
run floors 120 "$BUILD/bench/arnorm-floors" -r 9
run bench_h4096 400 "$B" -B cuda -g $WORLDS -t 1,8,32,128,512,2048,8192 -H 4096 -d bf16 -G 2 -o "$LOGS/bench.csv"
if [ -f .carry/torch_baseline.py ]; then
  for w in ${WORLDS//,/ }; do
    HIDDEN=4096 run torch_baseline_tp$w 240 torchrun --nproc-per-node=$w .carry/torch_baseline.py
  done
else
  note "SKIP  torch_baseline: .carry/torch_baseline.py not carried"
fi
# ---- 3. the example (before the extra hidden sizes: a call may run out of time)
has example && multi example_tp2 && run example_tp2 200 torchrun --nproc-per-node=2 examples/gemma_decoder_step.py
run bench_h8192 300 "$B" -B cuda -g "${WORLDS##*,}" -t 1,8,32,128,512,2048,8192 -H 8192 -d bf16 -G 1 -o "$LOGS/bench.csv"
run bench_h2304 300 "$B" -B cuda -g $WORLDS -t 1,32,512 -H 2304 -d bf16 -G 1 -o "$LOGS/bench.csv"
run bench_h5376 300 "$B" -B cuda -g $WORLDS -t 1,32,512 -H 5376 -d bf16 -G 1 -o "$LOGS/bench.csv"
fi

[ -f "$LOGS/floors.log" ] && { echo "==== arnorm-floors"; grep -v '^# floor' "$LOGS/floors.log"; }
echo "==== arnorm-bench (bf16, median us per call; base = NCCL all-reduce + norm kernel, same run)"
grep -h -v '^#' "$LOGS"/bench_h4096.log "$LOGS"/bench_h8192.log 2>/dev/null | awk 'NF>=12'
for w in ${WORLDS//,/ }; do echo "==== torch_baseline TP$w"; tail -12 "$LOGS/torch_baseline_tp$w.log" 2>/dev/null; done
echo "==== summary"; cat "$SUMMARY"
fails=$(grep -c '^FAIL' "$SUMMARY")
if [ -n "${OUT:-}" ]; then # the device tool brings back few files: pack the logs
  tar czf /tmp/arnorm-logs.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/arnorm-logs.tgz "$OUT/logs.tgz"
fi
echo "failures: $fails"
exit "$fails"
