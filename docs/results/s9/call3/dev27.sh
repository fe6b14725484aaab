# session 9, call 3 (x4): rows of > 512 slots (H > 4096) in the 512-thread build with two slots a thread (V = 2) against the
# 1024-thread build. m9 = main's defaults (V = 2 off); v2 = V = 2 for every call of such rows (one-shot after the cluster split's
# 16 rows); v2ns = V = 2 also in place of the cluster split. Tests of v2ns first (the V = 2 paths at every wide shape), then A/B.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 ARNORM_TIMEOUT_MS=10000
O=${OUT:-/tmp/out}; mkdir -p $O/ab
T=build-gpu/tests/gpu/test_fused_gpu
t() { local n=$1; shift; local s=$(date +%s)
  env LD_LIBRARY_PATH=$PWD/.carry/v2ns:$PWD/build-gpu:/usr/lib/x86_64-linux-gnu "$@" > $O/$n.log 2>&1
  echo "test $n rc=$? ($(( $(date +%s) - s ))s) $(tail -1 $O/$n.log)"; }
t v2ns_mp2 timeout 200 $T mp 2 quick
t v2ns_mp4 timeout 200 $T mp 4 quick
t v2ns_mp3_units2 ARNORM_TEST_MAX_UNITS=2 timeout 200 $T mp 3 quick
B=build-gpu/bench/arnorm-bench
run() { # name lib args...
  local n=$1 lib=$2; shift 2
  LD_LIBRARY_PATH=$PWD/.carry/$lib:$PWD/build-gpu:/usr/lib/x86_64-linux-gnu timeout 150 $B -B cuda "$@" > $O/ab/${n}_${lib}_$r.log 2>&1 || echo "bench $n $lib rc=$?"
}
for r in 1 2; do for l in m9 v2 v2ns; do
  run ts8 $l -g 2,3,4 -t 4,8,16,32,64,128,512,2048 -H 8192 -d bf16 -G 1 -r 5 -a twoshot
  run os8 $l -g 2,3,4 -t 1,4,8,16,24,32,64,128 -H 8192 -d bf16 -G 1 -r 5 -a oneshot
  run au5 $l -g 2,4 -t 1,8,32,128,512,2048 -H 5376 -d bf16 -G 1 -r 5
done; done
# .carry/ab_table.py is now scripts/ab_table.py
python3 .carry/ab_table.py $O/ab | tee $O/0summary.txt
