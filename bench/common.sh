# Shared by bench/instructions.sh and bench/pinned.sh (sourced, from the repository root).
#
#   bench_binaries          sets BIN: $BIN if given, else a release build of apphost and
#                           bare_hello ($CARGO_TARGET_DIR, default /work/target-bench) copied
#                           into $OUT, so a rebuild elsewhere cannot change them mid-run
#   bench_track PID         stop PID (SIGTERM) when the script exits, or at bench_stop_all
#   bench_stop_all          stop everything tracked so far
#   wait_http URL           poll URL until it answers (30 s; valgrind starts slowly)
#   nginx_config FILE PORT  an nginx config with one worker answering `/` (extra lines optional)

bench_binaries() {
    if [[ -z ${BIN:-} ]]; then
        local target=${CARGO_TARGET_DIR:-/work/target-bench}
        CARGO_TARGET_DIR=$target cargo build --release --examples --bins >/dev/null
        cp "$target/release/apphost" "$target/release/examples/bare_hello" "$OUT/"
        BIN=$OUT
    fi
    command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
}

# bench_pin: with PIN set, the servers run on CPU 0 and wrk (one thread) on CPU 1 (`taskset`):
# each server's own cost, not the share of two cores it wins. Sets ON_SERVER and WRK.
bench_pin() {
    if [[ -n ${PIN:-} ]]; then
        ON_SERVER=(taskset -c 0)
        WRK=(taskset -c 1 wrk -t1)
    else
        ON_SERVER=()
        WRK=(wrk -t2)
    fi
}

# bench_apphost_harness DIR: unless $BIN names a directory with them, build the release apphost and
# load_harness and copy them into DIR (so a rebuild cannot change them mid-run); sets BIN.
bench_apphost_harness() {
    if [[ -z ${BIN:-} ]]; then
        local target=${CARGO_TARGET_DIR:-/work/target-bench}
        CARGO_TARGET_DIR=$target cargo build --release -p apphost --bin apphost \
            --example load_harness >/dev/null
        cp "$target/release/apphost" "$target/release/examples/load_harness" "$1/"
        BIN=$1
    fi
}

BENCH_PIDS=()
bench_track() { BENCH_PIDS+=("$1"); }
bench_stop_all() {
    local p
    for p in "${BENCH_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    BENCH_PIDS=()
}
trap bench_stop_all EXIT

wait_http() {
    for _ in $(seq 300); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "no answer from $1" >&2
    return 1
}

# callgrind_measure NAME FILE PID URL CONNS SECS: instructions per request of one server running
# under callgrind (output file FILE, dumps FILE.1, FILE.2, ...), keep-alive then with
# `Connection: close`: warm up with wrk, zero the counters, run `wrk -t1 -cCONNS -dSECS`, dump
# the counters and divide the instructions executed (Ir, all threads) by the requests wrk
# completed. Prints one line per mode and writes the figure to $OUT/instr-NAME-MODE.
callgrind_measure() {
    local name=$1 file=$2 pid=$3 url=$4 conns=$5 secs=$6 mode n before dump ir
    wrk -t1 -c"$conns" -d2s "$url" >/dev/null
    for mode in keepalive close; do
        local hdr=()
        [[ $mode == close ]] && hdr=(-H 'Connection: close')
        callgrind_control -z "$pid" >/dev/null 2>&1
        n=$(wrk -t1 -c"$conns" -d"${secs}s" "${hdr[@]}" "$url" | awk '/requests in/ { print $1 }')
        before=$(callgrind_dumps "$file")
        callgrind_control -d "$mode" "$pid" >/dev/null 2>&1
        for _ in $(seq 100); do
            [[ $(callgrind_dumps "$file") -gt $before ]] && break
            sleep 0.1
        done
        dump=$(ls -t "$file".* | head -1)
        ir=$(awk '/^(totals|summary):/ { print $2; exit }' "$dump")
        echo "$ir / $n" | bc -l >"$OUT/instr-$name-$mode"
        printf '%-16s %-9s %8d requests  %9.0f instructions/request  (%s)\n' \
            "$name" "$mode" "$n" "$(cat "$OUT/instr-$name-$mode")" "$(basename "$dump")"
    done
}

# callgrind_dumps FILE: how many dumps of FILE exist.
callgrind_dumps() { compgen -G "$1.*" | wc -l || true; }

# A process's CPU time so far (user + system), in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# wrk_round NAME MODE REP PID FILE CMD...: run one wrk command CMD (its output to FILE), write the
# server's CPU time per request in µs (PID's user + system time over the requests wrk completed)
# to FILE.cpu, and print the round's summary line.
wrk_round() {
    local name=$1 mode=$2 rep=$3 pid=$4 f=$5 t0 t1 n rps errs
    shift 5
    t0=$(cpu_ticks "$pid")
    "$@" >"$f"
    t1=$(cpu_ticks "$pid")
    n=$(awk '/requests in/ { print $1 }' "$f")
    echo "($t1 - $t0) * 1000000 / $(getconf CLK_TCK) / $n" | bc -l >"$f.cpu"
    rps=$(awk '/Requests\/sec:/ { print $2 }' "$f")
    errs=$(awk '/Socket errors|Non-2xx/ { printf "%s ", $0 }' "$f")
    printf '%-8s %-9s round %d: %10.0f req/s  cpu %5.1f us/req %s' "$name" "$mode" "$rep" "$rps" "$(cat "$f.cpu")" "$errs"
}

# nginx_config FILE PORT [MAIN] [HTTP] [LOCATION]: nginx with one worker, `/` → "Hello\n", its
# files under $OUT/nginx; MAIN, HTTP and LOCATION are extra lines for those contexts.
nginx_config() {
    local file=$1 port=$2 extra=${3:-} http=${4:-} location=${5:-}
    mkdir -p "$OUT/nginx"
    cat >"$file" <<EOF
# Generated by bench/common.sh (nginx_config).
$extra
worker_processes 1;
daemon off;
pid $OUT/nginx/nginx-$port.pid;
error_log $OUT/nginx/error-$port.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    server_tokens off;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    client_body_temp_path $OUT/nginx/body;
    proxy_temp_path $OUT/nginx/proxy;
    fastcgi_temp_path $OUT/nginx/fastcgi;
    uwsgi_temp_path $OUT/nginx/uwsgi;
    scgi_temp_path $OUT/nginx/scgi;
$http
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            default_type "text/plain; charset=utf-8";
$location
            return 200 "Hello\n";
        }
    }
}
EOF
}
