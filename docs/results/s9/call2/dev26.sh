# session 9, call 2 (x4): A/B at few-row two-shot sizes. main = session 8's kernels; tl = branch wip/twoshot-few-rows's index math +
# late announcement for calls of <= 1 MiB; tl5 = tl + the 512-thread two-shot build for rows of <= 512 slots at any row count.
# Plus the one-shot (main) at the same sizes: the crossover for the switch table.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
O=${OUT:-/tmp/out}; mkdir -p $O
B=build-gpu/bench/arnorm-bench
run() { # name lib args...
  local n=$1 lib=$2; shift 2
  LD_LIBRARY_PATH=$lib:$PWD/build-gpu:/usr/lib/x86_64-linux-gnu timeout 150 $B -B cuda "$@" > $O/$n.log 2>&1
  echo "== $n rc=$? :: $(awk '!/^#/ && NF>=12 {printf "%s/%s/%s %s %s | ", $1, $2, $4, $5, $7}' $O/$n.log)"
}
for r in 1 2; do
  for l in main tl tl5; do
    run ts4_${l}_$r $PWD/.carry/$l -g 2,3,4 -t 16,32,48,64,96,128,192,256,512,1024,2048 -H 4096 -d bf16 -G 1 -r 5 -a twoshot
  done
  for l in main tl; do
    run ts8_${l}_$r $PWD/.carry/$l -g 2,3,4 -t 4,8,16,24,32,48,64,128 -H 8192 -d bf16 -G 1 -r 5 -a twoshot
  done
  run os4_$r $PWD/.carry/main -g 2,3,4 -t 16,32,48,64,96,128,192,256 -H 4096 -d bf16 -G 1 -r 5 -a oneshot
  run os8_$r $PWD/.carry/main -g 2,3,4 -t 4,8,16,24,32,48,64,128 -H 8192 -d bf16 -G 1 -r 5 -a oneshot
done
for l in tl tl5; do run big_$l $PWD/.carry/$l -g 2,4 -t 4096,8192 -H 4096 -d bf16 -G 1 -r 5 -a twoshot; done
