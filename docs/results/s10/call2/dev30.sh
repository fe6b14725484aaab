# session 10, call 1 (x4), prepared in session 9: where the Lamport kernels let their PDL successor launch. pdl1 = after the pushes,
# pdl2 = after the rows (branch wip/pdl-after-push, -DARNORM_PDL_TRIGGER_AT=1/2, built on main bf9e5a4's kernels); main triggers at the end.
# The ab stage alternates them, graph replay, two rounds, and prints scripts/ab_table.py's table.
set -u
STAGES="ab" AB_LIBS="pdl1=.carry/pdl1 pdl2=.carry/pdl2" AB_HIDDEN="4096 8192" AB_TOKENS="1,8,32,128,512,2048" bash scripts/gpu_check.sh 2>&1 | sed -n '/^==== ab/,$p'
