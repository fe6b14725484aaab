# session 7, call 3 (x4): dynamic rows, final form: tests TP1-4 quick + sanitizers, A/B against main (H 4096), reliability, speed (floors, bench, torch baselines), example
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
QUICK=1 STAGES="tests ab reliability speed example" AB_LIBS="main=.carry/main" AB_HIDDEN="4096" bash scripts/gpu_check.sh > /tmp/gc.txt 2>&1
echo "gpu_check rc=$?"; sed -n '/==== summary/,$p' /tmp/gc.txt | grep -v "^PASS"; sed -n '/==== arnorm-bench/,/==== summary/p' /tmp/gc.txt | head -80
