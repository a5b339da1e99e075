#!/usr/bin/env bash
# Every test of mapbroker, from a clean checkout on Debian 12 (as root):
# installs the apt and npm packages it needs, builds under ASan + UBSan with
# warnings as errors, runs the unit, store, conformance, security, example
# and browser tests through CTest, then the fuzzers for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bash scripts/deps.sh --test

for d in tests/conformance tests/security tests/interop tests/browser; do
  if [[ -f $d/package-lock.json ]]; then
    (cd "$d" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
done

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
[[ -f $root/tests/lsan.supp ]] && export LSAN_OPTIONS="suppressions=$root/tests/lsan.supp"

cmake -S . -B build-test -DCMAKE_BUILD_TYPE=Debug -DMB_SANITIZE=ON -DMB_WERROR=ON >/dev/null
cmake --build build-test -j"$(nproc)"
ctest --test-dir build-test --output-on-failure -j2 --timeout 600

# Fuzzers: clang + libFuzzer, bounded run (MB_FUZZ_SECONDS each: 60 s here, override in the environment).
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DMB_FUZZ=ON -DMB_TESTS=ON >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target fuzzers >/dev/null
MB_FUZZ_SECONDS=${MB_FUZZ_SECONDS:-60} ctest --test-dir build-fuzz --output-on-failure -R '^fuzz_' --timeout 900
