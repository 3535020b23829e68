#!/usr/bin/env bash
# What adding `x-request-id` to a response's HeaderMap costs by itself, each way `http` offers
# (examples/header_insert.rs): instructions per added header, counted by callgrind, the `none`
# run (the map and the id alone) subtracted. The part of a request id's cost that is `http`'s,
# not apphost's (BENCHMARKS (aj)).
#
#   bench/header_insert.sh                  # ~30 s
#
# The example comes from $BIN (default: the release build in $CARGO_TARGET_DIR, /work/target-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/header-insert-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
command -v valgrind >/dev/null || apt-get install -y valgrind >/dev/null
if [[ -z ${BIN:-} ]]; then
    target=${CARGO_TARGET_DIR:-/work/target-bench}
    CARGO_TARGET_DIR=$target cargo build --release --example header_insert >/dev/null
    cp "$target/release/examples/header_insert" "$OUT/"
    BIN=$OUT
fi
rounds=100000
ir() {
    valgrind --tool=callgrind --callgrind-out-file="$OUT/$1.cg" "$BIN/header_insert" "$1" >/dev/null 2>&1
    awk '/^(totals|summary):/ { print $2; exit }' "$OUT/$1.cg"
}
none=$(ir none)
for way in insert insert-ref insert-str append entry entry-replace; do
    n=$(ir "$way")
    printf '%-11s %6.0f instructions per added header\n' "$way" "$(echo "($n - $none) / $rounds" | bc -l)"
done | tee "$OUT/results"
