#!/usr/bin/env bash
# echo_roundtrip.sh ECHO_AGENT MAPCTL URL: echo_agent --once answers one mapctl send --wait.
set -u
echo_agent=$1 mapctl=$2 url=$3
"$echo_agent" --url "$url" --id echo-test --once --timeout 20 &
epid=$!
for _ in $(seq 100); do
  "$mapctl" --url "$url" --json agents 2>/dev/null | grep -q '"echo-test"' && break
  sleep 0.1
done
out=$("$mapctl" --url "$url" send --to echo-test --text "ping 42" --wait 10)
src=$?
echo "$out"
wait $epid; erc=$?
[ $src = 0 ] || { echo "FAIL: mapctl send exited $src"; exit 1; }
[ $erc = 0 ] || { echo "FAIL: echo_agent exited $erc"; exit 1; }
echo "$out" | grep -q "reply from echo-test: ping 42" || { echo "FAIL: reply not printed"; exit 1; }
echo PASS
