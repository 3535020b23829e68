#!/usr/bin/env bash
# Idle CPU of a watched apphost: supervisor + worker CPU time over 10 s with no traffic, with
# `watch.executable` and `watch.config` on (graceful: true). CPU time is the sum over all of a
# process's threads of /proc/PID/task/TID/schedstat (nanoseconds on CPU).
#   bash bench/idle_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin apphost >/dev/null
dir=$(mktemp -d)
trap 'kill -TERM $sup 2>/dev/null || true; rm -rf "$dir"' EXIT
cp target/release/apphost "$dir/apphost"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$dir/server.yaml" <<YAML
graceful: true
log: { level: warn }
servers:
  s1:
    address: "127.0.0.1:$port"
    routes: { "/pid": pid }
YAML
"$dir/apphost" run -c "$dir/server.yaml" 2>"$dir/log" &
sup=$!
for _ in $(seq 1 500); do curl -sf "127.0.0.1:$port/pid" >/dev/null && break; sleep 0.01; done
worker=$(curl -sf "127.0.0.1:$port/pid")
ticks() { cat /proc/$1/task/*/schedstat | awk '{s += $1} END {printf "%d\n", s}'; }
hz=1000000000
s0=$(ticks $sup); w0=$(ticks $worker); t0=$(date +%s.%N)
sleep 10
s1=$(ticks $sup); w1=$(ticks $worker); t1=$(date +%s.%N)
python3 - "$s0" "$s1" "$w0" "$w1" "$t0" "$t1" "$hz" <<'PY'
import sys
s0,s1,w0,w1=map(int,sys.argv[1:5]); t0,t1=map(float,sys.argv[5:7]); hz=int(sys.argv[7])
wall=t1-t0
for name,a,b in (("supervisor",s0,s1),("worker",w0,w1)):
    cpu=(b-a)/hz
    print(f"{name:10s} cpu {cpu*1000:8.3f} ms over {wall:.1f} s = {100*cpu/wall:.4f} %")
PY
