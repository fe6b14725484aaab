#!/usr/bin/env bash
# The whole test suite: build (CUDA backend too when the toolkit and NCCL are installed),
# run every ctest suite (GPU suites print a SKIP line without a GPU), then the CPU suites
# again under AddressSanitizer + UndefinedBehaviorSanitizer, then a bounded fuzz run.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)

# numpy makes the Python binding test cover numpy arrays too; the test runs without it.
python3 -c 'import numpy' 2>/dev/null || python3 -m pip install -q numpy 2>/dev/null \
  || echo "note: numpy not installable here; the Python test covers plain buffers only"

echo "== build (Release) and test"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"

echo "== install, then build and run a consumer with find_package(arnorm) and with pkg-config"
stage="$PWD/build/stage"
rm -rf "$stage" && cmake --install build --prefix "$stage" >/dev/null
cmake -S tests/install -B build/install-check -DCMAKE_PREFIX_PATH="$stage" >/dev/null
cmake --build build/install-check >/dev/null
LD_LIBRARY_PATH="$stage/lib" build/install-check/consumer
cc tests/install/main.c $(PKG_CONFIG_PATH="$stage/lib/pkgconfig" pkg-config --cflags --libs arnorm) \
  -o build/install-check/consumer-pc && LD_LIBRARY_PATH="$stage/lib" build/install-check/consumer-pc

echo "== CPU suites under AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DARNORM_SANITIZE=ON \
  -DARNORM_ENABLE_CUDA=OFF >/dev/null
cmake --build build-asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j "$jobs" -L cpu

if [ -x build-fuzz/fuzz_api ] || command -v clang >/dev/null; then
  echo "== fuzzing argument validation and the CPU path (bounded)"
  scripts/fuzz.sh 60
fi
echo "== all tests passed"
