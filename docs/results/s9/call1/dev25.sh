# session 9, call 1 (x4): A/B of branch wip/twoshot-few-rows (tw: push-path index math without 64-bit modulo; twl: the same + announce
# after the pushes below 1024 rows) against main, both algorithms as the dispatcher picks them and the two-shot forced at few rows
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
O=${OUT:-/tmp/out}; mkdir -p $O
B=build-gpu/bench/arnorm-bench
run() { # name lib args...
  local n=$1 lib=$2; shift 2
  LD_LIBRARY_PATH=$lib:$PWD/build-gpu:/usr/lib/x86_64-linux-gnu timeout 120 $B -B cuda "$@" > $O/$n.log 2>&1
  echo "== $n rc=$? :: $(awk '!/^#/ && NF>=12 {printf "%s/%s/%s %s %s | ", $1, $2, $4, $5, $7}' $O/$n.log)"
}
for r in 1 2; do for l in main tw twl; do
  run ts_h4096_${l}_$r $PWD/.carry/$l -g 2,3,4 -t 16,64,128,256,512,2048 -H 4096 -d bf16 -G 1 -r 5 -a twoshot
  run ts_h8192_${l}_$r $PWD/.carry/$l -g 2,4 -t 8,32,64,128,512 -H 8192 -d bf16 -G 1 -r 5 -a twoshot
done; done
# then, if tw/twl win: build-gpu from the branch, QUICK=1 STAGES="tests" bash scripts/gpu_check.sh, and the crossover sweep (dev23.sh part 2)
