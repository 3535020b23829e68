#!/usr/bin/env bash
# HTTP/2 across restarts (issue #20): load_harness --h2 (h2c with prior knowledge, and TLS with
# ALPN h2) while the supervisor gets SIGUSR1 every 500 ms (50 restarts), in graceful mode
# (`graceful: true`) and in full mode (`graceful: false`: the old worker drains, then the new
# one starts); then the gRPC example under the same restarts (`grpc_app load`).
#
#   bench/h2.sh                       # everything; results in bench/out/h2-<timestamp>/
#   REPS=3 bench/h2.sh                # each load run 3 times
#   ONLY="graceful" bench/h2.sh       # a subset of: graceful full grpc
#
# Each load run: 50 clients (streams) on 4 connections, 5 s quiet, 25 s with SIGUSR1 every
# 500 ms, 5 s quiet. A connection that receives GOAWAY is replaced; streams the server did not
# process (above the GOAWAY's last stream id, or REFUSED_STREAM) are sent again and counted as
# retried, not failed. After each mode: restarts done / refused from the log, the supervisor's
# pid unchanged, SIGTERM, exit status 0. Only 127.0.0.1; everything started is stopped by pid.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PORT=18480
TLS_PORT=18482
GRPC_PORT=18483
REPS=${REPS:-1}
ONLY=${ONLY:-graceful full grpc}
TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
OUT=${OUT:-$ROOT/bench/out/h2-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT/bin"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"

say() { echo "$*" | tee -a "$SUMMARY"; }
want() { [[ " $ONLY " == *" $1 "* ]]; }

if [[ -z ${NO_BUILD:-} ]]; then
    CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --bins --example load_harness
    if want grpc; then
        CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --example grpc_app
    fi
fi
cp "$TARGET_DIR/release/apphost" "$TARGET_DIR/release/examples/load_harness" "$OUT/bin/"
if want grpc; then
    cp "$TARGET_DIR/release/examples/grpc_app" "$OUT/bin/"
fi
BIN=$OUT/bin
{
    echo "date: $(date -u +%FT%TZ)"
    echo "nproc: $(nproc)"
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p')"
    echo "kernel: $(uname -r)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "apphost commit: $(git rev-parse --short HEAD 2>/dev/null) (+ uncommitted changes: $(git status --porcelain 2>/dev/null | wc -l) files)"
} | tee -a "$SUMMARY"

# A CA and a certificate for 127.0.0.1 signed by it (the harness trusts the CA).
(
    cd "$OUT"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=apphost-bench-ca -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
        -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >ext.cnf
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile ext.cnf -out server.crt 2>/dev/null
)

SUP=
cleanup() { [[ -n $SUP ]] && kill -TERM "$SUP" 2>/dev/null || true; }
trap cleanup EXIT

wait_port() {
    for _ in $(seq 100); do
        if curl -fsS -o /dev/null "http://127.0.0.1:$1/pid"; then return 0; fi
        sleep 0.1
    done
    echo "nothing answers on 127.0.0.1:$1" >&2
    return 1
}

# start_host NAME GRACEFUL: write the config, start apphost, wait for it.
start_host() {
    cat >"$OUT/$1.yaml" <<EOF
graceful: $2
shutdown_timeout: 10s
log: { format: text, level: "warn,apphost::supervisor=info" }
watch: { executable: false, config: false }
servers:
  bench:
    address: "127.0.0.1:$PORT"
    https: { address: "127.0.0.1:$TLS_PORT", cert: server.crt, key: server.key }
    routes:
      "/": { handler: hello, text: Hello }
      "/pid": pid
EOF
    LOG=$OUT/$1.log
    "$BIN/apphost" run -c "$OUT/$1.yaml" >"$LOG" 2>&1 &
    SUP=$!
    wait_port "$PORT"
}

# stop_host: check the supervisor pid, count restarts, SIGTERM, exit status.
stop_host() {
    say "   restarts done: $(grep -c 'restart done' "$LOG" || true), refused: $(grep -c 'restart refused' "$LOG" || true), WARN/ERROR lines: $(grep -cE ' (WARN|ERROR) ' "$LOG" || true)"
    kill -TERM "$SUP"
    local st=0
    wait "$SUP" || st=$?
    say "   supervisor $SUP exit status after SIGTERM: $st"
    SUP=
}

load() { # NAME URL [extra args]: one 35 s run with 50 restarts
    local name=$1 url=$2
    shift 2
    for rep in $(seq "$REPS"); do
        say "-- $name run $rep: load_harness --h2 --conns 4 -c 50 --url $url $* --warmup 5 --duration 25 --cooldown 5 --restart-every 500ms"
        "$BIN/load_harness" --h2 --conns 4 -c 50 --url "$url" "$@" \
            --warmup 5 --duration 25 --cooldown 5 --restart-pid "$SUP" --restart-every 500ms \
            --json-out "$OUT/$name-$rep.json" | tee -a "$SUMMARY" || true
    done
}

for mode in graceful full; do
    want "$mode" || continue
    graceful=true
    [[ $mode == full ]] && graceful=false
    say ""
    say "== $mode mode (graceful: $graceful)"
    start_host "$mode" "$graceful"
    load "$mode-h2c" "http://127.0.0.1:$PORT/"
    load "$mode-h2-tls" "https://127.0.0.1:$TLS_PORT/" --ca "$OUT/ca.crt"
    stop_host
done

if want grpc; then
    for mode in graceful full; do
        graceful=true
        [[ $mode == full ]] && graceful=false
        say ""
        say "== gRPC ($mode mode): examples/grpc_app; grpc_app load -c 50 --conns 4, 30 s with SIGUSR1 every 500 ms"
        sed -e "s/^graceful: .*/graceful: $graceful/" -e "s/127.0.0.1:50051/127.0.0.1:$GRPC_PORT/" \
            -e "s/^shutdown_timeout: .*/shutdown_timeout: 10s/" \
            "$ROOT/examples/grpc_app.yaml" >"$OUT/grpc-$mode.yaml"
        printf 'log: { format: text, level: "warn,apphost::supervisor=info" }\nwatch: { executable: false, config: false }\n' >>"$OUT/grpc-$mode.yaml"
        LOG=$OUT/grpc-$mode.log
        "$BIN/grpc_app" serve run -c "$OUT/grpc-$mode.yaml" >"$LOG" 2>&1 &
        SUP=$!
        wait_port "$GRPC_PORT"
        for rep in $(seq "$REPS"); do
            say "-- grpc-$mode run $rep: grpc_app load --addr 127.0.0.1:$GRPC_PORT -c 50 --conns 4 --duration 30 --restart-pid $SUP --restart-every-ms 500"
            "$BIN/grpc_app" load --addr "127.0.0.1:$GRPC_PORT" -c 50 --conns 4 --duration 30 \
                --restart-pid "$SUP" --restart-every-ms 500 | tee -a "$SUMMARY" || true
        done
        stop_host
    done
fi
say ""
say "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
say "output: $OUT"
