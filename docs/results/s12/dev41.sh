# session 12 call 2 (1x H200): normRowKernel (one row per block, 32 registers, 4 blocks of 512 an SM) for the
# norm path: tests on rows4 (= build-gpu), then A/B tree1 (= main) / rows4 / rows3 (ptxas asked for 3 blocks),
# TP1 graph, bf16 H 4096/8192/2304/5376 and fp32 4096, 3 rounds; torch.compile's norm same call; ncu of rows4.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 ARNORM_TIMEOUT_MS=10000
O=${OUT:-/tmp/out}; mkdir -p $O/ab $O/x
T=build-gpu/tests/gpu/test_fused_gpu
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
export LD_LIBRARY_PATH=$PWD/build-gpu:/usr/lib/x86_64-linux-gnu
t() { local n=$1; shift; local s=$(date +%s)
  "$@" > $O/x/$n.log 2>&1
  echo "test $n rc=$? ($(( $(date +%s) - s ))s) $(tail -1 $O/x/$n.log)" >> $O/0summary.txt; }
nvidia-smi -L > $O/x/gpus.txt; date -u +%FT%TZ >> $O/0summary.txt
t mp1 timeout 200 $T mp 1 quick
t sp1 timeout 200 $T sp 1 quick
t memcheck_sp1 timeout 200 $CS --tool memcheck --report-api-errors no --error-exitcode 9 $T sp 1 tiny
t racecheck_sp1 timeout 200 $CS --tool racecheck --report-api-errors no --error-exitcode 9 $T sp 1 tiny
B=build-gpu/bench/arnorm-bench
lib() { case $1 in rows4) echo $PWD/build-gpu;; *) echo $PWD/.carry/$1;; esac; }
for r in 1 2 3; do
  for l in tree1 rows4 rows3; do
    L="$(lib $l):$PWD/build-gpu:/usr/lib/x86_64-linux-gnu"
    for h in 4096 8192 2304 5376; do
      LD_LIBRARY_PATH=$L timeout 100 $B -B cuda -g 1 -t 1,8,32,128,512,2048,8192 -H $h -d bf16 -G 1 -r 7 > $O/ab/h${h}_${l}_$r.log 2>&1
    done
    LD_LIBRARY_PATH=$L timeout 100 $B -B cuda -g 1 -t 1,128,2048,8192 -H 4096 -d fp32 -G 1 -r 7 > $O/ab/f32_${l}_$r.log 2>&1
  done
  echo "round $r done $(date -u +%T) (${SECONDS}s)" >> $O/0summary.txt
  [ $SECONDS -gt 400 ] && { echo "stopping after round $r: time" >> $O/0summary.txt; break; }
done
HIDDEN=4096 timeout 100 torchrun --nproc-per-node=1 .carry/torch_baseline.py > $O/x/torch_4096.txt 2>&1
HIDDEN=8192 timeout 100 torchrun --nproc-per-node=1 .carry/torch_baseline.py > $O/x/torch_8192.txt 2>&1
for t in 8192 512; do
  timeout 60 ncu --clock-control none --section SpeedOfLight --section Occupancy --section InstructionStats --section LaunchStats --launch-skip 5 --launch-count 1 -k regex:normRow $B -B cuda -g 1 -t $t -H 4096 -d bf16 -G 0 -r 1 -n 10 -w 2 > $O/x/ncu_rows4_$t.txt 2>&1
  grep -E "Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Executed Instructions  " $O/x/ncu_rows4_$t.txt | sed "s/^/ncu $t /" >> $O/0summary.txt
done
python3 scripts/ab_table.py $O/ab >> $O/0summary.txt
for h in 4096 8192; do grep -E "^ +T |^ +[0-9]+ " $O/x/torch_$h.txt | awk -v h=$h '{print "torch H=" h, $1, $2}' >> $O/0summary.txt; done
echo "wall ${SECONDS}s" >> $O/0summary.txt
cat $O/0summary.txt
cd $O && tar czf logs.tgz x ab && rm -rf x ab
