# session 7, call 4 (x4): TP3/TP4 two-shot (dynamic rows) beyond the 16 MiB budget: workspace 8M (default) / 16M / 64M, against NCCL + norm in the same run, two alternating rounds
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 ARNORM_TIMEOUT_MS=10000
export LD_LIBRARY_PATH=$PWD/build-gpu:/usr/lib/x86_64-linux-gnu
mkdir -p $OUT/l
for round in 1 2; do for ws in 8M 16M 64M; do
  for h in 4096 8192; do
    [ $h = 4096 ] && t=2048,4096,8192 || t=1024,2048,4096
    f=$OUT/l/ws${ws}_h${h}_$round.txt
    ARNORM_WORKSPACE_BYTES=$ws timeout 100 build-gpu/bench/arnorm-bench -B cuda -g 3,4 -t $t -H $h -d bf16 -G 1 -r 7 -a twoshot > $f 2>&1
    echo "ws=$ws H=$h r$round rc=$? $(awk '!/^#/ && NF>=12 && $6=="graph" {printf "%s/%s %s %s %s | ", $1,$4,$5,$7,$11}' $f)"
  done
done; done
