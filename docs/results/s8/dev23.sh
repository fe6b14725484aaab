# session 8, call 2: (1) c1 (rows per two-shot launch from the exact bound) against main at H=8192, and eager host cost at TP4 2048;
# (2) the one-shot / two-shot crossover by shape (forced, graph): does H=8192 T=32 TP4 (two-shot 11.6 us) win as a one-shot?
# (3) stamps of the two-shot at TP4 with 8M / 16M / 64M workspaces
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
O=${OUT:-/tmp/out}; mkdir -p $O
STAGES="ab" AB_LIBS="c1=.carry/c1" AB_HIDDEN="8192" AB_TOKENS="512,1024,2048,4096,8192" bash scripts/gpu_check.sh > $O/gc.txt 2>&1
echo "gpu_check rc=$?"; sed -n '/^-- /,$p' $O/gc.txt
B=build-gpu/bench/arnorm-bench
run() { # name lib args...
  local n=$1 lib=$2; shift 2
  LD_LIBRARY_PATH=$lib:$PWD/build-gpu:/usr/lib/x86_64-linux-gnu timeout 120 $B -B cuda "$@" > $O/$n.log 2>&1
  echo "== $n rc=$? :: $(awk '!/^#/ && NF>=12 {printf "%s/%s %s %s %s | ", $1, $4, $5, $6, $7}' $O/$n.log)"
}
# (1b) eager host cost at TP4 2048 x 4096: main = two launches, c1 = one
for r in 1 2; do
  run eager_main_$r $PWD/.carry/main -g 4 -t 2048 -H 4096 -d bf16 -G 2 -r 5
  run eager_c1_$r $PWD/.carry/c1 -g 4 -t 2048 -H 4096 -d bf16 -G 2 -r 5
done
grep -h 'empty kernel\|host' $O/eager_*_1.log | head -4
# (2) crossover sweep, two alternating rounds
for r in 1 2; do for a in oneshot twoshot; do
  run x_h4096_${a}_$r $PWD/build-gpu -g 2,3,4 -t 16,32,48,64,96,128,192,256 -H 4096 -d bf16 -G 1 -r 5 -a $a
  run x_h8192_${a}_$r $PWD/build-gpu -g 2,3,4 -t 4,8,16,24,32,48,64,128 -H 8192 -d bf16 -G 1 -r 5 -a $a
done; done
# (3) stamps of the two-shot at TP4 (st7 = main with -DARNORM_KERNEL_STAMPS)
stamp() { # ws world tokens
  LD_LIBRARY_PATH=$PWD/.carry/st7:$PWD/build-gpu:/usr/lib/x86_64-linux-gnu ARNORM_WORKSPACE_BYTES=$1 \
    timeout 60 $B -B cuda -g $2 -t $3 -H 4096 -d bf16 -G 1 -r 5 -a twoshot > $O/st_$1_$2_$3.log 2>&1
  echo "== st7 ws=$1 TP$2 T=$3 rc=$? $(awk '!/^#/ && NF>=12 && $6=="graph" {print $5, $7, "us"}' $O/st_$1_$2_$3.log)"
  grep "two-shot stamps" $O/st_$1_$2_$3.log | sort | head -4
}
for ws in 8M 16M 64M; do for t in 2048 4096; do stamp $ws 4 $t; done; done
