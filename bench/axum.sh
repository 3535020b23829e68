#!/usr/bin/env bash
# The same axum router (examples/axum_app.rs) served by apphost and by plain `axum::serve`,
# side by side: throughput (wrk, keep-alive and `Connection: close`, interleaved rounds,
# medians) and instructions per request (callgrind, as bench/instructions.sh counts them).
#
#   bench/axum.sh                    # 5 rounds of 10 s per server and mode, then callgrind
#   REPS=3 SECS=5 bench/axum.sh
#   ONLY=wrk bench/axum.sh           # or ONLY=instructions, or ONLY=syscalls
#   PIN=1 ONLY=wrk bench/axum.sh     # server-bound: servers on CPU 0, wrk -t1 on CPU 1
#
# Syscalls per request (`ONLY=syscalls`, part of the default run): each server runs natively,
# `strace -c -f -p PID` (all its threads; apphost's worker) counts the system calls made during
# a fixed `wrk -t1 -c8 -d5s`, keep-alive then `Connection: close`, divided by the requests wrk
# completed. strace slows the server down, so the request count is not a throughput; the calls
# per request (reads, writes, epoll waits, futex wake-ups between runtime threads) are what the
# figure is for: a server doing more of them per request costs more CPU than its instructions
# say.
#
# Both servers are the one example binary, built once with the release profile:
# `axum_app serve run -c bench/axum.yaml` (apphost: supervisor + worker, warm standby off)
# and `axum_app standalone --addr 127.0.0.1:PORT` (`axum::serve` on a tokio listener, the way
# axum's docs serve a router). The URL is the router's JSON route `/api/users/1` (path
# extractor, shared state behind a lock, serde_json, the trace and compression layers).
# Binaries come from $BIN (default: a release build in $CARGO_TARGET_DIR, /work/target-bench).
# 127.0.0.1 only; everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-5}
SECS=${SECS:-10}
CONNS=${CONNS:-50}
ONLY=${ONLY:-wrk instructions syscalls}
PIN=${PIN:-}
URL_PATH=${URL_PATH:-/api/users/1}
OUT=${OUT:-bench/out/axum-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
source bench/common.sh
bench_pin
if [[ -z ${BIN:-} ]]; then
    target=${CARGO_TARGET_DIR:-/work/target-bench}
    CARGO_TARGET_DIR=$target cargo build --release --example axum_app >/dev/null
    cp "$target/release/examples/axum_app" "$OUT/"
    BIN=$OUT
fi
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
want() { [[ " $ONLY " == *" $1 "* ]]; }
SUMMARY=$OUT/summary
say() { echo "$*" | tee -a "$SUMMARY"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

APPHOST_PORT=18581
AXUM_PORT=18582
sed "s/127.0.0.1:18580/127.0.0.1:$APPHOST_PORT/" bench/axum.yaml >"$OUT/axum.yaml"

say "axum_app: $(sha256sum "$BIN/axum_app" | cut -c1-16)  tree ${TREE:-$(git rev-parse --short HEAD 2>/dev/null)}$(git diff --quiet HEAD 2>/dev/null || echo ' (uncommitted changes)')"
say "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

if want wrk; then
    "${ON_SERVER[@]}" "$BIN/axum_app" serve run -c "$OUT/axum.yaml" >"$OUT/apphost.log" 2>&1 &
    bench_track $!
    "${ON_SERVER[@]}" "$BIN/axum_app" standalone --addr "127.0.0.1:$AXUM_PORT" >"$OUT/axum.log" 2>&1 &
    axum_pid=$!
    bench_track $axum_pid
    wait_http "http://127.0.0.1:$APPHOST_PORT$URL_PATH"
    wait_http "http://127.0.0.1:$AXUM_PORT$URL_PATH"
    worker_pid=$(curl -fsS "http://127.0.0.1:$APPHOST_PORT/pid")
    # CPU time (user + system, all threads) a process has used, in clock ticks: per request, it
    # is the server's own cost, which the other work on this machine disturbs far less than
    # req/s (it takes turns on the CPUs; it does not make a request cost more).
    # Warm-up: one short run each.
    for port in $APPHOST_PORT $AXUM_PORT; do "${WRK[@]}" -c"$CONNS" -d2s "http://127.0.0.1:$port$URL_PATH" >/dev/null; done
    say ""
    say "== ${WRK[*]} -c$CONNS -d${SECS}s $URL_PATH, $REPS interleaved rounds${PIN:+ (servers on CPU 0)}"
    for rep in $(seq "$REPS"); do
        for conn in keepalive close; do
            hdr=()
            [[ $conn == close ]] && hdr=(-H 'Connection: close')
            for who in apphost axum; do
                port=$APPHOST_PORT
                pid=$worker_pid
                [[ $who == axum ]] && port=$AXUM_PORT && pid=$axum_pid
                f=$OUT/wrk-$who-$conn-$rep.txt
                say "$(wrk_round "$who" "$conn" "$rep" "$pid" "$f" \
                    "${WRK[@]}" -c"$CONNS" -d"${SECS}s" "${hdr[@]}" "http://127.0.0.1:$port$URL_PATH")"
            done
        done
    done
    for conn in keepalive close; do
        a=$(for f in "$OUT"/wrk-apphost-$conn-*.txt; do awk '/Requests\/sec:/ { print $2 }' "$f"; done | median)
        b=$(for f in "$OUT"/wrk-axum-$conn-*.txt; do awk '/Requests\/sec:/ { print $2 }' "$f"; done | median)
        say "$(printf 'median %-9s apphost %10.0f  axum::serve %10.0f  ratio %.3f' "$conn" "$a" "$b" "$(echo "$a / $b" | bc -l)")"
        a=$(cat "$OUT"/wrk-apphost-$conn-*.txt.cpu | median)
        b=$(cat "$OUT"/wrk-axum-$conn-*.txt.cpu | median)
        say "$(printf 'median %-9s cpu/req apphost %.1f us  axum::serve %.1f us  apphost/axum %.3f' "$conn" "$a" "$b" "$(echo "$a / $b" | bc -l)")"
    done
    bench_stop_all
    sleep 1
fi

if want instructions; then
    command -v valgrind >/dev/null || apt-get install -y valgrind >/dev/null
    ICONNS=${ICONNS:-8}
    ISECS=${ISECS:-8}
    # measure NAME FILE PID URL: keep-alive and close figures (bench/common.sh), into the summary.
    measure() {
        local line
        callgrind_measure "$@" "$ICONNS" "$ISECS" | while IFS= read -r line; do say "$line"; done
    }
    say ""
    say "== instructions per request: callgrind, wrk -t1 -c$ICONNS -d${ISECS}s $URL_PATH"
    valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$OUT/apphost.cg.%p" \
        "$BIN/axum_app" serve run -c "$OUT/axum.yaml" >"$OUT/apphost-cg.log" 2>&1 &
    bench_track $!
    wait_http "http://127.0.0.1:$APPHOST_PORT/pid"
    worker=$(curl -fsS "http://127.0.0.1:$APPHOST_PORT/pid")
    measure apphost "$OUT/apphost.cg.$worker" "$worker" "http://127.0.0.1:$APPHOST_PORT$URL_PATH"
    bench_stop_all
    sleep 1
    valgrind --tool=callgrind --callgrind-out-file="$OUT/axum.cg.%p" \
        "$BIN/axum_app" standalone --addr "127.0.0.1:$AXUM_PORT" >"$OUT/axum-cg.log" 2>&1 &
    pid=$!
    bench_track $pid
    wait_http "http://127.0.0.1:$AXUM_PORT/pid"
    measure axum "$OUT/axum.cg.$pid" "$pid" "http://127.0.0.1:$AXUM_PORT$URL_PATH"
    bench_stop_all
    for mode in keepalive close; do
        a=$(cat "$OUT/instr-apphost-$mode")
        b=$(cat "$OUT/instr-axum-$mode")
        say "$(printf 'instructions %-9s apphost %.0f  axum::serve %.0f  ratio %.3f' "$mode" "$a" "$b" "$(echo "$a / $b" | bc -l)")"
    done
fi
if want syscalls; then
    command -v strace >/dev/null || apt-get install -y strace >/dev/null
    SCONNS=${SCONNS:-8}
    SSECS=${SSECS:-5}
    say ""
    say "== syscalls per request: strace -c -f -p PID during wrk -t1 -c$SCONNS -d${SSECS}s $URL_PATH"
    "$BIN/axum_app" serve run -c "$OUT/axum.yaml" >"$OUT/apphost-strace.log" 2>&1 &
    bench_track $!
    "$BIN/axum_app" standalone --addr "127.0.0.1:$AXUM_PORT" >"$OUT/axum-strace.log" 2>&1 &
    axum_pid=$!
    bench_track $axum_pid
    wait_http "http://127.0.0.1:$APPHOST_PORT$URL_PATH"
    wait_http "http://127.0.0.1:$AXUM_PORT$URL_PATH"
    worker_pid=$(curl -fsS "http://127.0.0.1:$APPHOST_PORT/pid")
    for who in apphost axum; do
        port=$APPHOST_PORT
        pid=$worker_pid
        [[ $who == axum ]] && port=$AXUM_PORT && pid=$axum_pid
        wrk -t1 -c"$SCONNS" -d2s "http://127.0.0.1:$port$URL_PATH" >/dev/null
        for mode in keepalive close; do
            hdr=()
            [[ $mode == close ]] && hdr=(-H 'Connection: close')
            f=$OUT/strace-$who-$mode.txt
            strace -c -f -p "$pid" -o "$f" 2>/dev/null &
            st=$!
            sleep 1 # attached to every thread before the run starts
            n=$(wrk -t1 -c"$SCONNS" -d"${SSECS}s" "${hdr[@]}" "http://127.0.0.1:$port$URL_PATH" | awk '/requests in/ { print $1 }')
            kill -INT "$st"
            wait "$st" || true
            total=$(awk '$NF == "total" { print $4 }' "$f")
            echo "$total / $n" | bc -l >"$OUT/syscalls-$who-$mode"
            # The calls made at least once per 20 requests, each per request.
            each=$(awk -v n="$n" '$1 ~ /^[0-9.]+$/ && $NF != "total" && $4 / n >= 0.05 { printf "%s %.3f  ", $NF, $4 / n }' "$f")
            say "$(printf '%-8s %-9s %7d requests  %6.3f syscalls/request  (%s)' "$who" "$mode" "$n" "$(cat "$OUT/syscalls-$who-$mode")" "$each")"
        done
    done
    bench_stop_all
    sleep 1
fi
say "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "results in $SUMMARY"
