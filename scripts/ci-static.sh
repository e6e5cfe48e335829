#!/bin/sh
# CI step for static analysis and fuzzing: cppcheck and clang-tidy over
# src/*.c, then every libFuzzer harness of tests/fuzz/ for FUZZ_TIME
# seconds each (default 30).  The crash regressions themselves run in
# `make check`.
#
# Usage: scripts/ci-static.sh   (from any directory; FUZZ_TIME=N to change)
set -eu

cd "$(dirname "$0")/.."

echo "== static analysis (cppcheck, clang-tidy)"
make -k lint-static

echo "== fuzzing (${FUZZ_TIME:-30} s per harness)"
make fuzz-ci FUZZ_TIME="${FUZZ_TIME:-30}"
