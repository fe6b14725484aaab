# session 11 call 2 (x4): the two-shot's rows in one hand-out. m2 (build-gpu) = tree1 + owned and others' rows
# handed out from one counter, alternating when handed out (the others' rows finished while the all-gather is on
# the link); m2n = the same with owned rows first (no alternation); m2lag = m2 with the others' rows 32 rounds
# behind the owned ones; tree1 = main d0219c5. Tests on m2 first.
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
( export CUDA_VISIBLE_DEVICES=0,1; t mp2_units2 env ARNORM_TEST_MAX_UNITS=2 timeout 200 $T mp 2 quick; t mp2 timeout 200 $T mp 2 quick
  t m2n_mp2_units2 env LD_LIBRARY_PATH=$PWD/.carry/m2n:$LD_LIBRARY_PATH ARNORM_TEST_MAX_UNITS=2 timeout 200 $T mp 2 quick
  t m2lag_mp2_units2 env LD_LIBRARY_PATH=$PWD/.carry/m2lag:$LD_LIBRARY_PATH ARNORM_TEST_MAX_UNITS=2 timeout 200 $T mp 2 quick ) &
( export CUDA_VISIBLE_DEVICES=2,3; t racecheck_sp2_units2 env ARNORM_TEST_MAX_UNITS=2 timeout 200 $CS --tool racecheck --report-api-errors no --error-exitcode 9 $T sp 2 tiny
  t memcheck_sp2_units2 env ARNORM_TEST_MAX_UNITS=2 timeout 200 $CS --tool memcheck --report-api-errors no --error-exitcode 9 $T sp 2 tiny ) &
wait
t mp4_units2 env ARNORM_TEST_MAX_UNITS=2 timeout 200 $T mp 4 quick
t mp4 timeout 200 $T mp 4 quick
t m2lag_mp4_units2 env LD_LIBRARY_PATH=$PWD/.carry/m2lag:$LD_LIBRARY_PATH ARNORM_TEST_MAX_UNITS=2 timeout 200 $T mp 4 quick
t sp3_units3 env ARNORM_TEST_MAX_UNITS=3 timeout 200 $T sp 3 quick
B=build-gpu/bench/arnorm-bench
lib() { case $1 in m2) echo $PWD/build-gpu;; *) echo $PWD/.carry/$1;; esac; }
for r in 1 2 3; do
  for l in tree1 m2 m2n m2lag; do
    L="$(lib $l):$PWD/build-gpu:/usr/lib/x86_64-linux-gnu"
    LD_LIBRARY_PATH=$L timeout 150 $B -B cuda -g 2,4 -t 64,128,256,512,2048,8192 -H 4096 -d bf16 -G 1 -r 5 > $O/ab/s_${l}_$r.log 2>&1
    LD_LIBRARY_PATH=$L timeout 150 $B -B cuda -g 3,4 -t 128,512,2048 -H 8192 -d bf16 -G 1 -r 5 > $O/ab/w_${l}_$r.log 2>&1
  done
  echo "round $r done $(date -u +%T) (${SECONDS}s)" >> $O/0summary.txt
  [ $SECONDS -gt 430 ] && { echo "stopping after round $r: time" >> $O/0summary.txt; break; }
done
python3 scripts/ab_table.py $O/ab >> $O/0summary.txt
cat $O/0summary.txt
cd $O && tar czf /tmp/logs.tgz --exclude=0summary.txt . && find . -name '*.log' -delete && rm -rf ab && mv /tmp/logs.tgz $O/
