# session 10 call 4 (x4): walk3 = wip/two-shot-walk + the barrier on a line of its own (its polls shared the line of the
# row hand-out's atomics) and a release-add in place of fence + atomic; line = main with the row hand-out's counters
# (ctrl->rowNext) on a line of their own, away from the state and the `failed` word the spin loops read.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 ARNORM_TIMEOUT_MS=10000
O=${OUT:-/tmp/out}; mkdir -p $O/ab
T=build-gpu/tests/gpu/test_fused_gpu
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
t() { local n=$1 l=$2; shift 2; local s=$(date +%s)
  env LD_LIBRARY_PATH=$PWD/.carry/$l:$PWD/build-gpu:/usr/lib/x86_64-linux-gnu "$@" > $O/$n.log 2>&1
  echo "test $n rc=$? ($(( $(date +%s) - s ))s) $(tail -1 $O/$n.log)" | tee -a $O/0summary.txt; }
t walk3_mp4 walk3 timeout 200 $T mp 4 quick
t walk3_racecheck_sp2 walk3 timeout 200 $CS --tool racecheck --report-api-errors no --error-exitcode 9 $T sp 2 tiny
t line_mp4 line timeout 200 $T mp 4 quick
B=build-gpu/bench/arnorm-bench
lib() { case $1 in main) echo $PWD/build-gpu;; *) echo $PWD/.carry/$1;; esac; }
for r in 1 2; do
  for l in main walk3 line; do
    LD_LIBRARY_PATH=$(lib $l):$PWD/build-gpu:/usr/lib/x86_64-linux-gnu timeout 150 $B -B cuda -g 3,4 -t 2048,4096 -H 4096 -d bf16 -G 2 -r 5 -a twoshot > $O/ab/w4_${l}_$r.log 2>&1
  done
  for l in main line; do
    LD_LIBRARY_PATH=$(lib $l):$PWD/build-gpu:/usr/lib/x86_64-linux-gnu timeout 150 $B -B cuda -g 2,4 -t 64,128,512,2048,8192 -H 4096 -d bf16 -G 1 -r 9 > $O/ab/ln_${l}_$r.log 2>&1
  done
done
python3 scripts/ab_table.py $O/ab | tee -a $O/0summary.txt
for f in $O/ab/w4_*_1.log; do echo "-- $(basename $f)"; awk '!/^#/ && $6=="eager" {printf "%s/%s %s %s | ", $1,$4,$13,$14} END {print ""}' $f; done | tee -a $O/0summary.txt
cd $O && tar czf /tmp/logs.tgz --exclude=0summary.txt . && find . -name '*.log' -delete && rm -rf ab && mv /tmp/logs.tgz $O/
