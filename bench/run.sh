#!/usr/bin/env bash
# Load and restart benchmarks for apphost (the figures in BENCHMARKS.md).
#
#   bench/run.sh                 # everything, ~9 minutes; results in bench/out/<timestamp>/
#   REPS=1 bench/run.sh          # steady-state wrk runs once instead of median of 3
#   ONLY="handoff" bench/run.sh  # a subset of: steady harness wrk handoff stress
#
# What it does:
#  0. builds release (`cargo build --release --examples --bins`, CARGO_TARGET_DIR defaults to
#     /work/target-bench) and copies apphost, bare_hello and load_harness into the output
#     directory, so a rebuild elsewhere cannot change the binaries under test (apphost restarts
#     re-run the recorded executable); installs wrk with apt-get if it is missing;
#  1. starts `apphost run -c bench/bench.yaml` (127.0.0.1:18480, graceful, log level warn with the
#     supervisor's info lines) and `bare_hello 18481`, and records the supervisor's pid;
#  (a) steady state: `wrk -t2 -c50 -d10s --latency` against both, keep-alive and with
#      `-H 'Connection: close'`, REPS times interleaved, median req/s;
#  (b) load_harness in keepalive and close modes: 5 s warm-up, 25 s with SIGUSR1 to the
#      supervisor every 500 ms (50 restarts), 5 s cool-down;
#  (c) `wrk -t2 -c50 -d30s --latency` with and without `Connection: close` while a shell loop
#      sends SIGUSR1 every 500 ms (50 restarts, from t=2 s): wrk never retries, so its socket
#      errors and non-2xx responses are requests lost;
#  (d) load_harness --handoff: 50 × (SIGUSR1, then poll /pid until a new pid answers);
#  (e) stress: load_harness with 4 clients (close, then keepalive) for 60 s with SIGUSR1 every
#      100 ms (600 restarts each): few clients leave the old worker often idle at its drain, the
#      case where a connection accepted during the drain was once reset (fixed in f8e22ea);
#  then checks that the supervisor pid is unchanged, exactly one worker is left, and apphost
#  still serves; counts `restart done` / `restart refused` in the log for every step; stops
#  apphost with SIGTERM and checks it exits 0.
#
# Only 127.0.0.1; everything it starts is stopped by pid on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PORT=18480
BARE_PORT=18481
REPS=${REPS:-3}
ONLY=${ONLY:-steady harness wrk handoff stress}
RESTARTS=50
EVERY=0.5
TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
OUT=${OUT:-$ROOT/bench/out/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT/bin"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"

say() { echo "$*" | tee -a "$SUMMARY"; }
want() { [[ " $ONLY " == *" $1 "* ]]; }

# ---- build, tools, machine ------------------------------------------------------------------
if [[ -z ${NO_BUILD:-} ]]; then
    CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --examples --bins
fi
cp "$TARGET_DIR/release/apphost" "$TARGET_DIR/release/examples/bare_hello" \
    "$TARGET_DIR/release/examples/load_harness" "$OUT/bin/"
BIN=$OUT/bin
if ! command -v wrk >/dev/null; then
    apt-get update && apt-get install -y wrk
fi
{
    echo "date: $(date -u +%FT%TZ)"
    echo "nproc: $(nproc)"
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p')"
    echo "memory: $(free -h | awk '/^Mem:/ {print $2}')"
    echo "kernel: $(uname -r)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "apphost commit: $(git rev-parse --short HEAD 2>/dev/null) (+ uncommitted changes: $(git status --porcelain 2>/dev/null | wc -l) files)"
} | tee -a "$SUMMARY"

# ---- processes --------------------------------------------------------------------------------
SUP=
BARE=
LOG=$OUT/apphost.log
cleanup() {
    [[ -n $BARE ]] && kill "$BARE" 2>/dev/null || true
    [[ -n $SUP ]] && kill -TERM "$SUP" 2>/dev/null || true
    [[ -n ${KILLER:-} ]] && kill "$KILLER" 2>/dev/null || true
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 100); do
        if curl -fsS -o /dev/null "http://127.0.0.1:$1/"; then return 0; fi
        sleep 0.1
    done
    echo "nothing answers on 127.0.0.1:$1" >&2
    return 1
}

restarts_done() { grep -c 'restart done' "$LOG" || true; }
restarts_refused() { grep -c 'restart refused' "$LOG" || true; }

"$BIN/apphost" run -c "${BENCH_CONFIG:-$ROOT/bench/bench.yaml}" >"$LOG" 2>&1 &
SUP=$!
"$BIN/bare_hello" "$BARE_PORT" 2>"$OUT/bare_hello.log" &
BARE=$!
wait_port "$PORT"
wait_port "$BARE_PORT"
FIRST_WORKER=$(curl -fsS "http://127.0.0.1:$PORT/pid")
say "supervisor pid: $SUP, first worker pid: $FIRST_WORKER, bare_hello pid: $BARE"

# Pull figures out of a wrk --latency report.
wrk_line() { # FILE -> "rps p50 p99 max connect read write timeout non2xx"
    awk '
        /Requests\/sec:/ { rps = $2 }
        /^ +50%/ { p50 = $2 }
        /^ +99%/ { p99 = $2 }
        /^ +Latency / && !/Distribution/ { max = $4 }
        /Socket errors:/ { gsub(",", ""); c = $4; r = $6; w = $8; t = $10 }
        /Non-2xx or 3xx responses:/ { n = $5 }
        END { printf "%s %s %s %s %d %d %d %d %d\n", rps, p50, p99, max, c, r, w, t, n }
    ' "$1"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# CPU time (user + system, all threads) a process has used, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# ---- (a) steady state -----------------------------------------------------------------------
if want steady; then
    say ""
    say "== (a) steady state: wrk -t2 -c50 -d10s --latency, $REPS run(s) each, interleaved"
    say "   (cpu: the server's user+system CPU time per request, from /proc/PID/stat)"
    WORKER=$(curl -fsS "http://127.0.0.1:$PORT/pid")
    for rep in $(seq "$REPS"); do
        for conn in keepalive close; do
            hdr=()
            [[ $conn == close ]] && hdr=(-H 'Connection: close')
            for who in apphost bare; do
                port=$PORT
                pid=$WORKER
                if [[ $who == bare ]]; then
                    port=$BARE_PORT
                    pid=$BARE
                fi
                f=$OUT/steady-$who-$conn-$rep.txt
                t0=$(cpu_ticks "$pid")
                wrk -t2 -c50 -d10s --latency "${hdr[@]}" "http://127.0.0.1:$port/" >"$f"
                t1=$(cpu_ticks "$pid")
                n=$(awk '/requests in/ { print $1 }' "$f")
                cpu=$(echo "($t1 - $t0) * 1000000 / $HZ / $n" | bc -l)
                echo "$cpu" >"$f.cpu"
                say "$(printf '%-8s %-9s run %d: ' "$who" "$conn" "$rep")$(wrk_line "$f" |
                    awk -v cpu="$cpu" '{ printf "%10.0f req/s  cpu %5.1f us/req  p50 %s  p99 %s  max %s  errors c/r/w/t %d/%d/%d/%d  non-2xx %d", $1, cpu, $2, $3, $4, $5, $6, $7, $8, $9 }')"
            done
        done
    done
    for conn in keepalive close; do
        a=$(for f in "$OUT"/steady-apphost-$conn-*.txt; do wrk_line "$f" | cut -d' ' -f1; done | median)
        b=$(for f in "$OUT"/steady-bare-$conn-*.txt; do wrk_line "$f" | cut -d' ' -f1; done | median)
        say "$(printf 'median %-9s apphost %10.0f  bare %10.0f  ratio %.3f' "$conn" "$a" "$b" "$(echo "$a / $b" | bc -l)")"
        a=$(cat "$OUT"/steady-apphost-$conn-*.txt.cpu | median)
        b=$(cat "$OUT"/steady-bare-$conn-*.txt.cpu | median)
        say "$(printf 'median %-9s cpu/req apphost %.1f us  bare %.1f us  bare/apphost %.3f' "$conn" "$a" "$b" "$(echo "$b / $a" | bc -l)")"
    done
fi

# ---- (b) load_harness across restarts -------------------------------------------------------
if want harness; then
    for mode in keepalive close; do
        say ""
        say "== (b) load_harness --mode $mode -c 50: 5 s, then 25 s with SIGUSR1 every 500 ms, then 5 s"
        before=$(restarts_done)
        refused=$(restarts_refused)
        "$BIN/load_harness" --url "http://127.0.0.1:$PORT/" --mode "$mode" -c 50 \
            --warmup 5 --duration 25 --cooldown 5 --restart-pid "$SUP" --restart-every 500ms \
            --json-out "$OUT/harness-$mode.json" | tee -a "$SUMMARY" || true
        sleep 1
        say "restart done in the log: $(($(restarts_done) - before)), refused: $(($(restarts_refused) - refused))"
    done
fi

# ---- (c) wrk across restarts ----------------------------------------------------------------
if want wrk; then
    for conn in keepalive close; do
        hdr=()
        [[ $conn == close ]] && hdr=(-H 'Connection: close')
        say ""
        say "== (c) wrk -t2 -c50 -d30s --latency ($conn) with SIGUSR1 every ${EVERY}s x $RESTARTS from t=2s"
        before=$(restarts_done)
        refused=$(restarts_refused)
        f=$OUT/wrk-restarts-$conn.txt
        (
            sleep 2
            for _ in $(seq "$RESTARTS"); do
                kill -USR1 "$SUP"
                sleep "$EVERY"
            done
        ) &
        KILLER=$!
        wrk -t2 -c50 -d30s --latency "${hdr[@]}" "http://127.0.0.1:$PORT/" >"$f"
        wait "$KILLER"
        KILLER=
        sleep 1
        say "$(wrk_line "$f" | awk '{ printf "%.0f req/s  p50 %s  p99 %s  max %s  socket errors connect %d read %d write %d timeout %d  non-2xx %d", $1, $2, $3, $4, $5, $6, $7, $8, $9 }')"
        say "$(grep -E 'requests in' "$f" | sed 's/^ *//')"
        say "restart done in the log: $(($(restarts_done) - before)), refused: $(($(restarts_refused) - refused))"
    done
fi

# ---- (d) handoff ----------------------------------------------------------------------------
if want handoff; then
    say ""
    say "== (d) load_harness --handoff --count 50 (no load)"
    before=$(restarts_done)
    "$BIN/load_harness" --url "http://127.0.0.1:$PORT/pid" --handoff --count 50 \
        --restart-pid "$SUP" --json-out "$OUT/handoff.json" | tee -a "$SUMMARY" || true
    sleep 1
    n=$(($(restarts_done) - before))
    say "restart done in the log: $n"
    # The supervisor's own figure (signal received -> new worker ready) for the same restarts.
    grep 'restart done' "$LOG" | tail -n "$n" | sed -n 's/.*handoff_ms="\([0-9.]*\)".*/\1/p' |
        sort -g >"$OUT/handoff-supervisor-ms.txt"
    say "$(awk '{ v[NR] = $1 } END { if (NR) printf "supervisor handoff_ms (signal -> ready) over %d: median %.2f  p90 %.2f  max %.2f", NR, v[int((NR + 1) / 2)], v[int(NR * 0.9 + 0.999)], v[NR] }' "$OUT/handoff-supervisor-ms.txt")"
fi

# ---- (e) stress: many restarts, few clients ----------------------------------------------------
if want stress; then
    for mode in close keepalive; do
        say ""
        say "== (e) load_harness --mode $mode -c 4: 60 s with SIGUSR1 every 100 ms"
        before=$(restarts_done)
        refused=$(restarts_refused)
        "$BIN/load_harness" --url "http://127.0.0.1:$PORT/" --mode "$mode" -c 4 \
            --duration 60 --restart-pid "$SUP" --restart-every 100ms \
            --json-out "$OUT/stress-$mode.json" | tee -a "$SUMMARY" || true
        sleep 1
        say "restart done in the log: $(($(restarts_done) - before)), refused: $(($(restarts_refused) - refused))"
    done
fi

# ---- afterwards -----------------------------------------------------------------------------
say ""
say "== afterwards"
if kill -0 "$SUP" 2>/dev/null; then
    say "supervisor $SUP still running (same pid)"
else
    say "SUPERVISOR $SUP IS GONE"
fi
say "workers under the supervisor: $(pgrep -P "$SUP" | wc -l) (expect 2: the serving worker and the warm standby)"
say "GET / -> $(curl -fsS "http://127.0.0.1:$PORT/" || echo FAILED)"
say "GET /pid -> $(curl -fsS "http://127.0.0.1:$PORT/pid" || echo FAILED) (first worker was $FIRST_WORKER)"
say "restart done in the log: $(restarts_done); refused: $(restarts_refused); warnings/errors: $(grep -cE ' (WARN|ERROR) ' "$LOG" || true)"
kill -TERM "$SUP"
status=0
wait "$SUP" || status=$?
SUP=
say "apphost exit status after SIGTERM: $status"
say "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
say "results: $OUT"
