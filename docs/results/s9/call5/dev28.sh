# session 9, call 5 (x4): (1) la = main + the two-shot's late announcement (after the reduce-scatter pushes) at TP3-8 for calls of
# >= 1024 rows too (TP2 only in main; session 6 measured +4 us at TP4 2048 before the rows were handed out), three alternating rounds;
# (2) main's eager host cost three times (call 4 read TP2 1.08-1.24x and TP4 1.18-1.32x an empty launch up to 512 tokens, session 8 <= 0.91x / 1.19x)
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
O=${OUT:-/tmp/out}; mkdir -p $O/ab $O/host
B=build-gpu/bench/arnorm-bench
run() { # name libdir args...
  local n=$1 lib=$2; shift 2
  LD_LIBRARY_PATH=$lib:$PWD/build-gpu:/usr/lib/x86_64-linux-gnu timeout 150 $B -B cuda "$@" > $O/$n.log 2>&1 || echo "bench $n rc=$?"
}
for r in 1 2 3; do
  run ab/l_main_$r $PWD/build-gpu -g 3,4 -t 1024,2048,4096 -H 4096 -d bf16 -G 1 -r 5 -a twoshot
  run ab/l_la_$r $PWD/.carry/la -g 3,4 -t 1024,2048,4096 -H 4096 -d bf16 -G 1 -r 5 -a twoshot
done
# .carry/ab_table.py is now scripts/ab_table.py
python3 .carry/ab_table.py $O/ab | tee $O/0summary.txt
for r in 1 2 3; do
  run host/h_$r $PWD/build-gpu -g 2,4 -t 1,8,128,512,2048 -H 4096 -d bf16 -G 2 -r 5
  { echo "-- host round $r"; grep -h 'empty kernel' $O/host/h_$r.log
    awk '!/^#/ && $6=="eager" {printf "%s/%s %s %s | ", $1,$4,$7,$13} END {print ""}' $O/host/h_$r.log; } | tee -a $O/0summary.txt
done
