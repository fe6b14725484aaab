# session 10 (x4), prepared in session 9: branch wip/two-shot-walk (.carry/walk: a chunked two-shot call in one launch, built on main 60944aa (kernels of 27b263a)
# with -DARNORM_TWOSHOT_WALK=1 in CMAKE_C_FLAGS). First correctness (the small communicator of test_fused_gpu chunks its calls,
# so the walk kernel runs there), then A/B against main at the chunked sizes, graph and eager (host/empty).
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 ARNORM_TIMEOUT_MS=10000
O=${OUT:-/tmp/out}; mkdir -p $O/ab
T=build-gpu/tests/gpu/test_fused_gpu
t() { local n=$1; shift; local s=$(date +%s)
  env LD_LIBRARY_PATH=$PWD/.carry/walk:$PWD/build-gpu:/usr/lib/x86_64-linux-gnu "$@" > $O/$n.log 2>&1
  echo "test $n rc=$? ($(( $(date +%s) - s ))s) $(tail -1 $O/$n.log)" | tee -a $O/0summary.txt; }
t walk_mp2 timeout 200 $T mp 2 quick
t walk_mp4 timeout 200 $T mp 4 quick
t walk_sp3_units2 ARNORM_TEST_MAX_UNITS=2 timeout 200 $T sp 3 quick
t walk_racecheck_sp2 timeout 200 $(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer) --tool racecheck --report-api-errors no --error-exitcode 9 $T sp 2 tiny
B=build-gpu/bench/arnorm-bench
for r in 1 2; do for l in main walk; do
  lib=$PWD/build-gpu; [ $l = walk ] && lib=$PWD/.carry/walk
  LD_LIBRARY_PATH=$lib:$PWD/build-gpu:/usr/lib/x86_64-linux-gnu timeout 150 $B -B cuda -g 3,4 -t 2048,4096,8192 -H 4096 -d bf16 -G 2 -r 5 -a twoshot > $O/ab/w4_${l}_$r.log 2>&1
  LD_LIBRARY_PATH=$lib:$PWD/build-gpu:/usr/lib/x86_64-linux-gnu timeout 150 $B -B cuda -g 2 -t 8192,16384 -H 4096 -d bf16 -G 2 -r 5 -a twoshot > $O/ab/w2_${l}_$r.log 2>&1
done; done
python3 scripts/ab_table.py $O/ab | tee -a $O/0summary.txt
for f in $O/ab/*_1.log; do echo "-- $(basename $f)"; awk '!/^#/ && $6=="eager" {printf "%s/%s %s %s | ", $1,$4,$13,$14} END {print ""}' $f; done | tee -a $O/0summary.txt
