//! The guards of issue #14 on the real binary: `max_connections` (the connection past the cap
//! waits in the kernel's queue and is served when another closes), `max_request_body` (413 for
//! a declared or a growing body, per server and per route, for handlers and hosted axum
//! routers alike), a route's `timeout` (504, a fast route unaffected) and `recycle`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Apphost, parse_response, request, unique_port, wait_until};

const T: Duration = Duration::from_secs(30);

/// `guards run -c DIR/server.yaml` (the example program with `upload`, `slow`, `hog` and the
/// axum `echo`), serving `port`.
fn start_example(config: &str, port: u16) -> Apphost {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.yaml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(crate::axum::example_bin("guards"));
    cmd.args(["run", "-c"]).arg(&path).current_dir(dir.path());
    let host = Apphost::spawn(cmd, dir, path);
    host.wait_serving(port);
    host
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s
}

/// Send one keep-alive `GET /pid` on `s` and read its (small, whole) answer.
fn pid_on(s: &mut TcpStream, port: u16) -> Result<String, std::io::Error> {
    write!(s, "GET /pid HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
        if let Ok(r) = parse_response(&got, false) {
            return Ok(r.body_str());
        }
    }
}

#[test]
fn past_max_connections_a_connection_waits_and_is_served_when_one_closes() {
    let port = unique_port();
    let cfg = format!(
        "servers:\n  s:\n    address: \"127.0.0.1:{port}\"\n    max_connections: 8\n    routes:\n      \"/pid\": pid\n"
    );
    let host = Apphost::start(&cfg);
    host.wait_serving(port);
    // Eight keep-alive connections, each served once and kept open.
    let mut open: Vec<TcpStream> = (0..8).map(|_| connect(port)).collect();
    for s in &mut open {
        pid_on(s, port).unwrap();
    }
    // Three more: the kernel completes their handshakes (connect succeeds), but nobody
    // accepts them, so their requests get no answer.
    let mut waiting: Vec<TcpStream> = (0..3).map(|_| connect(port)).collect();
    for s in &mut waiting {
        write!(s, "GET /pid HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    }
    host.wait_log("max_connections reached");
    waiting[0]
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 64];
    match waiting[0].read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the 9th connection was answered or closed at the cap: {other:?}"),
    }
    waiting[0].set_read_timeout(Some(T)).unwrap();
    // One of the eight closes: the oldest waiting connection is accepted and answered (the
    // queue is first in, first out); the next still waits.
    drop(open.pop());
    let n = waiting[0].read(&mut buf).unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    waiting[1]
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    match waiting[1].read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("two connections taken for one place freed: {other:?}"),
    }
    // Every place freed: the rest are served.
    drop(open);
    for s in &mut waiting[1..] {
        s.set_read_timeout(Some(T)).unwrap();
        let n = s.read(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
    // One line when the cap was reached and one when it cleared, not one per connection.
    host.wait_log("below max_connections again");
    let log = host.log();
    assert_eq!(log.matches("max_connections reached").count(), 1, "{log}");
    assert_eq!(
        log.matches("below max_connections again").count(),
        1,
        "{log}"
    );
}

/// The guards example's routes: the server takes bodies up to 1000 bytes, `/big/upload` up to
/// 100,000, `/tiny/upload` up to 10; `/svc/echo` is the axum router; `/slow` takes 3 s with a
/// 500 ms timeout, `/fast` is the same handler without the wait.
fn guards_config(port: u16) -> String {
    format!(
        "servers:\n  s:\n    address: \"127.0.0.1:{port}\"\n    max_request_body: 1000\n    routes:\n      \
         \"/pid\": pid\n      \
         \"/upload\": upload\n      \
         \"/big/upload\": {{ handler: upload, max_request_body: 100000 }}\n      \
         \"/tiny/upload\": {{ handler: upload, max_request_body: 10 }}\n      \
         \"/svc/*rest\": {{ handler: echo, strip_prefix: true }}\n      \
         \"/slow\": {{ handler: slow, delay: 3s, timeout: 500ms }}\n      \
         \"/fast\": {{ handler: slow, delay: 0s, timeout: 500ms }}\n"
    )
}

/// POST `path` with a `Content-Length` body of `n` bytes, over a fresh connection; the whole
/// answer, read until the server closes.
fn post_sized(port: u16, path: &str, n: usize) -> crate::support::Resp {
    request(port, "POST", path, &[], &vec![b'x'; n]).unwrap()
}

/// POST `path` with a chunked body of `chunks` chunks of `size` bytes, then read the answer
/// (the raw text, until the server closes).
fn post_chunked(port: u16, path: &str, chunks: usize, size: usize) -> String {
    let mut s = connect(port);
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'y'; size];
    for _ in 0..chunks {
        // The server may answer and close as soon as the limit is passed: later writes may fail.
        if write!(s, "{size:x}\r\n").is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

#[test]
fn bodies_over_max_request_body_get_413_per_server_and_per_route() {
    let port = unique_port();
    let host = start_example(&guards_config(port), port);
    // A declared length over the server's limit: 413 before the body is read, and the
    // connection closes (the body is left unread).
    let mut s = connect(port);
    write!(
        s,
        "POST /upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 5000\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    // Under the limit, and on the route that allows more: read whole.
    assert_eq!(post_sized(port, "/upload", 1000).body_str(), "1000 bytes\n");
    assert_eq!(
        post_sized(port, "/big/upload", 5000).body_str(),
        "5000 bytes\n"
    );
    // The route that allows less.
    assert_eq!(post_sized(port, "/tiny/upload", 11).status, 413);
    assert_eq!(
        post_sized(port, "/tiny/upload", 10).body_str(),
        "10 bytes\n"
    );
    // A chunked body that grows past the limit: cut with 413 (the handler's own answer to the
    // failed read is replaced), for the server's limit and the routes'.
    let cut = post_chunked(port, "/upload", 3, 400);
    assert!(cut.starts_with("HTTP/1.1 413"), "{cut}");
    assert!(
        cut.to_ascii_lowercase().contains("connection: close"),
        "{cut}"
    );
    let whole = post_chunked(port, "/big/upload", 3, 400);
    assert!(
        whole.starts_with("HTTP/1.1 200") && whole.contains("1200 bytes"),
        "{whole}"
    );
    let tiny = post_chunked(port, "/tiny/upload", 2, 8);
    assert!(tiny.starts_with("HTTP/1.1 413"), "{tiny}");
    // A hosted axum router, which reads the body itself: the same limits.
    assert_eq!(post_sized(port, "/svc/echo", 5000).status, 413);
    assert_eq!(post_sized(port, "/svc/echo", 900).body.len(), 900);
    let svc = post_chunked(port, "/svc/echo", 3, 400);
    assert!(svc.starts_with("HTTP/1.1 413"), "{svc}");
    // Still the first worker, serving.
    assert!(!host.log().contains("restart done"));
    assert_eq!(crate::support::get(port, "/pid").status, 200);
}

#[test]
fn a_route_timeout_answers_504_for_a_slow_handler_and_leaves_fast_routes_alone() {
    let port = unique_port();
    let _host = start_example(&guards_config(port), port);
    // The slow request on a keep-alive connection, a fast one beside it.
    let mut slow = connect(port);
    let start = Instant::now();
    write!(slow, "GET /slow HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    let fast = request(port, "GET", "/fast", &[], b"").unwrap();
    assert_eq!(fast.status, 200);
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "the fast route waited"
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let resp = loop {
        let n = slow.read(&mut buf).unwrap();
        assert!(n > 0, "closed without an answer");
        got.extend_from_slice(&buf[..n]);
        if let Ok(r) = parse_response(&got, false) {
            break r;
        }
    };
    let took = start.elapsed();
    assert_eq!(resp.status, 504, "{}", resp.body_str());
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(2900),
        "504 after {took:?}"
    );
    // The connection goes on: the next request on it is answered.
    let pid = pid_on(&mut slow, port).unwrap();
    assert!(pid.trim().parse::<u32>().is_ok(), "{pid}");
}

#[test]
fn check_validates_the_guard_keys_with_file_line_and_column() {
    let bad = [
        (
            "    max_connections: 0\n",
            "servers.s.max_connections",
            "expected a positive integer",
        ),
        (
            "    max_request_body: 10 parsecs\n",
            "servers.s.max_request_body",
            "invalid size",
        ),
        (
            "    routes:\n      \"/a\": { handler: pid, timeout: soon }\n",
            "servers.s.routes./a.timeout",
            "invalid duration",
        ),
        (
            "    routes:\n      \"/a\": { handler: pid, max_request_body: -1 }\n",
            "servers.s.routes./a.max_request_body",
            "expected a size",
        ),
    ];
    for (extra, key, msg) in bad {
        let cfg = format!("servers:\n  s:\n    address: \"127.0.0.1:1\"\n{extra}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.yaml"), &cfg).unwrap();
        let out = crate::support::run_cli(dir.path(), &["check", "-c", "server.yaml"], &[], T);
        assert_eq!(out.code(), Some(2), "{cfg}\n{}", out.stderr);
        assert!(
            out.stderr.contains(&format!(": {key}: {msg}")) && out.stderr.contains("server.yaml:"),
            "{cfg}\n{}",
            out.stderr
        );
    }
    let recycle_bad = [
        (
            "recycle: { max_requets: 5 }\n",
            "recycle.max_requets",
            "did you mean \"max_requests\"",
        ),
        ("recycle: { jitter: 10% }\n", "recycle", "at least one of"),
        (
            "recycle: { max_age: 1h, jitter: 150% }\n",
            "recycle.jitter",
            "a percentage",
        ),
        (
            "recycle: { max_memory: 0 }\n",
            "recycle.max_memory",
            "must not be zero",
        ),
    ];
    for (top, key, msg) in recycle_bad {
        let cfg = format!("{top}servers:\n  s:\n    address: \"127.0.0.1:1\"\n");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.yaml"), &cfg).unwrap();
        let out = crate::support::run_cli(dir.path(), &["check", "-c", "server.yaml"], &[], T);
        assert_eq!(out.code(), Some(2), "{cfg}\n{}", out.stderr);
        assert!(
            out.stderr.contains("server.yaml:1:")
                && out.stderr.contains(&format!(": {key}: "))
                && out.stderr.contains(msg),
            "{cfg}\n{}",
            out.stderr
        );
    }
    // A good one is printed with its guards.
    let port = unique_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.yaml"), format!(
        "recycle: {{ max_requests: 100, max_memory: 512MiB, max_age: 1h, jitter: 10% }}\nservers:\n  s:\n    address: \"127.0.0.1:{port}\"\n    max_connections: 8\n    max_request_body: 1k\n    routes:\n      \"/pid\": {{ handler: pid, timeout: 2s, max_request_body: none }}\n"
    )).unwrap();
    let out = crate::support::run_cli(dir.path(), &["check", "-c", "server.yaml"], &[], T);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    for want in [
        "recycle: max_requests: 100  max_memory: 536870912 bytes  max_age: 1h  jitter: 10%",
        "max_connections: 8  max_request_body: 1024 bytes",
        "route /pid -> pid  (timeout 2s, max_request_body none)",
    ] {
        assert!(
            out.stdout.contains(want),
            "{want:?} not in:\n{}",
            out.stdout
        );
    }
}

/// `apphost status --json` of `host`: the last restart's trigger.
fn last_trigger(host: &Apphost) -> String {
    let config = host.config.to_str().unwrap().to_string();
    let out = crate::support::run_cli(
        host.dir.path(),
        &["status", "--json", "-c", &config],
        &[],
        T,
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v["supervisor"]["last_restart"]["trigger"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn recycling_after_max_requests_serves_every_request_across_three_workers() {
    use crate::harness::KeepAlive;
    use std::sync::{Arc, Mutex};
    let port = unique_port();
    let cfg = format!(
        "graceful: true\nwatch: {{ executable: false, config: false }}\nrecycle: {{ max_requests: 100 }}\nservers:\n  s:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/pid\": pid\n"
    );
    let host = Arc::new(Apphost::start(&cfg));
    host.wait_serving(port);
    // Requests answered per worker pid, by both clients, in the order the workers answered.
    let served: Arc<Mutex<Vec<(u32, u32)>>> = Arc::default();
    // Note one answer. A worker keeps serving after it passes max_requests until its
    // replacement is ready, and this machine can answer hundreds of requests in that time: once
    // the worker has answered its 100, the client waits (polling the log, not sleeping) for the
    // restart that replaces it before it goes on, so the 350 requests see the recycles.
    let note = {
        let (served, host) = (served.clone(), host.clone());
        move |r: &crate::support::Resp| {
            assert_eq!(r.status, 200, "{}", r.body_str());
            let pid: u32 = r.body_str().trim().parse().unwrap();
            let (n, nth) = {
                let mut s = served.lock().unwrap();
                if !s.iter().any(|(p, _)| *p == pid) {
                    s.push((pid, 0));
                }
                let nth = s.iter().position(|(p, _)| *p == pid).unwrap() + 1;
                s[nth - 1].1 += 1;
                (s[nth - 1].1, nth)
            };
            if n >= 100 {
                // The replacement of the nth worker to answer is the nth restart.
                host.wait_log_count("restart done", nth, T);
            }
        }
    };
    // Two clients at once, 175 requests each: one on a keep-alive connection (reconnecting
    // only when a response says `Connection: close`), one with a new connection per request.
    let keep_alive = {
        let note = note.clone();
        let host = host.clone();
        std::thread::spawn(move || {
            let mut c = KeepAlive::new(port);
            for i in 0..175 {
                let r = c
                    .get("/pid")
                    .unwrap_or_else(|e| panic!("keep-alive #{i}: {e}\n{}", host.log()));
                note(&r);
            }
            c.connects
        })
    };
    for i in 0..175 {
        let r = request(port, "GET", "/pid", &[], b"")
            .unwrap_or_else(|e| panic!("new connection #{i}: {e}\n{}", host.log()));
        note(&r);
    }
    let connects = keep_alive.join().unwrap();
    let served = served.lock().unwrap().clone();
    assert_eq!(served.iter().map(|(_, n)| n).sum::<u32>(), 350);
    assert!(served.len() >= 3, "served by {served:?}\n{}", host.log());
    assert!(
        connects >= 3,
        "the keep-alive client was moved on {connects} time(s)"
    );
    let log = host.log();
    assert!(log.contains("recycling the worker: max_requests"), "{log}");
    assert!(!log.contains("restart refused"), "{log}");
    assert_eq!(last_trigger(&host), "recycle");
}

#[test]
fn recycling_after_max_age_replaces_the_worker_again_and_again() {
    let port = unique_port();
    let cfg = format!(
        "graceful: true\nwatch: {{ executable: false, config: false }}\nrecycle: {{ max_age: 1s }}\nservers:\n  s:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/pid\": pid\n"
    );
    let host = Apphost::start(&cfg);
    let first = host.wait_serving(port);
    let mut seen = vec![first];
    wait_until(T, "three workers in turn", || {
        let r = request(port, "GET", "/pid", &[], b"").expect("every request is served");
        assert_eq!(r.status, 200);
        let pid: u32 = r.body_str().trim().parse().unwrap();
        if !seen.contains(&pid) {
            seen.push(pid);
        }
        (seen.len() >= 3).then_some(())
    });
    let log = host.log();
    assert!(log.contains("recycling the worker: max_age"), "{log}");
    assert_eq!(last_trigger(&host), "recycle");
}

#[test]
fn recycling_after_max_memory_replaces_a_worker_that_grew() {
    let port = unique_port();
    let cfg = format!(
        "graceful: true\nwatch: {{ executable: false, config: false }}\nrecycle: {{ max_memory: 96MiB }}\nservers:\n  s:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/pid\": pid\n      \"/hog\": {{ handler: hog, size: 16777216 }}\n"
    );
    let host = start_example(&cfg, port);
    let first = crate::support::get(port, "/pid")
        .body_str()
        .trim()
        .parse::<u32>()
        .unwrap();
    // Well under the ceiling: nothing happens over a few of the supervisor's looks (1 s apart).
    let quiet = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < quiet {
        let pid: u32 = crate::support::get(port, "/pid")
            .body_str()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pid, first, "recycled while small:\n{}", host.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Grow it past 96 MiB (16 MiB a request, kept): it is replaced.
    for _ in 0..7 {
        let r = crate::support::get(port, "/hog");
        assert_eq!(r.status, 200);
    }
    let new = crate::harness::wait_new_pid(&host, port, first);
    assert_ne!(new, first);
    let log = host.log();
    assert!(log.contains("recycling the worker: max_memory"), "{log}");
    assert_eq!(last_trigger(&host), "recycle");
}

/// Open a WebSocket on the axum example's `/api/ws` with a raw socket: the upgrade's `101`
/// head is read, and the socket is kept (the connection is the application's from then on).
fn websocket(port: u16) -> TcpStream {
    let mut s = connect(port);
    write!(
        s,
        "GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed during the upgrade");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

#[test]
fn upgraded_connections_count_against_max_connections() {
    let port = unique_port();
    let cfg = format!(
        "graceful: true\nwatch: {{ executable: false, config: false }}\nservers:\n  app:\n    address: \"127.0.0.1:{port}\"\n    max_connections: 2\n    routes:\n      \"/*rest\": app\n"
    );
    let host = crate::axum::start(&cfg, "guards", port);
    // Two WebSockets take both places; their HTTP exchanges are over, their sockets are not.
    let first = websocket(port);
    let _second = websocket(port);
    let mut plain = connect(port);
    write!(plain, "GET /pid HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    host.wait_log("max_connections reached");
    plain
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let mut buf = [0u8; 256];
    match plain.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("answered beside two open WebSockets at max_connections 2: {other:?}"),
    }
    // One WebSocket closes: its place is freed and the waiting connection is served.
    drop(first);
    plain.set_read_timeout(Some(T)).unwrap();
    let n = plain.read(&mut buf).unwrap();
    let got = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}
