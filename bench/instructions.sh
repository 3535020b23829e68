#!/usr/bin/env bash
# Instructions per request: apphost's worker vs bare hyper (examples/bare_hello.rs), counted by
# valgrind's callgrind. Unlike req/s on this shared 2-core VM, the count hardly moves from run to
# run, so it shows what a change to the request path costs or saves.
#
#   bench/instructions.sh                 # both servers, keep-alive and close, ~2 minutes
#   VARIANTS="apphost bare" bench/instructions.sh
#   SECS=5 CONNS=8 bench/instructions.sh
#
# For each server: start it under `valgrind --tool=callgrind` (apphost with --trace-children, so
# its worker is counted too), warm up with wrk for 2 s, zero the worker's counters
# (`callgrind_control -z`), run `wrk -t1 -cCONNS -dSECS` (keep-alive, then with
# `Connection: close`), dump the counters (`callgrind_control -d`) and divide the instructions
# executed (Ir, all threads) by the requests wrk completed. The dumps stay in the output
# directory for `callgrind_annotate` (the release profile keeps line tables).
#
# bare_hello variants: `bare` (hyper http1), `bare-auto` (hyper-util's auto builder), and
# `bare-auto-timer` (auto builder + header-read timer: what apphost's connections use).
# apphost variants: `apphost` (bench/bench-no-standby.yaml: nothing observed), `apphost-accesslog`
# (bench/bench-access-log.yaml: a JSON access log to a file, request ids; log level warn, so the
# request's tracing span is disabled), `apphost-accesslog-info` (the same at log level info,
# where the span is recorded), `apphost-metrics` (bench/bench-metrics.yaml: a `metrics` route, so
# every request is counted), `apphost-both` (the JSON access log and metrics), `apphost-both-noecho`
# (the same with `echo_id: false`: ids logged, not returned in responses).
#
# nginx variants (Debian's nginx, one process): `nginx` (`/` answered by `return 200`, no log) and
# `nginx-log` (the same with a buffered JSON access log of the same fields and the request id in
# every response: the peer's cost for what `apphost-accesslog` does; nginx has no built-in
# per-route metrics to compare `apphost-metrics` with).
#
# Binaries come from $BIN (default: the release build in $CARGO_TARGET_DIR, /work/target-bench).
# 127.0.0.1 only; everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-8}
CONNS=${CONNS:-8}
VARIANTS=${VARIANTS:-bare bare-auto bare-auto-timer apphost}
OUT=${OUT:-bench/out/instructions-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
# Absolute: the access log's path in the generated configs is resolved from the config's own directory.
OUT=$(cd "$OUT" && pwd)
source bench/common.sh
bench_binaries
command -v valgrind >/dev/null || apt-get install -y valgrind >/dev/null

# measure NAME FILE PID URL: keep-alive and close figures for one server (bench/common.sh).
measure() { callgrind_measure "$@" "$CONNS" "$SECS" | tee -a "$OUT/results"; }

port=${PORT:-18490}
for v in $VARIANTS; do
    port=$((port + 1))
    case $v in
    apphost | apphost-accesslog | apphost-accesslog-info | apphost-metrics | apphost-both | apphost-both-noecho)
        case $v in
        apphost) cfg=bench/bench-no-standby.yaml ;;
        apphost-metrics) cfg=bench/bench-metrics.yaml ;;
        apphost-both*) cfg=bench/bench-both.yaml ;;
        *) cfg=bench/bench-access-log.yaml ;;
        esac
        sed "s/127.0.0.1:18480/127.0.0.1:$port/" "$cfg" >"$OUT/$v.yaml"
        [[ $v == *-info ]] && sed -i 's/level: "warn,apphost::supervisor=info"/level: info/' "$OUT/$v.yaml"
        [[ $v == *-noecho ]] && sed -i 's/format: json }/format: json, echo_id: false }/' "$OUT/$v.yaml"
        sed -i "s|path: access.log|path: $OUT/$v.access.log|" "$OUT/$v.yaml"
        valgrind --tool=callgrind --trace-children=yes \
            --callgrind-out-file="$OUT/$v.cg.%p" \
            "$BIN/apphost" run -c "$OUT/$v.yaml" >"$OUT/$v.log" 2>&1 &
        bench_track $!
        wait_http "http://127.0.0.1:$port/pid"
        worker=$(curl -fsS "http://127.0.0.1:$port/pid")
        measure "$v" "$OUT/$v.cg.$worker" "$worker" "http://127.0.0.1:$port/" ;;
    bare | bare-auto | bare-auto-timer)
        flags=()
        [[ $v == bare-auto* ]] && flags+=(--auto)
        [[ $v == *timer ]] && flags+=(--header-timeout)
        valgrind --tool=callgrind --callgrind-out-file="$OUT/$v.cg.%p" \
            "$BIN/bare_hello" "$port" "${flags[@]}" >"$OUT/$v.log" 2>&1 &
        pid=$!
        bench_track "$pid"
        wait_http "http://127.0.0.1:$port/"
        measure "$v" "$OUT/$v.cg.$pid" "$pid" "http://127.0.0.1:$port/" ;;
    nginx | nginx-log)
        # nginx in one process (`master_process off`); `nginx-log`: what apphost's access log
        # and request ids do, done nginx's way (a buffered JSON log, the client's
        # `x-request-id` or nginx's own `$request_id`, echoed in the response).
        http= location=
        if [[ $v == nginx-log ]]; then
            http="    map \$http_x_request_id \$reqid { default \$http_x_request_id; \"\" \$request_id; }
    log_format json escape=json '{\"time\":\"\$time_iso8601\",\"client\":\"\$remote_addr\",\"method\":\"\$request_method\",\"path\":\"\$request_uri\",\"status\":\$status,\"bytes\":\$body_bytes_sent,\"duration_ms\":\$request_time,\"protocol\":\"\$server_protocol\",\"user_agent\":\"\$http_user_agent\",\"request_id\":\"\$reqid\"}';"
            location="            access_log $OUT/$v.access.log json buffer=64k flush=1s;
            add_header X-Request-ID \$reqid always;"
        fi
        command -v nginx >/dev/null || apt-get install -y nginx >/dev/null
        nginx_config "$OUT/$v.conf" "$port" "master_process off;" "$http" "$location"
        valgrind --tool=callgrind --callgrind-out-file="$OUT/$v.cg.%p" \
            nginx -e "$OUT/nginx/error-$v.log" -p "$OUT/nginx" -c "$OUT/$v.conf" >"$OUT/$v.log" 2>&1 &
        pid=$!
        bench_track "$pid"
        wait_http "http://127.0.0.1:$port/"
        measure "$v" "$OUT/$v.cg.$pid" "$pid" "http://127.0.0.1:$port/" ;;
    *) echo "unknown variant $v" >&2; exit 2 ;;
    esac
    bench_stop_all
done
echo "results in $OUT/results"
