#!/usr/bin/env bash
# mapctl_cli.sh MAPCTL ECHO_AGENT URL: mapctl commands and exit codes against a live broker.
set -u
m=$1 echo_agent=$2 url=$3
fails=0
expect() { # expect CODE DESCRIPTION -- command...
  local want=$1 what=$2; shift 3
  out=$("$@" 2>&1); got=$?
  if [ "$got" != "$want" ]; then echo "FAIL: $what: exit $got, want $want"; echo "$out" | sed 's/^/    /'; fails=$((fails+1));
  else echo "ok: $what (exit $got)"; fi
}
contains() { # contains TEXT DESCRIPTION
  if echo "$out" | grep -q -- "$1"; then echo "ok: $2"; else echo "FAIL: $2: output lacks '$1'"; echo "$out" | sed 's/^/    /'; fails=$((fails+1)); fi
}

expect 0 "global --help" -- "$m" --help;               contains "Usage: mapctl" "global help text"
for c in agents conversations turns tail send inject stop audit token; do
  expect 0 "$c --help" -- "$m" "$c" --help;            contains "Usage: mapctl" "$c help text"
done
expect 2 "no command" -- "$m"
expect 2 "unknown command" -- "$m" --url "$url" frobnicate
expect 2 "unknown global option" -- "$m" --bogus agents
expect 2 "turns without id" -- "$m" --url "$url" turns
expect 2 "send without --text" -- "$m" --url "$url" send --to x
expect 3 "cannot connect" -- "$m" --url ws://127.0.0.1:1 agents
expect 2 "bad url" -- "$m" --url http//nope agents

"$echo_agent" --url "$url" --id cli-echo --timeout 30 >/dev/null &
epid=$!
for _ in $(seq 100); do "$m" --url "$url" --json agents 2>/dev/null | grep -q '"cli-echo"' && break; sleep 0.1; done

expect 0 "agents" -- "$m" --url "$url" agents;         contains "cli-echo" "agents lists the echo agent"
expect 0 "agents --json" -- "$m" --url "$url" --json agents
echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert any(a["id"]=="cli-echo" for a in d["agents"])' \
  && echo "ok: agents --json is JSON" || { echo "FAIL: agents --json"; fails=$((fails+1)); }
expect 0 "send" -- "$m" --url "$url" send --to cli-echo --text hello; contains "delivered to 1" "send delivered"
expect 0 "send --wait" -- "$m" --url "$url" send --to cli-echo --text again --wait 10; contains "reply from cli-echo: again" "reply printed"
expect 1 "send to unknown agent" -- "$m" --url "$url" send --to nobody --text x; contains "2001" "MAP code printed"
expect 0 "inject" -- "$m" --url "$url" inject cli-echo "steer left"; contains "injected" "inject printed"
expect 1 "inject unknown agent" -- "$m" --url "$url" inject nobody x
expect 1 "turns of unknown conversation" -- "$m" --url "$url" turns conv-nope
expect 0 "conversations" -- "$m" --url "$url" conversations
expect 0 "audit" -- "$m" --url "$url" --json audit;     contains '"action": "map/inject"' "audit lists the inject"
# this broker runs in open development mode: minting needs authentication on (tested in tests/security)
expect 1 "token create without auth" -- "$m" --url "$url" token create --conversation conv-x --ttl 30m; contains "needs authentication" "minting refused clearly"
expect 2 "token without create" -- "$m" --url "$url" token
expect 2 "token create with a bad ttl" -- "$m" --url "$url" token create --conversation c --ttl soon
expect 0 "stop" -- "$m" --url "$url" stop cli-echo --reason done; contains "stopping" "stop printed"
for _ in $(seq 50); do kill -0 $epid 2>/dev/null || break; sleep 0.1; done
if kill -0 $epid 2>/dev/null; then echo "FAIL: echo agent did not exit after stop"; kill $epid; fails=$((fails+1)); else echo "ok: echo agent exited after stop"; fi
wait $epid 2>/dev/null
expect 1 "stop unknown agent" -- "$m" --url "$url" stop nobody

[ $fails = 0 ] && echo PASS || { echo "$fails failure(s)"; exit 1; }
