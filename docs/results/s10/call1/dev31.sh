# session 10 (x4), prepared in session 9: the two-shot's arrivals from inside (branch wip/stamps-arrival, .carry/sta = stamps build:
# per call, the earliest / latest thread to see its first chunk of the reduce-scatter and of the all-gather). Wide rows take
# 2.9-5.1 us a hop against 2.0-2.6 at 4096 (version 8): is it the link's fill (latest - earliest arrival) or what follows?
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
O=${OUT:-/tmp/out}; mkdir -p $O
B=build-gpu/bench/arnorm-bench
for h in 4096 8192; do for g in 2 4; do for t in 16 128; do
  LD_LIBRARY_PATH=$PWD/.carry/sta:$PWD/build-gpu:/usr/lib/x86_64-linux-gnu timeout 60 $B -B cuda -g $g -t $t -H $h -d bf16 -G 1 -r 3 -a twoshot > $O/st_${h}_${g}_$t.log 2>&1
  { echo "== H=$h TP$g T=$t rc=$? $(awk '!/^#/ && NF>=12 && $6=="graph" {print $7, "us"}' $O/st_${h}_${g}_$t.log)"
    grep -h "two-shot stamps" $O/st_${h}_${g}_$t.log | sort | head -4; } | tee -a $O/0summary.txt
done; done; done
