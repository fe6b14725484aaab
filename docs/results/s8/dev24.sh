# session 8, call 3: the final build (one-shot / two-shot switch by rank count and row width, from call 2's crossovers):
# quick tests, sanitizers, reliability, speed (arnorm-bench + torch_baseline.py), example
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
QUICK=1 STAGES="tests reliability speed example" bash scripts/gpu_check.sh > /tmp/gc.txt 2>&1
echo "gpu_check rc=$?"; sed -n '/==== summary/,$p' /tmp/gc.txt | tail -60
