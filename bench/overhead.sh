#!/usr/bin/env bash
# Where apphost's per-request overhead over bare hyper comes from: wrk (keep-alive) against
# bare_hello plain, with --header-timeout, with --auto, with both (what apphost's connections
# did before 2026-11-29), and apphost itself; REPS rounds interleaved. Prints req/s and the
# server's CPU time per request (user+system from /proc/PID/stat), median over the rounds.
# req/s and CPU time are too noisy on a shared machine to separate these; bench/instructions.sh
# counts instructions instead and is the better tool for the request path's cost.
#
#   bench/overhead.sh            # REPS=3, 8 s per run: ~2 minutes
#
# Binaries come from $BIN (default: a copy of the release build in a temp dir). 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
SECS=${SECS:-8}
TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
tmp=$(mktemp -d)
if [[ -z ${BIN:-} ]]; then
    CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --examples --bins >/dev/null
    cp "$TARGET_DIR/release/apphost" "$TARGET_DIR/release/examples/bare_hello" "$tmp/"
    BIN=$tmp
fi
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; rm -rf "$tmp"' EXIT
"$BIN/apphost" run -c bench/bench.yaml >"$tmp/apphost.log" 2>&1 &
pids+=($!)
variants=(plain header-timeout auto auto+header-timeout)
declare -A port=([apphost]=18480)
p=18482
for v in "${variants[@]}"; do
    flags=()
    [[ $v == *auto* ]] && flags+=(--auto)
    [[ $v == *header-timeout* ]] && flags+=(--header-timeout)
    "$BIN/bare_hello" "$p" "${flags[@]}" 2>/dev/null &
    pids+=($!)
    port[$v]=$p
    declare "pid_$p=$!"
    p=$((p + 1))
done
sleep 1
for _ in $(seq 50); do curl -fsS -o /dev/null http://127.0.0.1:18480/ && break; sleep 0.1; done
worker=$(curl -fsS http://127.0.0.1:18480/pid)
HZ=$(getconf CLK_TCK)
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
for rep in $(seq "$REPS"); do
    for v in "${variants[@]}" apphost; do
        pp=${port[$v]}
        if [[ $v == apphost ]]; then pid=$worker; else eval "pid=\$pid_$pp"; fi
        t0=$(ticks "$pid")
        out=$(wrk -t2 -c50 -d"${SECS}s" "http://127.0.0.1:$pp/")
        t1=$(ticks "$pid")
        n=$(awk '/requests in/ { print $1 }' <<<"$out")
        rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
        cpu=$(echo "($t1 - $t0) * 1000000 / $HZ / $n" | bc -l)
        printf '%s %s %s\n' "$v" "$rps" "$cpu" >>"$tmp/results"
        printf 'run %d  %-22s %9.0f req/s  %5.1f us CPU/req\n' "$rep" "$v" "$rps" "$cpu"
    done
done
echo "median over $REPS runs:"
for v in "${variants[@]}" apphost; do
    rps=$(awk -v v="$v" '$1 == v { print $2 }' "$tmp/results" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    cpu=$(awk -v v="$v" '$1 == v { print $3 }' "$tmp/results" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    printf '  %-22s %9.0f req/s  %5.1f us CPU/req\n' "$v" "$rps" "$cpu"
done
