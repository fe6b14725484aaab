#!/usr/bin/env bash
# The main job: build, then run arnorm-bench (CUDA when a GPU is visible, else the CPU
# shared-memory backend). Extra arguments go to arnorm-bench (see README: -g, -t, -H, -d...).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" --target arnorm-bench
exec ./build/bench/arnorm-bench "$@"
