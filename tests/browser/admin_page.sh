#!/usr/bin/env bash
# Browser check of the admin page (not part of `cargo test`; `.ci/run` runs it):
#   1. installs Debian's chromium if it is missing (skips, exit 0, when it cannot; fails with
#      CI=true);
#   2. starts target/release/apphost (built if missing) with a temporary config: admin on a free
#      127.0.0.1 port, graceful restarts;
#   3. takes a headless screenshot of the admin page: target/admin-page.png;
#   4. with tests/browser/cdp_click_restart.py (Python standard library only, speaking the
#      DevTools protocol), clicks Restart, accepts the confirm() dialog, and checks that the page
#      then shows the new worker pid; screenshots: target/admin-restart-result.png (the result
#      page) and target/admin-page-after-restart.png.
#
# Run from anywhere:  bash tests/browser/admin_page.sh
# CARGO_TARGET_DIR is honoured; CHROMIUM=/path overrides the browser.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/apphost
OUT=$ROOT/target
mkdir -p "$OUT"

# Outside CI a missing tool skips the test (exit 0); in CI (CI=true, as `.ci/run` sets, after
# installing what is missing) it fails.
skip() {
    if [ "${CI:-}" = true ]; then
        echo "admin page browser test: FAIL (CI=true, so not skipped): $*"
        exit 1
    fi
    echo "admin page browser test: SKIPPED: $*"
    exit 0
}

CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$CHROMIUM" ]; then
    echo "chromium not found; installing Debian's package (apt-get install -y chromium)"
    if [ "$(id -u)" -ne 0 ]; then
        skip "chromium is not installed and installing it needs root"
    fi
    if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; } \
        >"$OUT/chromium-install.log" 2>&1; then
        skip "cannot install chromium (see $OUT/chromium-install.log)"
    fi
    CHROMIUM=$(command -v chromium || true)
    [ -n "$CHROMIUM" ] || skip "chromium installed but not on PATH"
fi
command -v python3 >/dev/null || skip "python3 is needed to drive the browser"

if [ ! -x "$BIN" ]; then
    echo "building $BIN"
    cargo build --release --quiet
fi

WORK=$(mktemp -d)
HOST_PID=
cleanup() {
    if [ -n "$HOST_PID" ] && kill -0 "$HOST_PID" 2>/dev/null; then
        kill -TERM "$HOST_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$HOST_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$HOST_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$WORK/server.yaml" <<YAML
graceful: true
shutdown_timeout: 5s
watch: { executable: false, config: false }
servers:
  web:
    address: "127.0.0.1:$PORT"
    admin: { path: /debug/admin }
    routes:
      "/": hello
      "/pid": pid
YAML
mkdir -m 700 "$WORK/run"
XDG_RUNTIME_DIR=$WORK/run "$BIN" run -c "$WORK/server.yaml" >"$WORK/host.log" 2>&1 &
HOST_PID=$!

URL=http://127.0.0.1:$PORT/debug/admin
python3 - "$URL" <<'PY' || { cat "$WORK/host.log"; exit 1; }
import sys, time, urllib.request
deadline = time.time() + 20
while time.time() < deadline:
    try:
        urllib.request.urlopen(sys.argv[1] + "/status", timeout=2).read()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit("the host did not serve the admin page within 20s")
PY
echo "host up: $URL (supervisor pid $HOST_PID)"

PROFILE=$(mktemp -d)
rm -f "$OUT/admin-page.png"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --user-data-dir="$PROFILE" \
    --screenshot="$OUT/admin-page.png" --window-size=1200,900 "$URL" >"$WORK/chromium.log" 2>&1 || true
rm -rf "$PROFILE"
if [ ! -s "$OUT/admin-page.png" ]; then
    cat "$WORK/chromium.log"
    echo "admin page browser test: FAIL: no screenshot"
    exit 1
fi
echo "screenshot: $OUT/admin-page.png"

if python3 tests/browser/cdp_click_restart.py "$CHROMIUM" "$URL" "$OUT/admin-page-after-restart.png"; then
    echo "admin page browser test: PASS"
else
    echo "--- host log ---"
    cat "$WORK/host.log"
    echo "admin page browser test: FAIL"
    exit 1
fi
