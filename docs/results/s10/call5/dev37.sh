# session 10 call 5 (x4): where the one-launch two-shot's ~5 us a chunk go. Stamps builds (branch wip/stamps-chunks on main,
# and wip/two-shot-walk walk3 + the same print): ARNORM_STAMPS_GROUP = chunks a call, so one line per chunk. main: each chunk
# its own launch (ns after that launch's first block); walk: every chunk's ns after the kernel's first block.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
O=${OUT:-/tmp/out}; mkdir -p $O
B=build-gpu/bench/arnorm-bench
for cfg in "3 2048 2" "4 2048 2" "3 4096 3" "4 4096 3"; do set -- $cfg
  for l in scm scw; do
    ARNORM_STAMPS_GROUP=$3 LD_LIBRARY_PATH=$PWD/.carry/$l:$PWD/build-gpu:/usr/lib/x86_64-linux-gnu timeout 90 $B -B cuda -g $1 -t $2 -H 4096 -d bf16 -G 1 -r 3 -a twoshot > $O/sc_${l}_$1_$2.log 2>&1
    { echo "== $l TP$1 T=$2 rc=$? $(awk '!/^#/ && NF>=12 && $6=="graph" {print $7, "us"}' $O/sc_${l}_$1_$2.log)"
      grep -h "two-shot stamps" $O/sc_${l}_$1_$2.log | sort | sed 's/ns after the first block.s start (median), first \/ last block://'; } | tee -a $O/0summary.txt
  done
done
cd $O && tar czf /tmp/logs.tgz --exclude=0summary.txt . && find . -name '*.log' -delete && mv /tmp/logs.tgz $O/
