# Shared by bench/instructions.sh and bench/pinned.sh (sourced, from the repository root).
#
#   bench_binaries          sets BIN: $BIN if given, else a release build of apphost and
#                           bare_hello ($CARGO_TARGET_DIR, default /work/target-bench) copied
#                           into $OUT, so a rebuild elsewhere cannot change them mid-run
#   bench_track PID         stop PID (SIGTERM) when the script exits, or at bench_stop_all
#   bench_stop_all          stop everything tracked so far
#   wait_http URL           poll URL until it answers (30 s; valgrind starts slowly)

bench_binaries() {
    if [[ -z ${BIN:-} ]]; then
        local target=${CARGO_TARGET_DIR:-/work/target-bench}
        CARGO_TARGET_DIR=$target cargo build --release --examples --bins >/dev/null
        cp "$target/release/apphost" "$target/release/examples/bare_hello" "$OUT/"
        BIN=$OUT
    fi
    command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
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
