#!/usr/bin/env bash
# Where the handoff time goes: runs `load_harness --handoff` against a fresh apphost under
# `perf record` (kernel tracepoints only: no sampling, little overhead; only apphost's and the
# harness's threads are recorded) and prints, per step, the median and p90 time after SIGUSR1:
#   fork     the supervisor forks the new worker (without a warm standby only)
#   activate the supervisor sends `activate` to the warm standby (its first message after the
#            signal; with a standby only)
#   heard    the standby has read `activate`
#   announce the new worker tells the old one, over their pipe, that it accepts (with a standby)
#   ready    the new worker sends `ready` (routes built, sockets adopted, accepting)
#   paused   the old worker has read the pipe's byte (its accept loops pause)
#   drain    the supervisor sends `drain` to the old worker (its next message)
#   old_last the old worker's last accepted connection (it accepts until it pauses or drains)
#   accept   the new worker's first accepted connection
#   answer   the new worker's first response written (the harness reads it just after)
#   old_exit the old worker's process ends (after its drain)
#
#   bench/handoff_breakdown.sh [ROUNDS]     # default 100; needs perf (linux-perf) and root
#   CONFIG=bench/bench-no-standby.yaml bench/handoff_breakdown.sh
#
# Binaries come from $BIN (a directory with apphost and load_harness), else a release build
# ($CARGO_TARGET_DIR, default /work/target-bench) copied to a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-100}
CONFIG=${CONFIG:-bench/bench.yaml}
PORT=18480
tmp=$(mktemp -d)
source bench/common.sh
bench_apphost_harness "$tmp"
SUP=
trap '[[ -n $SUP ]] && kill -TERM "$SUP" 2>/dev/null; [[ -n ${KEEP:-} ]] || rm -rf "$tmp"' EXIT
"$BIN/apphost" run -c "$CONFIG" >"$tmp/apphost.log" 2>&1 &
SUP=$!
for _ in $(seq 50); do curl -fsS -o /dev/null "http://127.0.0.1:$PORT/pid" 2>/dev/null && break; sleep 0.1; done
sleep 0.5
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
# Its workers so far (the serving one and the standby); later ones are its recorded forks.
KIDS=$(pgrep -d, -P "$SUP")
ours='comm == "apphost" || comm == "tokio-rt-worker" || comm == "load_harness"'
events=(-e signal:signal_generate --filter 'sig == 10')
for e in sched:sched_process_fork sched:sched_process_exit syscalls:sys_enter_sendmsg \
    syscalls:sys_exit_recvmsg syscalls:sys_exit_accept4 syscalls:sys_enter_writev; do
    events+=(-e "$e" --filter "$ours")
done
# The pipe's byte: a one-byte write by the new worker, a one-byte read by the old one.
events+=(-e syscalls:sys_enter_write --filter "($ours) && count == 1")
events+=(-e syscalls:sys_exit_read --filter "($ours) && ret == 1")
perf record -q -o "$tmp/perf.data" -a "${events[@]}" -- \
    "$BIN/load_harness" --url "http://127.0.0.1:$PORT/pid" --handoff --count "$ROUNDS" \
    --handoff-gap 200ms --restart-pid "$SUP"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
perf script -i "$tmp/perf.data" -F comm,pid,tid,time,event,trace 2>/dev/null >"$tmp/perf.txt"
[[ -n ${KEEP:-} ]] && echo "perf script output: $tmp/perf.txt (supervisor $SUP)"
python3 - "$tmp/perf.txt" "$SUP" "$KIDS" <<'PY'
import re, statistics, sys
sup = int(sys.argv[2])
# Only this apphost's processes (others may run on the machine).
ours = {sup} | {int(k) for k in sys.argv[3].split(',') if k}
ev = []
for line in open(sys.argv[1]):
    m = re.match(r'\s*(.+?)\s+(-?\d+)/(-?\d+)\s+([\d.]+):\s+(\S+):\s*(.*)', line)
    if not m:
        continue
    comm, pid, tid, t, e, rest = m.groups()
    pid, e = int(pid), e.rstrip(':').split(':')[-1]
    if e == 'sched_process_fork' and pid in ours:
        ours.add(int(re.search(r'child_pid=(\d+)', rest).group(1)))
    if pid in ours or e == 'signal_generate':
        ev.append((float(t) * 1000, pid, e, rest))
ok = lambda rest: not rest.startswith('0xffff')
sigs = [i for i, x in enumerate(ev) if x[2] == 'signal_generate' and f'pid={sup} ' in x[3]]
rounds = []
for n, i in enumerate(sigs):
    t0 = ev[i][0]
    end = sigs[n + 1] if n + 1 < len(sigs) else len(ev)
    body = ev[i + 1:end]
    # The new worker: the supervisor's child when it forks before it sends anything (no
    # standby), else the first other process to read a message (the standby's `activate`; the
    # next standby is forked 20 ms after the handoff). The old one: the last other process to
    # accept a connection before the signal (a standby accepts its warm-up connection).
    first = next(((e, r) for (_, p, e, r) in body
                  if p == sup and e in ('sched_process_fork', 'sys_enter_sendmsg')), None)
    if first is not None and first[0] == 'sched_process_fork':
        new = int(re.search(r'child_pid=(\d+)', first[1]).group(1))
    else:
        new = next((p for (_, p, e, r) in body
                    if e == 'sys_exit_recvmsg' and ok(r) and p != sup), None)
    old = next((p for (_, p, e, r) in reversed(ev[:i])
                if e == 'sys_exit_accept4' and ok(r) and p not in (new, sup)), None)
    if new is None or old is None:
        continue
    r = {}
    for (t, p, e, rest) in body:
        d = t - t0
        if p == sup and e == 'sched_process_fork' and f'child_pid={new} ' in rest + ' ':
            r.setdefault('fork', d)
        elif p == sup and e == 'sys_enter_sendmsg':
            if 'ready' in r:
                r.setdefault('drain', d)
            elif 'fork' not in r:
                r.setdefault('activate', d)
        elif p == new and e == 'sys_exit_recvmsg' and ok(rest) and 'fork' not in r:
            r.setdefault('heard', d)
        elif p == new and e == 'sys_enter_sendmsg':
            r.setdefault('ready', d)
        elif p == new and e == 'sys_enter_write':
            r.setdefault('announce', d)
        elif p == old and e == 'sys_exit_read' and 'announce' in r:
            r.setdefault('paused', d)
        elif p == old and e == 'sched_process_exit':
            # Once per thread: the last is the process's end.
            r['old_exit'] = d
        elif p == new and e == 'sys_exit_accept4' and ok(rest):
            r.setdefault('accept', d)
        elif p == new and e == 'sys_enter_writev':
            r.setdefault('answer', d)
        elif p == old and e == 'sys_exit_accept4' and ok(rest):
            r['old_last'] = d
    rounds.append(r)
keys = ['fork', 'activate', 'heard', 'announce', 'ready', 'paused', 'drain', 'old_last', 'accept',
        'answer', 'old_exit']
print(f"{len(rounds)} rounds; ms after SIGUSR1 to the supervisor")
print(f"{'step':<9} {'rounds':>6} {'median':>7} {'p90':>7}")
for k in keys:
    xs = sorted(r[k] for r in rounds if k in r)
    if xs:
        print(f"{k:<9} {len(xs):>6} {statistics.median(xs):7.2f} {xs[int(len(xs) * 0.9)]:7.2f}")
PY
