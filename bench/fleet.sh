#!/usr/bin/env bash
# A fleet behind HAProxy, replaced one instance at a time under load (issue #11).
#
#   bench/fleet.sh                       # 2 instances, 1 round; results in bench/out/fleet-<time>/
#   ROUNDS=3 CLIENTS=50 bench/fleet.sh   # more rounds and clients
#   DELAY=0s bench/fleet.sh              # without shutdown_delay: shows what a plain stop loses
#   BIN=dir LH=path/load_harness bench/fleet.sh   # use these binaries instead of building
#
# What it does:
#  0. builds release (bench/common.sh: apphost copied into the output directory) and installs
#     haproxy (Debian package) if it is missing;
#  1. starts two apphost instances on 127.0.0.1:18601 and :18602 (graceful, `shutdown_delay:
#     $DELAY`, routes /pid and /ready, `readiness: /ready`), and HAProxy on 127.0.0.1:18600
#     health-checking `GET /ready` every 300 ms (down after 1 failure, up after 1 success) with
#     `retries 0`: like kube-proxy, it never resends a request that failed;
#  2. runs two load_harness clients through HAProxy for the whole run: keep-alive connections,
#     and a new connection per request ($CLIENTS clients each);
#  3. ROUNDS times: for each instance in turn, SIGTERM, wait for HAProxy to mark it DOWN and for
#     it to exit, start a new process on the same port, wait for HAProxy to mark it UP (the
#     stop-and-start of a new version); then for each instance in turn `apphost restart` over its
#     control socket and wait for HAProxy to still see it UP (in place);
#  4. prints the requests and failures per client; exits 1 if any request failed.
#
# Only 127.0.0.1; everything it starts is stopped by pid on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-1}
CLIENTS=${CLIENTS:-20}
DELAY=${DELAY:-1s}
FRONT=18600
PORTS=(18601 18602)
OUT=${OUT:-$ROOT/bench/out/fleet-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
source bench/common.sh
bench_binaries
LH=${LH:-${CARGO_TARGET_DIR:-/work/target-bench}/release/examples/load_harness}
command -v haproxy >/dev/null || apt-get install -y haproxy >/dev/null

# The status HAProxy shows for server sN (UP, DOWN, ...), over its admin socket.
hastate() {
    python3 - "$OUT/haproxy.sock" "s$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"show stat\n")
data = b""
while chunk := s.recv(65536): data += chunk
for line in data.decode().splitlines():
    f = line.split(",")
    if len(f) > 17 and f[0] == "apphost" and f[1] == sys.argv[2]: print(f[17].split()[0])
PY
}

wait_state() {
    local deadline=$((SECONDS + 30))
    until [[ $(hastate "$1") == "$2" ]]; do
        ((SECONDS < deadline)) || { echo "HAProxy never saw s$1 $2" >&2; exit 1; }
        sleep 0.02
    done
}

declare -A SUP
GEN=0
start_instance() { # index
    local i=$1 port=${PORTS[$1]} dir
    GEN=$((GEN + 1))
    dir=$OUT/instance-$i-$GEN
    mkdir -p "$dir"
    cat >"$dir/server.yaml" <<YAML
graceful: true
shutdown_delay: $DELAY
shutdown_timeout: 10s
watch: { executable: false, config: false }
log: { level: warn }
control: { socket: "$OUT/ctl-$i.sock" }
servers:
  web:
    address: "127.0.0.1:$port"
    readiness: /ready
    routes:
      "/pid": pid
      "/ready": ready
YAML
    "$BIN/apphost" run -c "$dir/server.yaml" 2>>"$dir/log" &
    SUP[$i]=$!
    bench_track "${SUP[$i]}"
    wait_http "http://127.0.0.1:$port/ready"
}

for i in "${!PORTS[@]}"; do start_instance "$i"; done
{
    echo "global"
    echo "  stats socket $OUT/haproxy.sock mode 600 level admin"
    echo "  maxconn 4000"
    echo "defaults"
    echo "  mode http"
    echo "  retries 0"
    echo "  timeout connect 2s"
    echo "  timeout client 30s"
    echo "  timeout server 30s"
    echo "frontend fe"
    echo "  bind 127.0.0.1:$FRONT"
    echo "  default_backend apphost"
    echo "backend apphost"
    echo "  balance roundrobin"
    echo "  option httpchk GET /ready"
    echo "  http-check expect status 200"
    echo "  default-server inter 300ms fall 1 rise 1"
    for i in "${!PORTS[@]}"; do echo "  server s$i 127.0.0.1:${PORTS[$i]} check"; done
} >"$OUT/haproxy.cfg"
haproxy -db -f "$OUT/haproxy.cfg" 2>"$OUT/haproxy.log" &
bench_track $!
for i in "${!PORTS[@]}"; do wait_state "$i" UP; done

# Long enough for the rounds (about 8 s each with two instances), then it stops by itself.
DURATION=$((ROUNDS * 12 + 6))
for mode in keepalive close; do
    "$LH" --url "http://127.0.0.1:$FRONT/pid" --mode "$mode" -c "$CLIENTS" -t 1 \
        --warmup 2s --duration "${DURATION}s" --json-out "$OUT/$mode.json" >"$OUT/$mode.txt" &
    LOADS+=($!)
done
wait_state 0 UP # (the warm-up runs meanwhile)
sleep 2          # warm-up: load without replacements first

started=$SECONDS
for round in $(seq "$ROUNDS"); do
    for i in "${!PORTS[@]}"; do
        kill -TERM "${SUP[$i]}"
        wait_state "$i" DOWN
        wait "${SUP[$i]}" || { echo "instance $i exited $?" >&2; exit 1; }
        start_instance "$i"
        wait_state "$i" UP
        echo "round $round: instance $i stopped and started again ($((SECONDS - started)) s)"
    done
    for i in "${!PORTS[@]}"; do
        "$BIN/apphost" restart --socket "$OUT/ctl-$i.sock" >/dev/null
        wait_state "$i" UP
        echo "round $round: instance $i restarted in place ($((SECONDS - started)) s)"
    done
done
echo "replacements done in $((SECONDS - started)) s; waiting for the load to end"
status=0
for p in "${LOADS[@]}"; do wait "$p" || status=1; done

python3 - "$OUT" <<'PY'
import json, sys
for mode in ("keepalive", "close"):
    r = json.load(open(f"{sys.argv[1]}/{mode}.json"))
    req = sum(p["requests"] for p in r["phases"]); bad = sum(p["failed"] for p in r["phases"])
    kinds = {}
    for p in r["phases"]:
        for k, n in p["failures"].items():
            if n: kinds[k] = kinds.get(k, 0) + n
    print(f"{mode:9} requests {req:7}  failed {bad}  {kinds or ''}")
PY
echo "results in $OUT"
exit $status
