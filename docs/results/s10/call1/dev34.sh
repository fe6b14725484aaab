# session 10 call 1 (x4): dev33 (two-shot walk: tests then A/B vs main) + dev31 (arrival stamps), logs tarred (tool returns 8 files).
set -u
O=${OUT:-/tmp/out}; mkdir -p $O
s=$(date +%s)
bash .carry/dev33.sh
echo "dev33 done in $(( $(date +%s) - s ))s" | tee -a $O/0summary.txt
bash .carry/dev31.sh
echo "all done in $(( $(date +%s) - s ))s" | tee -a $O/0summary.txt
cd $O && tar czf logs.tgz --exclude=0summary.txt --exclude=logs.tgz . && find . -name '*.log' -delete && rm -rf ab
