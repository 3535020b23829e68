#!/usr/bin/env bash
# Slow and stalled clients (issue #10's two high findings; figures in BENCHMARKS.md).
#
#   bench/slow_clients.sh            # ~1 minute; results in bench/out/slow-<timestamp>/
#   BIN=DIR bench/slow_clients.sh    # use DIR/apphost and DIR/slow_clients instead of building
#
#  1. a 4 MiB file served by `static`, apphost on 127.0.0.1:18490 (graceful, default
#     keepalive_grace 1s and shutdown_timeout 60s, send_timeout 10s);
#  2. restart: 4 clients read the file at 400 KB/s through a 16 KiB receive buffer; 0.5 s in the
#     supervisor gets SIGUSR1; every client must receive every byte (from the old worker);
#  3. hold: 40 HTTP/1 clients send a request and never read, and one h2c connection with
#     INITIAL_WINDOW_SIZE 0 opens 60 streams for the file: the worker's VmRSS growth while they
#     are stalled (target < 48 MiB), and when the worker closes them (target: within
#     send_timeout);
#  4. stop: the same 4 slow readers, SIGTERM 0.5 s in: every byte, then exit status 0.
#
# Only 127.0.0.1; everything it starts is stopped by pid on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
PORT=18490
OUT=${OUT:-$PWD/bench/out/slow-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT/files"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

if [[ -z ${BIN:-} ]]; then
    target=${CARGO_TARGET_DIR:-/work/target-bench}
    CARGO_TARGET_DIR=$target cargo build --release --examples --bins >/dev/null
    cp "$target/release/apphost" "$target/release/examples/slow_clients" "$OUT/"
    BIN=$OUT
fi
{
    echo "date: $(date -u +%FT%TZ)"
    echo "nproc: $(nproc); cpu: $(lscpu | sed -n 's/^Model name: *//p'); kernel: $(uname -r)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "apphost commit: $(git rev-parse --short HEAD) (+ uncommitted changes: $(git status --porcelain | wc -l) files)"
} | tee -a "$SUMMARY"

head -c $((4 << 20)) /dev/urandom >"$OUT/files/big.bin"
cat >"$OUT/server.yaml" <<YAML
graceful: true
send_timeout: 10s
log: { level: info }
watch: { executable: false, config: false }
servers:
  slow:
    address: "127.0.0.1:$PORT"
    admin: { path: /debug/admin }
    routes:
      "/pid": pid
      "/files/*path": { handler: static, dir: files }
YAML

SUP=
cleanup() { [[ -n $SUP ]] && kill -TERM "$SUP" 2>/dev/null || true; }
trap cleanup EXIT
start() {
    "$BIN/apphost" run -c "$OUT/server.yaml" 2>>"$OUT/apphost.log" &
    SUP=$!
    for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$PORT/pid" 2>/dev/null && return 0; sleep 0.1; done
    echo "apphost did not start" >&2
    exit 1
}
rc=0
start
say "== restart: 4 clients at 400 KB/s, SIGUSR1 0.5 s in"
"$BIN/slow_clients" read --port $PORT --path /files/big.bin --clients 4 --rate 400000 \
    --signal-pid "$SUP" --signal usr1 --after 500ms | tee -a "$SUMMARY" || rc=1
say "restarts done: $(grep -c 'restart done' "$OUT/apphost.log" || true)"

say "== hold: 40 HTTP/1 clients that never read + 1 h2c connection, window 0, 60 streams"
"$BIN/slow_clients" hold --port $PORT --path /files/big.bin --h1 40 --h2-streams 60 \
    --admin /debug/admin --send-timeout 10s | tee -a "$SUMMARY" || rc=1

say "== stop: 4 clients at 400 KB/s, SIGTERM 0.5 s in"
"$BIN/slow_clients" read --port $PORT --path /files/big.bin --clients 4 --rate 400000 \
    --signal-pid "$SUP" --signal term --after 500ms | tee -a "$SUMMARY" || rc=1
set +e
wait "$SUP"
st=$?
set -e
SUP=
say "supervisor exit status after SIGTERM: $st"
[[ $st -eq 0 ]] || rc=1
say "WARN/ERROR lines in the log: $(grep -cE ' (WARN|ERROR) ' "$OUT/apphost.log" || true)"
say "results: $OUT"
exit $rc
