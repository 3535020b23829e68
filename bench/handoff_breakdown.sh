#!/usr/bin/env bash
# Where the handoff time goes: runs `load_harness --handoff` against a fresh apphost under
# `perf record` (kernel tracepoints only: no sampling, little overhead) and prints, per step, the
# median and p90 time after SIGUSR1:
#   fork     the supervisor forks the new worker
#   exec     execve of the worker done
#   main     Rust's main starts (std's poll() of fds 0-2: dynamic loading and relocation are over)
#   rt       the worker creates its tokio runtime (epoll_create1: config loaded, logging set up)
#   threads  the runtime's first thread
#   ready    the worker sends `ready` (first sendmsg)
#   drain    the supervisor tells the old worker to drain (its next sendmsg)
#   accept   the new worker's first accepted connection
#
#   bench/handoff_breakdown.sh [ROUNDS]     # default 100; needs perf (linux-perf) and root
#
# Binaries come from $BIN (default: a copy of the release build in a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-100}
PORT=18480
TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
tmp=$(mktemp -d)
if [[ -z ${BIN:-} ]]; then
    CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --examples --bins >/dev/null
    cp "$TARGET_DIR/release/apphost" "$TARGET_DIR/release/examples/load_harness" "$tmp/"
    BIN=$tmp
fi
SUP=
trap '[[ -n $SUP ]] && kill -TERM "$SUP" 2>/dev/null; rm -rf "$tmp"' EXIT
"$BIN/apphost" run -c bench/bench.yaml >"$tmp/apphost.log" 2>&1 &
SUP=$!
for _ in $(seq 50); do curl -fsS -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
perf record -q -o "$tmp/perf.data" -a \
    -e signal:signal_generate -e sched:sched_process_fork -e sched:sched_process_exec \
    -e syscalls:sys_enter_poll -e syscalls:sys_enter_epoll_create1 \
    -e syscalls:sys_enter_sendmsg -e syscalls:sys_exit_accept4 -- \
    "$BIN/load_harness" --url "http://127.0.0.1:$PORT/pid" --handoff --count "$ROUNDS" \
    --handoff-gap 200ms --restart-pid "$SUP"
perf script -i "$tmp/perf.data" -F comm,pid,tid,time,event,trace 2>/dev/null >"$tmp/perf.txt"
python3 - "$tmp/perf.txt" "$SUP" <<'PY'
import re, statistics, sys
sup = int(sys.argv[2])
ev = []
for line in open(sys.argv[1]):
    m = re.match(r'\s*(.+?)\s+(\d+)/(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)', line)
    if m:
        comm, pid, tid, t, e, rest = m.groups()
        ev.append((float(t) * 1000, int(pid), comm, e, rest))
names = {'sched:sched_process_exec': 'exec', 'syscalls:sys_enter_poll': 'main',
         'syscalls:sys_enter_epoll_create1': 'rt', 'sched:sched_process_fork': 'threads',
         'syscalls:sys_enter_sendmsg': 'ready'}
rounds = []
for i, (t, pid, comm, e, rest) in enumerate(ev):
    if not (e == 'signal:signal_generate' and 'sig=10 ' in rest and f'pid={sup} ' in rest
            and comm == 'load_harness'):
        continue
    r, child = {'sig': t}, None
    for (t2, p2, c2, e2, r2) in ev[i + 1:]:
        if t2 - t > 100:
            break
        if child is None:
            if e2 == 'sched:sched_process_fork' and p2 == sup:
                child = int(re.search(r'child_pid=(\d+)', r2).group(1))
                r['fork'] = t2
        elif p2 == child:
            if e2 in names:
                r.setdefault(names[e2], t2)
            elif e2 == 'syscalls:sys_exit_accept4' and not r2.startswith('0xffff'):
                r.setdefault('accept', t2)
        elif 'ready' in r and p2 == sup and e2 == 'syscalls:sys_enter_sendmsg':
            r.setdefault('drain', t2)
    rounds.append(r)
keys = ['fork', 'exec', 'main', 'rt', 'threads', 'ready', 'drain', 'accept']
print(f"{len(rounds)} rounds; ms after SIGUSR1 to the supervisor")
print(f"{'step':<8} {'median':>7} {'p90':>7} {'step median':>12}")
prev = 'sig'
for k in keys:
    xs = sorted(r[k] - r['sig'] for r in rounds if k in r)
    ds = sorted(r[k] - r[prev] for r in rounds if k in r and prev in r)
    if xs:
        print(f"{k:<8} {statistics.median(xs):7.2f} {xs[int(len(xs) * 0.9)]:7.2f} "
              f"{statistics.median(ds):12.2f}")
    prev = k
PY
