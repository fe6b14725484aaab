# session 12 call 6 (1x H200): normRowKernel with two chunks a thread for rows of 1025-2048 chunks (H 8200-16384),
# against main12 (= fb0f47d, those rows in normKernel); tests first; torch.compile's norm at H = 16384 after.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 ARNORM_TIMEOUT_MS=10000
O=${OUT:-/tmp/out}; mkdir -p $O/ab $O/x
T=build-gpu/tests/gpu/test_fused_gpu
export LD_LIBRARY_PATH=$PWD/build-gpu:/usr/lib/x86_64-linux-gnu
t() { local n=$1; shift; local s=$(date +%s)
  "$@" > $O/x/$n.log 2>&1
  echo "test $n rc=$? ($(( $(date +%s) - s ))s) $(tail -1 $O/x/$n.log)" >> $O/0summary.txt; }
nvidia-smi -L > $O/x/gpus.txt; date -u +%FT%TZ >> $O/0summary.txt
t mp1 timeout 200 $T mp 1 quick
t sp1 timeout 200 $T sp 1 quick
B=build-gpu/bench/arnorm-bench
lib() { case $1 in new) echo $PWD/build-gpu;; *) echo $PWD/.carry/$1;; esac; }
for r in 1 2; do
  for l in main12 new; do
    L="$(lib $l):$PWD/build-gpu:/usr/lib/x86_64-linux-gnu"
    for h in 16384 12288; do
      LD_LIBRARY_PATH=$L timeout 100 $B -B cuda -g 1 -t 1,32,512,2048,8192 -H $h -d bf16 -G 1 -r 7 > $O/ab/h${h}_${l}_$r.log 2>&1
    done
    LD_LIBRARY_PATH=$L timeout 100 $B -B cuda -g 1 -t 1,8192 -H 4096 -d bf16 -G 1 -r 7 > $O/ab/h4096_${l}_$r.log 2>&1
  done
  echo "round $r done $(date -u +%T) (${SECONDS}s)" >> $O/0summary.txt
done
HIDDEN=16384 timeout 150 torchrun --nproc-per-node=1 .carry/torch_baseline.py > $O/x/torch_16384.txt 2>&1
python3 scripts/ab_table.py $O/ab >> $O/0summary.txt
grep -E "^ +T |^ +[0-9]+ " $O/x/torch_16384.txt | awk '{print "torch H=16384", $1, $2}' >> $O/0summary.txt
echo "wall ${SECONDS}s" >> $O/0summary.txt
cat $O/0summary.txt
cd $O && tar czf logs.tgz x ab && rm -rf x ab
