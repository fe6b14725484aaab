# session 7, call 2 (x4): dynamic rows after the racecheck fix: tests TP1-4 quick + sanitizers + A/B against main at H 4096/8192
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
QUICK=1 STAGES="tests ab" AB_LIBS="main=.carry/main" AB_HIDDEN="4096 8192" bash scripts/gpu_check.sh > /tmp/gc.txt 2>&1
echo "gpu_check rc=$?"; sed -n '/==== summary/,$p' /tmp/gc.txt
