#!/usr/bin/env bash
# Bounded libFuzzer run over argument validation and the CPU one-rank path (clang needed).
# usage: scripts/fuzz.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
mkdir -p build-fuzz/corpus
clang -std=c11 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -ffp-contract=off -Iinclude -Isrc tests/fuzz/fuzz_api.c src/*.c src/cpu/*.c \
  -o build-fuzz/fuzz_api -lm -lpthread -lrt
build-fuzz/fuzz_api -artifact_prefix=build-fuzz/ -max_total_time="$secs" -max_len=64 -print_final_stats=1 build-fuzz/corpus 2>&1 \
  | grep -E "Done|stat::number_of_executed_units|ERROR|SUMMARY|crash" || true
# libFuzzer exits non-zero on a finding; re-run the saved crash files to fail loudly
if ls build-fuzz/crash-* build-fuzz/leak-* build-fuzz/timeout-* >/dev/null 2>&1; then
  echo "fuzz: findings saved in build-fuzz/"; exit 1
fi
echo "fuzz: no findings in ${secs}s"
