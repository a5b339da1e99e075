#!/usr/bin/env bash
# bench/run.sh - one bounded benchmark run: mapbroker (memory / sqlite normal /
# sqlite full) side by side with the SDK's reference MAPServer and a bare lws
# echo server, on loopback, then a table of figures and ratios.
#
#   bash bench/run.sh [--quick] [--out DIR]
#
#   --quick   1 s measurements instead of 5 (smoke run, figures are noisy)
#   --out DIR where the JSON lines, server logs and sqlite files go
#             (default: build-bench/bench-out; sqlite files must be on a real
#             disk for "full" to mean anything, /tmp is fine when it is not tmpfs)
#
# Needs: cmake + a C compiler, libwebsockets/jansson/sqlite3 dev packages (as for
# the broker), node >= 20 and npm (the reference server; `npm ci` runs in bench/
# when node_modules is missing). Each scenario gets a freshly started server on
# a free loopback port; everything started here is stopped on exit (trap). The
# whole run stops by itself after at most 9.5 minutes (watchdog).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/build-bench
OUT=$BUILD/bench-out
DUR=5
while [ $# -gt 0 ]; do
    case $1 in
    --quick) DUR=1 ;;
    --out) OUT=$2; shift ;;
    *) echo "usage: $0 [--quick] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$OUT"
RES=$OUT/results.jsonl
: >"$RES"

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    PIDS=()
}
trap 'cleanup' EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT TERM
# watchdog: the whole run is bounded even if something hangs
( trap 'kill $sp 2>/dev/null; exit 0' TERM; sleep 570 & sp=$!; wait $sp && { echo "run.sh: 9.5 min watchdog fired, stopping" >&2; kill -TERM $$; } ) 2>/dev/null &
WATCHDOG=$!
PIDS+=("$WATCHDOG")

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- build (Release). MB_WERROR=OFF: gcc -O3 reports maybe-uninitialized in
# broker/mail.c that -O2 builds do not; the bench must not depend on that.
log "building Release into $BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DMB_TESTS=OFF -DMB_WERROR=OFF >"$OUT/build.log" 2>&1 &&
    cmake --build "$BUILD" -j2 --target mapbroker mb_loadgen mb_echo >>"$OUT/build.log" 2>&1 ||
    { echo "build failed, see $OUT/build.log" >&2; exit 1; }
BROKER=$BUILD/broker/mapbroker
LG=$BUILD/bench/mb_loadgen
ECHO=$BUILD/bench/mb_echo
HAVE_REF=1
if ! command -v node >/dev/null; then
    log "node not found: the reference server is skipped"; HAVE_REF=0
elif [ ! -d "$ROOT/bench/node_modules/@multi-agent-protocol/sdk" ]; then
    log "npm ci (bench/)"
    (cd "$ROOT/bench" && npm ci --no-audit --no-fund --ignore-scripts >"$OUT/npm.log" 2>&1) ||
        { log "npm ci failed (see $OUT/npm.log): reference server skipped"; HAVE_REF=0; }
fi

# ---- limits: 10k idle connections need fds on both sides
ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)
IDLE_CONNS=10000
if [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt $((IDLE_CONNS + 200)) ]; then
    IDLE_CONNS=$((NOFILE - 200))
    log "ulimit -n is $NOFILE: idle scenario uses $IDLE_CONNS connections"
fi

# ---- servers
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000)) # below the kernel's ephemeral range (32768-) used by our clients
        port_free "$p" && { echo "$p"; return 0; }
    done
    return 1
}
wait_listen() { # port pid
    for _ in $(seq 1 100); do
        kill -0 "$2" 2>/dev/null || return 1
        port_free "$1" || return 0
        sleep 0.1
    done
    return 1
}
SRV_PID=""
SRV_PORT=""
DBN=0
# start_server KIND: echo | rpc | mem | normal | full | ref
start_server() {
    local kind=$1 port
    port=$(pick_port) || { echo "no free port" >&2; return 1; }
    case $kind in
    echo) "$ECHO" --port "$port" >"$OUT/echo.log" 2>&1 & ;;
    rpc) "$ECHO" --port "$port" --rpc >"$OUT/echo-rpc.log" 2>&1 & ;;
    ref) node "$ROOT/bench/reference_server.mjs" --port "$port" >"$OUT/ref.log" 2>&1 & ;;
    mem | normal | full)
        local store="memory:"
        if [ "$kind" != mem ]; then
            DBN=$((DBN + 1))
            rm -f "$OUT/bench-$DBN.db" "$OUT/bench-$DBN.db-wal" "$OUT/bench-$DBN.db-shm"
            store="sqlite:$OUT/bench-$DBN.db"
        fi
        "$BROKER" --port "$port" --store "$store" --durability "$([ "$kind" = normal ] && echo normal || echo full)" \
            --log-level warn --max-connections 20000 --max-connections-per-ip 20000 --max-message 4194304 \
            --handshake-timeout 60 --rate-limit 0 >>"$OUT/broker-$kind.log" 2>&1 &
        ;;
    esac
    SRV_PID=$!
    SRV_PORT=$port
    PIDS+=("$SRV_PID")
    wait_listen "$port" "$SRV_PID" || { echo "server $kind did not start on $port (see $OUT)" >&2; kill "$SRV_PID" 2>/dev/null; return 1; }
}
stop_server() {
    [ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null && wait "$SRV_PID" 2>/dev/null
    SRV_PID=""
}
# run KIND SERVERNAME LABEL loadgen-args...: fresh server, one scenario, one JSON line
run() {
    local kind=$1 name=$2 label=$3
    shift 3
    start_server "$kind" || start_server "$kind" || { echo "{\"scenario\":\"$1\",\"server\":\"$name\",\"label\":\"$label\",\"failed\":\"server did not start\"}" >>"$RES"; return; }
    log "$name: $label"
    local line
    line=$("$LG" --port "$SRV_PORT" --pid "$SRV_PID" --server "$name" --label "$label" "$@" 2>>"$OUT/loadgen.err")
    [ -n "$line" ] || line="{\"server\":\"$name\",\"label\":\"$label\",\"failed\":\"loadgen printed nothing\"}"
    echo "$line" >>"$RES"
    echo "$line" >&2
    stop_server
}

T0=$(date +%s)
S="--duration $DUR --warmup 0.5"
# send: 4 senders + 4 receivers (echo: 4 round-trip connections); window = undelivered messages per sender
for sz in 256:16 65536:4 1048576:2; do
    size=${sz%%:*} win=${sz##*:}
    run echo echo "send-$size" --scenario send --echo --size "$size" --window "$win" $S --timeout 40
    run mem mapbroker-mem "send-$size" --scenario send --size "$size" --window "$win" $S --timeout 40
done
# turns: 4 connections x 64 in flight
for k in mem normal full; do
    run "$k" "mapbroker-$k" turns --scenario turns --conns 4 --inflight 64 $S --timeout 40
done
[ $HAVE_REF = 1 ] && run ref reference turns --scenario turns --conns 4 --inflight 64 $S --timeout 40
# the ceiling: the same frames acknowledged by mb_echo --rpc, which does no work
run rpc echo-rpc turns --scenario turns --echo --conns 4 --inflight 64 $S --timeout 40
# the same turns posted through libmapclient (one mc_client per connection, async mc_request)
run mem mapbroker-mem turns-mapclient --scenario turns --mapclient --conns 4 --inflight 64 $S --timeout 40
# fan-out: 1000 observers, writer at 1000 turns/s (the target) and 100 turns/s (context)
run mem mapbroker-mem fanout-1000 --scenario fanout --observers 1000 --rate 1000 --duration "$DUR" --timeout 60
run mem mapbroker-mem fanout-100 --scenario fanout --observers 1000 --rate 100 --duration "$DUR" --timeout 60
# the ceiling: mb_echo --rpc copies each posted frame, padded to a turn_added's size, to the 1000 observers
run rpc echo-rpc fanout-1000 --scenario fanout --echo --observers 1000 --rate 1000 --duration "$DUR" --timeout 60
# replay 100k turns
run mem mapbroker-mem replay --scenario replay --turns 100000 --timeout 90
run full mapbroker-full replay --scenario replay --turns 100000 --timeout 120
# idle connections
run mem mapbroker-mem idle --scenario idle --conns "$IDLE_CONNS" --timeout 90
[ $HAVE_REF = 1 ] && run ref reference idle --scenario idle --conns "$IDLE_CONNS" --timeout 90
T1=$(date +%s)
log "scenarios done in $((T1 - T0)) s; results: $RES"

# ---- table
report() {
    if command -v node >/dev/null; then
        node "$ROOT/bench/report.mjs" "$RES" "$(nproc)" "$DUR"
    else
        cat "$RES"
    fi
}
report | tee "$OUT/table.txt"
