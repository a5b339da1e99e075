#!/usr/bin/env bash
# run_with_broker.sh BROKER [BROKER_ARGS...] -- COMMAND [ARGS...]
#
# Starts BROKER on a free loopback port (adds --port P; pass --store ... yourself,
# e.g. --store memory:), waits until it accepts connections, runs COMMAND with
# every "@URL@" argument replaced by ws://127.0.0.1:P and MAP_URL exported, then
# stops the broker. Exits with COMMAND's status (or 99 if the broker never came up).
# The broker's log goes to $MB_TEST_LOG (default: a temp file printed on failure).
set -u
broker=$1; shift
bargs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do bargs+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "usage: $0 BROKER [ARGS] -- COMMAND [ARGS]" >&2; exit 98; }

log=${MB_TEST_LOG:-$(mktemp /tmp/mb_test_broker.XXXXXX)}
bpid=
cleanup() {
  if [ -n "$bpid" ] && kill -0 "$bpid" 2>/dev/null; then
    kill "$bpid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$bpid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$bpid" 2>/dev/null
    wait "$bpid" 2>/dev/null
  fi
}
trap cleanup EXIT INT TERM

port_free() { ! (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

up=0
for attempt in 1 2 3 4 5; do
  port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
  port_free "$port" || continue
  "$broker" "${bargs[@]}" --port "$port" >"$log" 2>&1 &
  bpid=$!
  for _ in $(seq 100); do
    if ! kill -0 "$bpid" 2>/dev/null; then break; fi
    if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then up=1; break; fi
    sleep 0.05
  done
  [ $up = 1 ] && break
  cleanup; bpid=
done
if [ $up != 1 ]; then
  echo "run_with_broker: broker did not start" >&2; cat "$log" >&2; exit 99
fi

url="ws://127.0.0.1:$port"
export MAP_URL=$url MB_TEST_PORT=$port MB_TEST_BROKER_PID=$bpid
cmd=()
for a in "$@"; do cmd+=("${a//@URL@/$url}"); done
"${cmd[@]}"
rc=$?
if [ $rc != 0 ]; then echo "run_with_broker: command exited $rc; broker log:" >&2; tail -n 30 "$log" >&2; fi
[ -z "${MB_TEST_LOG:-}" ] && rm -f "$log"
exit $rc
