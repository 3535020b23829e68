#!/usr/bin/env bash
# What a supervisor upgrade costs (issue 15, part 1): N restarts to another copy of the binary
# (each re-executes the supervisor in place), alternating between two copies, against N plain
# restarts (same file: the warm standby). Prints, from the supervisor's log timestamps, median
# and p90 in ms of:
#   preflight   restart requested -> re-executing (the preflight `check` with the handover)
#   exec        re-executing -> the new image has taken over (execve, loader, state read)
#   handoff     the `handoff_ms` the supervisor reports (request -> new worker ready)
#
#   bench/upgrade.sh [N]        # default 20; binaries from $BIN (default target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
BIN=${BIN:-$PWD/target/release}
tmp=$(mktemp -d)
PORT=${PORT:-18490}
cp "$BIN/apphost" "$tmp/v1"
cp "$BIN/apphost" "$tmp/v2"
cat >"$tmp/server.yaml" <<YAML
graceful: true
shutdown_timeout: 5s
watch: { executable: false, config: false }
control: { socket: $tmp/ctl.sock }
servers:
  s1:
    address: "127.0.0.1:$PORT"
    routes:
      "/pid": pid
YAML
SUP=
trap '[[ -n $SUP ]] && kill -TERM "$SUP" 2>/dev/null; sleep 0.5; rm -rf "$tmp"' EXIT
"$tmp/v1" run -c "$tmp/server.yaml" >"$tmp/log" 2>&1 &
SUP=$!
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$PORT/pid" && break; sleep 0.05; done
sleep 0.5
restart() { "$tmp/v1" restart --socket "$tmp/ctl.sock" "$@" >/dev/null; sleep 0.3; }
for i in $(seq "$N"); do restart; done
plain=$(grep -c 'restart done' "$tmp/log")
for i in $(seq "$N"); do
    if ((i % 2)); then restart --exe "$tmp/v2"; else restart --exe "$tmp/v1"; fi
done
[[ $(readlink "/proc/$SUP/exe") == "$tmp/v1" || $(readlink "/proc/$SUP/exe") == "$tmp/v2" ]]
python3 - "$tmp/log" "$plain" <<'PY'
import re, sys, datetime
lines = open(sys.argv[1]).read().splitlines()
plain = int(sys.argv[2])
def ts(l):
    return datetime.datetime.fromisoformat(l.split()[0].rstrip('Z')).timestamp() * 1000
def stats(name, v):
    v = sorted(v)
    if not v:
        return
    print(f"{name:10} n={len(v):3}  median {v[(len(v) - 1) // 2]:7.2f}  p90 {v[min(len(v) - 1, int(len(v) * 0.9))]:7.2f}  max {v[-1]:7.2f} ms")
done = [float(m.group(1)) for l in lines if (m := re.search(r'restart done.*handoff_ms="([0-9.]+)"', l))]
stats("plain", done[:plain])
stats("upgrade", done[plain:])
pre, ex = [], []
asked = reexec = None
for l in lines:
    if 'restart requested' in l:
        asked = ts(l)
    elif 're-executing the supervisor' in l:
        reexec = ts(l); pre.append(reexec - asked)
    elif 'taking over' in l and reexec is not None:
        ex.append(ts(l) - reexec); reexec = None
stats("preflight", pre)
stats("exec", ex)
PY
