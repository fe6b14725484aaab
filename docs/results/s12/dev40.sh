# session 12 call 1 (1x H200): ncu of arnorm's norm kernel (normKernelPipelined) and torch.compile's norm
# at 512 and 8192 x 4096 bf16; inductor's kernel source; TP1 timings arnorm vs torch.compile.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 ARNORM_TIMEOUT_MS=10000
O=${OUT:-/tmp/out}; mkdir -p $O/x
export LD_LIBRARY_PATH=$PWD/build-gpu:/usr/lib/x86_64-linux-gnu
B=build-gpu/bench/arnorm-bench
nvidia-smi -L > $O/x/gpus.txt; date -u +%FT%TZ >> $O/0summary.txt
NCU="ncu --clock-control none --target-processes all --set full --launch-skip 5 --launch-count 1"
for t in 8192 512; do
  timeout 120 $NCU -k regex:normKernel $B -B cuda -g 1 -t $t -H 4096 -d bf16 -G 0 -r 1 -n 10 -w 2 > $O/x/ncu_arnorm_$t.txt 2>&1
  echo "ncu arnorm $t rc=$?" >> $O/0summary.txt
  T=$t timeout 200 $NCU -k regex:triton python3 .carry/tnorm.py > $O/x/ncu_torch_$t.txt 2>&1
  echo "ncu torch $t rc=$?" >> $O/0summary.txt
done
T=8192 TORCH_LOGS=output_code timeout 120 python3 .carry/tnorm.py > $O/x/inductor_8192.txt 2>&1
T=512 TORCH_LOGS=output_code timeout 120 python3 .carry/tnorm.py > $O/x/inductor_512.txt 2>&1
for r in 1 2; do
  timeout 100 $B -B cuda -g 1 -t 1,32,128,512,2048,8192 -H 4096 -d bf16 -G 1 -r 7 > $O/x/bench_4096_$r.txt 2>&1
  timeout 100 $B -B cuda -g 1 -t 1,32,128,512,2048,8192 -H 8192 -d bf16 -G 1 -r 7 > $O/x/bench_8192_$r.txt 2>&1
done
HIDDEN=4096 timeout 200 torchrun --nproc-per-node=1 .carry/torch_baseline.py > $O/x/torch_4096.txt 2>&1
HIDDEN=8192 timeout 200 torchrun --nproc-per-node=1 .carry/torch_baseline.py > $O/x/torch_8192.txt 2>&1
for f in $O/x/ncu_*.txt; do echo "== $f" >> $O/0summary.txt
  grep -E "^  [a-zA-Z_].*\(|Duration|DRAM Throughput|Memory Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Size|Grid Size|Waves Per SM|Stall" $f | head -30 >> $O/0summary.txt; done
grep -E "^ *[0-9]+ " $O/x/bench_4096_1.txt | head -20 >> $O/0summary.txt
tail -30 $O/x/torch_4096.txt >> $O/0summary.txt
echo "wall ${SECONDS}s" >> $O/0summary.txt
cat $O/0summary.txt
cd $O && tar czf x.tgz x && rm -rf x
