#!/usr/bin/env bash
# apphost against the best-built baselines, side by side in one run (issue #15): bare hyper
# (examples/bare_hello.rs, built with the same release profile: codegen-units = 1, thin LTO) and
# nginx with one worker process. Steady-state throughput (wrk, keep-alive and
# `Connection: close`, interleaved rounds, medians and ratios), the server's CPU time per request,
# syscalls per request (all three) and instructions per request (callgrind, the Rust servers).
#
#   bench/versus.sh                    # 5 rounds of 10 s per server and mode, then syscalls and
#                                      # callgrind; ~12 minutes
#   REPS=3 SECS=5 bench/versus.sh
#   ONLY=wrk bench/versus.sh           # a subset of: wrk syscalls instructions
#   PIN=1 ONLY=wrk bench/versus.sh     # server-bound: servers on CPU 0, wrk -t1 on CPU 1
#
# Both Rust servers allocate through mimalloc (the default feature `mimalloc`, which the build
# below keeps on: the `apphost` binary and `bare_hello` declare it as their global allocator), so
# the baseline gets the same allocator as apphost (BENCHMARKS (ae)).
#
# Servers (127.0.0.1 only; everything started is stopped on exit):
#   apphost  `apphost run -c $CONFIG` (default bench/bench-no-standby.yaml): `/` → "Hello\n"
#   bare     `bare_hello PORT`: hyper's http1 connection, tokio's default runtime, same response
#   nginx    Debian's nginx (installed with apt-get if missing), `worker_processes 1`, a generated
#            config: `return 200 "Hello\n"` as text/plain; charset=utf-8, access_log off,
#            keepalive_requests unbounded in practice (hyper's and apphost's have no cap)
#
# wrk: `wrk -t2 -c50 -dSECS` (keep-alive, then with `-H 'Connection: close'`), REPS rounds; in
# each round every server runs once per mode, the order rotating from round to round. The
# server's CPU time (user + system, from /proc/PID/stat of the serving process: apphost's
# worker, nginx's worker) divided by the requests wrk completed is its own cost, which the other
# work on the machine disturbs far less than req/s.
#
# Syscalls: `perf stat` on the syscall tracepoints (`syscalls:sys_enter_*`) of the serving
# process (all its threads) over a `wrk -t2 -c50 -d5s` run per server and mode, divided by the
# requests wrk completed; the summary lists each syscall made at least 0.01 times per request.
#
# Instructions: bench/instructions.sh's counting (callgrind; `wrk -t1 -c8 -d8s`), for apphost and
# bare_hello, and nginx (run with `master_process off` under callgrind).
#
# Binaries come from $BIN (default: a release build in $CARGO_TARGET_DIR, /work/target-bench,
# copied into the output directory). Raw output and the summary: bench/out/versus-<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-5}
SECS=${SECS:-10}
CONNS=${CONNS:-50}
SYS_SECS=${SYS_SECS:-5}
ONLY=${ONLY:-wrk syscalls instructions}
CONFIG=${CONFIG:-bench/bench-no-standby.yaml}
PIN=${PIN:-}
OUT=${OUT:-bench/out/versus-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
source bench/common.sh
bench_pin
bench_binaries
command -v nginx >/dev/null || apt-get install -y nginx >/dev/null
want() { [[ " $ONLY " == *" $1 "* ]]; }
SUMMARY=$OUT/summary
say() { echo "$*" | tee -a "$SUMMARY"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
SERVERS=(apphost bare nginx)
declare -A PORT=([apphost]=18681 [bare]=18682 [nginx]=18683)
declare -A PID

# start_servers [PREFIX...]: the three servers, each under PREFIX (taskset, nothing); sets PID
# to each one's serving process.
start_servers() {
    sed "s/127.0.0.1:18480/127.0.0.1:${PORT[apphost]}/" "$CONFIG" >"$OUT/apphost.yaml"
    "$@" "$BIN/apphost" run -c "$OUT/apphost.yaml" >"$OUT/apphost.log" 2>&1 &
    bench_track $!
    "$@" "$BIN/bare_hello" "${PORT[bare]}" >"$OUT/bare.log" 2>&1 &
    PID[bare]=$!
    bench_track "${PID[bare]}"
    nginx_config "$OUT/nginx.conf" "${PORT[nginx]}"
    "$@" nginx -e "$OUT/nginx/error-start.log" -p "$OUT/nginx" -c "$OUT/nginx.conf" &
    local master=$!
    bench_track "$master"
    wait_http "http://127.0.0.1:${PORT[apphost]}/pid"
    wait_http "http://127.0.0.1:${PORT[bare]}/"
    wait_http "http://127.0.0.1:${PORT[nginx]}/"
    PID[apphost]=$(curl -fsS "http://127.0.0.1:${PORT[apphost]}/pid")
    PID[nginx]=$(pgrep -P "$master" | head -1)
}

# wrk_mode MODE WRK...: run WRK..., with `-H 'Connection: close'` in mode close.
wrk_mode() {
    local mode=$1
    shift
    if [[ $mode == close ]]; then "$@" -H 'Connection: close'; else "$@"; fi
}

say "binaries: apphost $(sha256sum "$BIN/apphost" | cut -c1-12), bare_hello $(sha256sum "$BIN/bare_hello" | cut -c1-12), $(nginx -v 2>&1)"
say "tree ${TREE:-$(git rev-parse --short HEAD 2>/dev/null)}$(git diff --quiet HEAD 2>/dev/null || echo ' (uncommitted changes)')  date $(date -u +%FT%TZ)"
say "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

if want wrk; then
    start_servers "${ON_SERVER[@]}"
    for s in "${SERVERS[@]}"; do "${WRK[@]}" -c"$CONNS" -d2s "http://127.0.0.1:${PORT[$s]}/" >/dev/null; done
    say ""
    say "== ${WRK[*]} -c$CONNS -d${SECS}s, $REPS interleaved rounds${PIN:+ (servers on CPU 0)}"
    for rep in $(seq "$REPS"); do
        # The order rotates: round 1 apphost bare nginx, round 2 bare nginx apphost, ...
        order=()
        for i in 0 1 2; do order+=("${SERVERS[$(((rep - 1 + i) % 3))]}"); done
        for mode in keepalive close; do
            for s in "${order[@]}"; do
                f=$OUT/wrk-$s-$mode-$rep.txt
                say "$(wrk_round "$s" "$mode" "$rep" "${PID[$s]}" "$f" \
                    wrk_mode "$mode" "${WRK[@]}" -c"$CONNS" -d"${SECS}s" "http://127.0.0.1:${PORT[$s]}/")"
            done
        done
    done
    say ""
    say "$(printf '%-10s %-26s %12s %12s %12s %10s %10s %11s' mode median apphost bare nginx app/bare app/nginx bare/nginx)"
    for mode in keepalive close; do
        declare -A rps=() cpu=()
        for s in "${SERVERS[@]}"; do
            rps[$s]=$(for f in "$OUT"/wrk-$s-$mode-*.txt; do awk '/Requests\/sec:/ { print $2 }' "$f"; done | median)
            cpu[$s]=$(cat "$OUT"/wrk-$s-$mode-*.txt.cpu | median)
        done
        ratio() { echo "$1 / $2" | bc -l; }
        say "$(printf '%-10s %-26s %12.0f %12.0f %12.0f %10.3f %10.3f %11.3f' "$mode" "req/s" \
            "${rps[apphost]}" "${rps[bare]}" "${rps[nginx]}" \
            "$(ratio "${rps[apphost]}" "${rps[bare]}")" "$(ratio "${rps[apphost]}" "${rps[nginx]}")" \
            "$(ratio "${rps[bare]}" "${rps[nginx]}")")"
        say "$(printf '%-10s %-26s %12.1f %12.1f %12.1f %10.3f %10.3f %11.3f' "$mode" "server CPU us/request" \
            "${cpu[apphost]}" "${cpu[bare]}" "${cpu[nginx]}" \
            "$(ratio "${cpu[apphost]}" "${cpu[bare]}")" "$(ratio "${cpu[apphost]}" "${cpu[nginx]}")" \
            "$(ratio "${cpu[bare]}" "${cpu[nginx]}")")"
    done
    bench_stop_all
    sleep 1
fi

if want syscalls; then
    command -v perf >/dev/null || apt-get install -y linux-perf >/dev/null
    start_servers
    say ""
    say "== syscalls per request: perf stat -e 'syscalls:sys_enter_*' on the serving process, wrk -t2 -c$CONNS -d${SYS_SECS}s"
    for mode in keepalive close; do
        for s in "${SERVERS[@]}"; do
            url="http://127.0.0.1:${PORT[$s]}/"
            wrk_mode "$mode" wrk -t2 -c"$CONNS" -d1s "$url" >/dev/null
            f=$OUT/syscalls-$s-$mode
            perf stat -x, -o "$f.perf" -e 'syscalls:sys_enter_*' -p "${PID[$s]}" &
            perf_pid=$!
            sleep 0.5
            wrk_mode "$mode" wrk -t2 -c"$CONNS" -d"${SYS_SECS}s" "$url" >"$f.wrk"
            kill -INT "$perf_pid"
            wait "$perf_pid" || true
            n=$(awk '/requests in/ { print $1 }' "$f.wrk")
            # perf -x, lines: count,unit,event,...
            awk -F, -v n="$n" '$3 ~ /sys_enter_/ && $1 ~ /^[0-9]+$/ && $1 > 0 {
                    sub(/.*sys_enter_/, "", $3); printf "%s %.4f\n", $3, $1 / n }' "$f.perf" |
                sort -k2 -gr >"$f"
            total=$(awk '{ t += $2 } END { printf "%.2f", t }' "$f")
            list=$(awk '$2 >= 0.01 { printf "%s %.2f, ", $1, $2 }' "$f")
            say "$(printf '%-8s %-9s %6.2f syscalls/request: %s' "$s" "$mode" "$total" "${list%, }")"
        done
    done
    bench_stop_all
    sleep 1
fi

if want instructions; then
    command -v valgrind >/dev/null || apt-get install -y valgrind >/dev/null
    say ""
    say "== instructions per request: callgrind (bench/instructions.sh), wrk -t1 -c8 -d8s"
    OUT=$OUT/instructions BIN=$BIN VARIANTS="bare apphost" PORT=18690 bench/instructions.sh >/dev/null
    cat "$OUT/instructions/results" >>"$SUMMARY"
    cat "$OUT/instructions/results"
    # nginx in one process (`master_process off`) under callgrind.
    port=18699
    nginx_config "$OUT/nginx-cg.conf" "$port" "master_process off;"
    valgrind --tool=callgrind --callgrind-out-file="$OUT/nginx.cg.%p" \
        nginx -e "$OUT/nginx/error-cg.log" -p "$OUT/nginx" -c "$OUT/nginx-cg.conf" >"$OUT/nginx-cg.log" 2>&1 &
    pid=$!
    bench_track "$pid"
    wait_http "http://127.0.0.1:$port/"
    callgrind_measure nginx "$OUT/nginx.cg.$pid" "$pid" "http://127.0.0.1:$port/" 8 8 | tee -a "$SUMMARY"
    bench_stop_all
    for mode in keepalive close; do
        a=$(cat "$OUT/instructions/instr-apphost-$mode")
        b=$(cat "$OUT/instructions/instr-bare-$mode")
        c=$(cat "$OUT/instr-nginx-$mode")
        say "$(printf 'instructions %-9s apphost %.0f  bare %.0f  nginx %.0f  apphost/bare %.3f' "$mode" "$a" "$b" "$c" "$(echo "$a / $b" | bc -l)")"
    done
fi
say "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "results in $SUMMARY"
