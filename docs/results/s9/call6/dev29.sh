# session 9, call 6 (x4): arnorm-bench's new host/empty column (the host's cost per eager call over an empty launch's, timed
# right before it in every repeat), three runs, TP2 and TP4, H = 4096
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
O=${OUT:-/tmp/out}; mkdir -p $O
for r in 1 2 3; do
  timeout 100 build-gpu/bench/arnorm-bench -B cuda -g 2,4 -t 1,8,128,512,2048 -H 4096 -d bf16 -G 0 -r 7 > $O/host_$r.log 2>&1 || echo "rc=$?"
  { echo "-- run $r"; grep -h 'empty kernel' $O/host_$r.log
    awk '!/^#/ && $6=="eager" {printf "%s/%s %s %s %s | ", $1,$4,$7,$13,$14} END {print ""}' $O/host_$r.log; } | tee -a $O/0summary.txt
done
