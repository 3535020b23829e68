#!/usr/bin/env python3
"""Drive a headless Chromium through the Chrome DevTools Protocol to click the admin page's
Restart button, accept its confirm() dialog, and check that the page then shows the new worker
pid. Standard library only: the DevTools WebSocket is spoken by hand (client frames masked, text
frames, no extensions), which is all CDP needs.

Usage: cdp_click_restart.py CHROMIUM ADMIN_URL SCREENSHOT_AFTER.png
Exit status 0 when the check passes, 1 otherwise (the reason on stderr).
"""

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

TIMEOUT = 30.0


class WebSocket:
    """A minimal RFC 6455 client: enough for the DevTools protocol."""

    def __init__(self, url):
        assert url.startswith("ws://"), url
        hostport, _, path = url[len("ws://"):].partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise RuntimeError("DevTools closed the connection during the handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"WebSocket handshake refused: {head!r}")

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise RuntimeError("DevTools closed the connection")
            buf += chunk
        return buf

    def send(self, text):
        payload = text.encode()
        header = bytes([0x81])  # FIN + text
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def recv(self):
        message = b""
        while True:
            b0, b1 = self._recv_exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            if b1 & 0x80:
                mask = self._recv_exact(4)
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(self._recv_exact(n)))
            else:
                data = self._recv_exact(n)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise RuntimeError("DevTools closed the WebSocket")
            if opcode in (0x9, 0xA):  # ping/pong: not expected from DevTools; ignore
                continue
            message += data
            if b0 & 0x80:
                return message.decode()


class Cdp:
    def __init__(self, ws_url):
        self.ws = WebSocket(ws_url)
        self.next_id = 0
        self.events = []

    def send(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        return self.next_id

    def call(self, method, **params):
        want = self.send(method, **params)
        deadline = time.time() + TIMEOUT
        while time.time() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == want:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)
        raise RuntimeError(f"no answer to {method}")

    def wait_event(self, name):
        for i, e in enumerate(self.events):
            if e.get("method") == name:
                return self.events.pop(i)
        deadline = time.time() + TIMEOUT
        while time.time() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == name:
                return msg
            self.events.append(msg)
        raise RuntimeError(f"no {name} event within {TIMEOUT}s")

    def evaluate(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        return r.get("result", {}).get("value")

    def text_of(self, element_id):
        return self.evaluate(
            f"(document.getElementById({json.dumps(element_id)}) || {{}}).textContent || null"
        )


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    chromium, url, shot_after = sys.argv[1], sys.argv[2], sys.argv[3]
    port = free_port()
    profile = tempfile.mkdtemp(prefix="apphost-chromium-")
    proc = subprocess.Popen(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            f"--remote-debugging-port={port}", "--remote-allow-origins=*",
            "--window-size=1200,900", "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + TIMEOUT
        targets = None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    targets = [t for t in json.load(r) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        if not targets:
            fail("Chromium's DevTools endpoint did not come up")
        cdp = Cdp(targets[0]["webSocketDebuggerUrl"])
        cdp.call("Page.enable")
        cdp.call("Runtime.enable")

        cdp.call("Page.navigate", url=url)
        cdp.wait_event("Page.loadEventFired")
        old = cdp.text_of("worker-pid")
        page_pid = cdp.text_of("page-pid")
        if not old or old != page_pid:
            fail(f"admin page: worker pid {old!r}, page served by {page_pid!r}")
        print(f"admin page loaded: worker pid {old}")

        # Click Restart: the form's onsubmit asks confirm(); accept it like a user would.
        cdp.send("Runtime.evaluate", expression="document.getElementById('restart').click()")
        dialog = cdp.wait_event("Page.javascriptDialogOpening")
        if dialog["params"].get("type") != "confirm":
            fail(f"expected a confirm() dialog, got {dialog['params']}")
        print(f"confirm dialog: {dialog['params'].get('message')!r}; accepting")
        cdp.call("Page.handleJavaScriptDialog", accept=True)

        # The result page (it names the new pid), then, after its refresh, the admin page again.
        cdp.wait_event("Page.loadEventFired")
        new = cdp.text_of("new-pid")
        banner = cdp.text_of("result")
        if not new:
            fail(f"no new pid on the result page: {banner!r}")
        if new == old:
            fail(f"the worker pid did not change ({old})")
        print(f"result page: {banner!r}")
        shot = cdp.call("Page.captureScreenshot", format="png")
        result_shot = os.path.join(os.path.dirname(shot_after), "admin-restart-result.png")
        with open(result_shot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        deadline = time.time() + TIMEOUT
        shown = None
        while time.time() < deadline:
            cdp.wait_event("Page.loadEventFired")
            shown = cdp.text_of("worker-pid")
            if shown is not None:
                break
        if shown != new or cdp.text_of("page-pid") != new:
            fail(f"admin page after the restart shows {shown!r}, expected {new}")
        print(f"admin page after the restart: worker pid {shown} (was {old})")
        shot = cdp.call("Page.captureScreenshot", format="png")
        with open(shot_after, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        print(f"screenshot after the restart: {shot_after}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
