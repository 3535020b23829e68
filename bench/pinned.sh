#!/usr/bin/env bash
# Server-bound steady-state throughput: the server on CPU 0, wrk on CPU 1 (`taskset`), so the
# figure is the server's own cost per request, not the share of two cores it wins from wrk.
# (In bench/run.sh both share the two cores, and a server that spends 5 % more CPU per request
# loses only a percent or two of throughput: below this machine's noise.)
#
#   bench/pinned.sh                       # apphost vs bare_hello, REPS=5 rounds of 10 s each mode
#   OLD=/path/to/old/apphost bench/pinned.sh   # also an older apphost build, same rounds
#
# Rounds are interleaved (every server once per round, in the same order) and the table gives
# the median req/s per server and mode, and the ratio of medians to bare hyper. Binaries come
# from $BIN (default: a release build copied to the output directory). 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-5}
SECS=${SECS:-10}
OUT=${OUT:-bench/out/pinned-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
source bench/common.sh
bench_binaries

declare -A port
servers=(bare apphost)
port[bare]=18581
taskset -c 0 "$BIN/bare_hello" 18581 2>/dev/null &
bench_track $!
port[apphost]=18580
sed 's/127.0.0.1:18480/127.0.0.1:18580/' bench/bench.yaml >"$OUT/bench.yaml"
taskset -c 0 "$BIN/apphost" run -c "$OUT/bench.yaml" >"$OUT/apphost.log" 2>&1 &
bench_track $!
if [[ -n ${OLD:-} ]]; then
    servers+=(old)
    port[old]=18582
    cp "$OLD" "$OUT/apphost-old"
    sed 's/127.0.0.1:18480/127.0.0.1:18582/' bench/bench.yaml >"$OUT/bench-old.yaml"
    taskset -c 0 "$OUT/apphost-old" run -c "$OUT/bench-old.yaml" >"$OUT/apphost-old.log" 2>&1 &
    bench_track $!
fi
for s in "${servers[@]}"; do wait_http "http://127.0.0.1:${port[$s]}/"; done

{
    echo "date: $(date -u +%FT%TZ)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "servers on CPU 0, wrk -t1 -c50 -d${SECS}s on CPU 1; $REPS interleaved rounds"
} | tee "$OUT/summary"
for rep in $(seq "$REPS"); do
    for mode in keepalive close; do
        hdr=()
        [[ $mode == close ]] && hdr=(-H 'Connection: close')
        for s in "${servers[@]}"; do
            rps=$(taskset -c 1 wrk -t1 -c50 -d"${SECS}s" "${hdr[@]}" "http://127.0.0.1:${port[$s]}/" |
                awk '/Requests\/sec/ { print $2 }')
            echo "$s $mode $rps" >>"$OUT/results"
            printf 'round %d  %-8s %-9s %9.0f req/s\n' "$rep" "$s" "$mode" "$rps"
        done
    done
done
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
for mode in keepalive close; do
    base=$(awk -v m="$mode" '$1 == "bare" && $2 == m { print $3 }' "$OUT/results" | median)
    for s in "${servers[@]}"; do
        m=$(awk -v s="$s" -v m="$mode" '$1 == s && $2 == m { print $3 }' "$OUT/results" | median)
        printf 'median %-9s %-8s %9.0f req/s  ratio to bare %.3f\n' "$mode" "$s" "$m" \
            "$(echo "$m / $base" | bc -l)"
    done
done | tee -a "$OUT/summary"
echo "results in $OUT"
