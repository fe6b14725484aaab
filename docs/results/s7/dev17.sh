# session 7, call 1 (x2): dynamic two-shot rows (branch) - tests TP1/TP2 quick + A/B against main at H 4096/8192, then the stamps of both builds at TP2
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
QUICK=1 STAGES="tests ab" AB_LIBS="main=.carry/main" AB_HIDDEN="4096 8192" bash scripts/gpu_check.sh > /tmp/gc.txt 2>&1
echo "gpu_check rc=$?"; tail -60 /tmp/gc.txt
for lib in st stw; do
  export ARNORM_WORKSPACE_BYTES=64M LD_LIBRARY_PATH=$PWD/.carry/$lib:$PWD/build-gpu:/usr/lib/x86_64-linux-gnu
  for t in 512 2048 8192; do
    timeout 60 build-gpu/bench/arnorm-bench -B cuda -g 2 -t $t -H 4096 -d bf16 -G 1 -r 5 -a twoshot > /tmp/st.txt 2>&1
    echo "== $lib TP2 T=$t rc=$? $(awk '!/^#/ && NF>=12 && $6=="graph" {print $5, $7, "us"}' /tmp/st.txt)"
    grep "two-shot stamps" /tmp/st.txt | sort | head -4
  done
done
