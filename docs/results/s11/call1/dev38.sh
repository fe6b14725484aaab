# session 11 call 1 (x4): tree1 = main + rowTree with one barrier (every warp sums the warp sums; halves of
# shared memory alternate by row) against base = main 8377b1c's library; tests + racecheck on tree1 first.
# Set u: the two-shot with the grid capped (ARNORM_TEST_MAX_UNITS=32/64/128, tree1): rows handed out in order, so
# the reduce-scatter's rows arrive one after the other and the all-gather can start while it runs.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 ARNORM_TIMEOUT_MS=10000
O=${OUT:-/tmp/out}; mkdir -p $O/ab
T=build-gpu/tests/gpu/test_fused_gpu
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
export LD_LIBRARY_PATH=$PWD/build-gpu:/usr/lib/x86_64-linux-gnu
t() { local n=$1; shift; local s=$(date +%s)
  "$@" > $O/$n.log 2>&1
  echo "test $n rc=$? ($(( $(date +%s) - s ))s) $(tail -1 $O/$n.log)" >> $O/0summary.txt; }
nvidia-smi -L > $O/gpus.txt; date -u +%FT%TZ >> $O/0summary.txt
( export CUDA_VISIBLE_DEVICES=0,1; t mp2_units2 env ARNORM_TEST_MAX_UNITS=2 timeout 200 $T mp 2 quick; t sp1 timeout 120 $T sp 1 quick ) &
( export CUDA_VISIBLE_DEVICES=2,3; t racecheck_sp2_units2 env ARNORM_TEST_MAX_UNITS=2 timeout 200 $CS --tool racecheck --report-api-errors no --error-exitcode 9 $T sp 2 tiny
  t racecheck_sp2 timeout 200 $CS --tool racecheck --report-api-errors no --error-exitcode 9 $T sp 2 tiny
  t racecheck_sp1 timeout 200 $CS --tool racecheck --report-api-errors no --error-exitcode 9 $T sp 1 tiny ) &
wait
t mp4 timeout 200 $T mp 4 quick
t sp3 timeout 200 $T sp 3 quick
B=build-gpu/bench/arnorm-bench
lib() { case $1 in tree1) echo $PWD/build-gpu;; *) echo $PWD/.carry/$1;; esac; }
for r in 1 2 3; do
  for l in base tree1; do
    L="$(lib $l):$PWD/build-gpu:/usr/lib/x86_64-linux-gnu"
    LD_LIBRARY_PATH=$L timeout 150 $B -B cuda -g 2,4 -t 1,8,32,128,512,2048 -H 4096 -d bf16 -G 1 -r 7 > $O/ab/s_${l}_$r.log 2>&1
    LD_LIBRARY_PATH=$L timeout 150 $B -B cuda -g 2,4 -t 1,8,32,128 -H 8192 -d bf16 -G 1 -r 7 > $O/ab/w_${l}_$r.log 2>&1
    LD_LIBRARY_PATH=$L CUDA_VISIBLE_DEVICES=0 timeout 150 $B -B cuda -g 1 -t 1,128,2048,8192 -H 4096 -d bf16 -G 1 -r 7 > $O/ab/n_${l}_$r.log 2>&1
  done
  for u in 0 32 64 128; do
    env ARNORM_TEST_MAX_UNITS=$u timeout 150 $B -B cuda -g 2,4 -t 128,512,2048 -H 4096 -d bf16 -G 1 -r 5 > $O/ab/u_u${u}_$r.log 2>&1
  done
  echo "round $r done $(date -u +%T) (${SECONDS}s)" >> $O/0summary.txt
  [ $SECONDS -gt 420 ] && { echo "stopping after round $r: time" >> $O/0summary.txt; break; }
done
python3 scripts/ab_table.py $O/ab >> $O/0summary.txt
cat $O/0summary.txt
cd $O && tar czf /tmp/logs.tgz --exclude=0summary.txt . && find . -name '*.log' -delete && rm -rf ab && mv /tmp/logs.tgz $O/
