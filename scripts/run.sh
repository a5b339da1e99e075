#!/usr/bin/env bash
# Build mapbroker (release) and run it: ws://127.0.0.1:7420, SQLite store in ./data.
# Extra arguments go to mapbroker (see ./build/broker/mapbroker --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMB_SANITIZE=OFF -DMB_FUZZ=OFF -DMB_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" --target mapbroker >/dev/null
exec ./build/broker/mapbroker "$@"
