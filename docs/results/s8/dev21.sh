# session 8, call 1 (x4 if lent, else x2): first run of the grid-capped tests (ARNORM_TEST_MAX_UNITS), A/B of where the two-shot
# announces now that rows are handed out (la0: at its start always; la4: after the pushes from 1024 rows at TP3-4 too), stamps at TP2/TP4
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
QUICK=1 STAGES="tests ab" AB_LIBS="la0=.carry/la0 la4=.carry/la4 c1=.carry/c1" AB_HIDDEN="4096" AB_TOKENS="512,1024,2048,4096,8192" bash scripts/gpu_check.sh > /tmp/gc.txt 2>&1
echo "gpu_check rc=$?"; sed -n '/==== summary/,$p' /tmp/gc.txt
