#!/usr/bin/env bash
# The handoff seen from outside (issue #15): with no other load, ROUNDS times: t0, SIGUSR1 to the
# supervisor, then `GET /pid` on fresh connections from POLLERS concurrent pollers, each back to
# back (the next connection as soon as the previous one answered), until a pid never seen before
# answers. Prints median / p90 / max of that answer's arrival − t0, the probe's resolution (the
# gaps between consecutive answers), when the old worker answered last, and the supervisor's own
# `handoff_ms` (signal → ready) from its log for comparison.
#
#   bench/handoff.sh [ROUNDS]          # default 200; POLLERS=2 GAP=200ms
#   RUNS=3 bench/handoff.sh 100        # the same apphost, three runs in a row
#   CONFIG=bench/bench-no-standby.yaml bench/handoff.sh
#   PROBE=idle RUNS=3 bench/handoff.sh 100   # the probe at SCHED_IDLE (see below)
#
# PROBE says how the probe (load_harness) competes for the CPU with the processes it times:
#   busy   (default) at their priority: its back-to-back polls keep a core busy, and on a
#          2-core machine each step of the handoff may wait for the core the probe holds
#   idle   `chrt --idle 0`: it runs only on a core nothing else wants, as a client on another
#          machine would; what it measures is the handoff's own chain (its connections'
#          server side still runs at normal priority, in apphost's processes)
#   nice   `nice -n $PROBE_NICE` (default 10: below apphost's processes, still well above the
#          `nice -n 19` builds of a shared machine, which a SCHED_IDLE probe waits behind)
# POLL_PAUSE (default 0s) pauses each poller that long between an answer and its next
# connection, the issue's "polled every ~1 ms"; tokio's timer rounds a pause up to whole
# milliseconds, so its figures measure mostly the probe's own resolution (BENCHMARKS (af)).
#
# Binaries come from $BIN (a directory with apphost and load_harness), else a release build
# ($CARGO_TARGET_DIR, default /work/target-bench) copied into the output directory
# bench/out/handoff-<timestamp>/, so a rebuild cannot change them mid-run. Only 127.0.0.1:18480;
# the apphost it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-200}
RUNS=${RUNS:-1}
POLLERS=${POLLERS:-2}
GAP=${GAP:-200ms}
PROBE=${PROBE:-busy}
POLL_PAUSE=${POLL_PAUSE:-0s}
case $PROBE in
    busy) AS_PROBE=() ;;
    idle) AS_PROBE=(chrt --idle 0) ;;
    nice) AS_PROBE=(nice -n "${PROBE_NICE:-10}") ;;
    *) echo "PROBE must be busy, idle or nice" >&2; exit 2 ;;
esac
CONFIG=${CONFIG:-bench/bench.yaml}
PORT=18480
OUT=${OUT:-$PWD/bench/out/handoff-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
source bench/common.sh
bench_apphost_harness "$OUT"
SUP=
trap '[[ -n $SUP ]] && kill -TERM "$SUP" 2>/dev/null || true' EXIT
{
    echo "date: $(date -u +%FT%TZ)  nproc: $(nproc)  kernel: $(uname -r)"
    echo "tree: $(git rev-parse --short HEAD) (+ uncommitted changes: $(git status --porcelain -- src examples bench/*.sh | wc -l) files)"
    echo "config: $CONFIG  rounds: $ROUNDS  pollers: $POLLERS  gap: $GAP  probe: $PROBE${PROBE_NICE:+ $PROBE_NICE}  poll pause: $POLL_PAUSE"
} | tee "$OUT/summary.txt"
"$BIN/apphost" run -c "$CONFIG" >"$OUT/apphost.log" 2>&1 &
SUP=$!
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$PORT/pid" 2>/dev/null && break; sleep 0.1; done
for run in $(seq "$RUNS"); do
    # Let the first worker's standby start before the first round.
    sleep 0.5
    before=$(grep -c 'restart done' "$OUT/apphost.log" || true)
    echo "run $run: load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.txt"
    "${AS_PROBE[@]}" "$BIN/load_harness" --url "http://127.0.0.1:$PORT/pid" --handoff \
        --count "$ROUNDS" --pollers "$POLLERS" --handoff-gap "$GAP" --poll-pause "$POLL_PAUSE" \
        --restart-pid "$SUP" \
        --json-out "$OUT/handoff-$run.json" | tee -a "$OUT/summary.txt" || true
    echo "run $run: load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.txt"
    grep 'restart done' "$OUT/apphost.log" | tail -n +"$((before + 1))" |
        sed -n 's/.*handoff_ms="\([0-9.]*\)".*/\1/p' | sort -g >"$OUT/supervisor-ms-$run.txt"
    awk '{ v[NR] = $1 } END { if (NR) printf "supervisor handoff_ms (signal -> ready) over %d: median %.2f  p90 %.2f  max %.2f\n", NR, v[int((NR + 1) / 2)], v[int(NR * 0.9 + 0.999)], v[NR] }' \
        "$OUT/supervisor-ms-$run.txt" | tee -a "$OUT/summary.txt"
done
echo "WARN/ERROR lines in the log: $(grep -c -E 'WARN|ERROR' "$OUT/apphost.log" || true)" | tee -a "$OUT/summary.txt"
echo "output: $OUT"
