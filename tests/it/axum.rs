//! The axum example (`examples/axum_app.rs`) hosted by apphost, tested on the real example
//! binary. It is started through its own command line (`axum_app --motd … serve run -c …`), so
//! every worker is that program started again with the same arguments (`Host::run_with`), and
//! every request goes through hyper, apphost's route table, the tower adapter and axum.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::harness::{
    Hammer, KeepAlive, T, assert_supervised_by, generation_pid, low_port, wait_gone, wait_log_n,
    wait_new_pid,
};
use crate::support::{
    Apphost, BIN, get, h2c_connect, parse_response, raw_exchange, request, wait_until,
};

/// An example program. `cargo test` builds the examples into `target/<profile>/examples/`, next
/// to the directory holding the apphost binary (`CARGO_BIN_EXE_*` names only `[[bin]]`s).
pub(crate) fn example_bin(name: &str) -> PathBuf {
    let dir = Path::new(BIN).parent().expect("the binary's directory");
    let p = dir.join("examples").join(name);
    assert!(
        p.is_file(),
        "{} is missing or stale: `cargo test` builds it (a filtered run needs `cargo build --examples` first)",
        p.display()
    );
    p
}

/// The example's routes on `port`: the router at `/*rest`, and again under `/v2` with the
/// prefix stripped. File watching as given.
fn config(port: u16, prefix: &str, watch_config: bool) -> String {
    format!(
        "graceful: true\n\
         watch: {{ executable: false, config: {watch_config}, settle: 100ms }}\n\
         servers:\n  \
           app:\n    \
             address: \"127.0.0.1:{port}\"\n    \
             routes:\n      \
               \"/*rest\": {{ handler: app, client_addr: true }}\n      \
               \"{prefix}/*rest\": {{ handler: app, strip_prefix: true }}\n"
    )
}

/// `axum_app --motd MOTD serve run -c DIR/server.yaml`, serving.
pub(crate) fn start(config: &str, motd: &str, port: u16) -> Apphost {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.yaml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(example_bin("axum_app"));
    cmd.arg("--motd")
        .arg(motd)
        .args(["serve", "run", "-c"])
        .arg(&path)
        .current_dir(dir.path());
    let host = Apphost::spawn(cmd, dir, path);
    host.wait_serving(port);
    host
}

#[test]
fn json_from_a_path_parameter_the_routers_own_404_and_a_stripped_prefix() {
    let port = low_port();
    let host = start(&config(port, "/v2", false), "hi from the test", port);

    let r = get(port, "/api/users/1");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body_str(), r#"{"id":1,"name":"ada"}"#);
    // JSON in, shared state updated, JSON out.
    let r = request(
        port,
        "POST",
        "/api/users",
        &[("content-type", "application/json")],
        br#"{"name":"grace"}"#,
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.body_str());
    assert_eq!(r.body_str(), r#"{"id":2,"name":"grace"}"#);
    assert_eq!(
        get(port, "/api/users/2").body_str(),
        r#"{"id":2,"name":"grace"}"#
    );

    // The router's own 404s (its JSON fallback, and a handler's), not apphost's text one.
    let r = get(port, "/api/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.body_str(), r#"{"error":"no such route"}"#);
    let r = get(port, "/api/users/99");
    assert_eq!(r.status, 404);
    assert_eq!(r.body_str(), r#"{"error":"no user 99"}"#);

    // Mounted under /v2 with strip_prefix: the router sees its own paths, query and all.
    let r = get(port, "/v2/api/users/1");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), r#"{"id":1,"name":"ada"}"#);
    let r = get(port, "/v2/api/ticks?n=2&ms=1");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str().lines().count(), 2, "{}", r.body_str());
    let r = get(port, "/v2/nope");
    assert_eq!(r.body_str(), r#"{"error":"no such route"}"#);
    // Without strip_prefix the router gets /v2/... itself (its 404).
    let r = get(port, "/v2x/api/users/1");
    assert_eq!(r.status, 404);

    // The worker got the program's own arguments, and the client's address from apphost
    // (`client_addr: true` on `/*rest`; not asked for under `/v2`).
    let r = get(port, "/api/hello");
    assert!(
        r.body_str()
            .starts_with("hi from the test (hit 1, from 127.0.0.1)"),
        "{:?}",
        r.body_str()
    );
    let r = get(port, "/v2/api/hello");
    assert!(
        r.body_str()
            .starts_with("hi from the test (hit 2, from an unknown address)"),
        "{:?}",
        r.body_str()
    );
    drop(host);
}

#[test]
fn a_megabyte_request_body_is_echoed_byte_for_byte() {
    let port = low_port();
    let _host = start(&config(port, "/v2", false), "echo", port);
    // 1 MiB that is not a repeating pattern of any short period.
    let mut body = Vec::with_capacity(1 << 20);
    let mut x: u32 = 0x1234_5678;
    while body.len() < 1 << 20 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        body.extend_from_slice(&x.to_le_bytes());
    }
    for path in ["/api/echo", "/v2/api/echo"] {
        let r = request(
            port,
            "POST",
            path,
            &[("content-type", "application/octet-stream")],
            &body,
        )
        .unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body.len(), body.len(), "{path}");
        assert!(r.body == body, "{path}: the echo differs");
    }
    // Sent chunked, in pieces, over a keep-alive connection: streamed in, streamed back.
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /api/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    for piece in body.chunks(100_000) {
        write!(s, "{:x}\r\n", piece.len()).unwrap();
        s.write_all(piece).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let r = parse_response(&raw, false).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == body, "the chunked echo differs");
}

#[test]
fn a_streaming_response_that_spans_a_restart_completes() {
    let port = low_port();
    let host = start(&config(port, "/v2", false), "stream", port);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    write!(
        s,
        "GET /api/ticks?n=10&ms=200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // Until the first line is in.
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(7).any(|w| w == b"tick 0 ") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the first tick");
        raw.extend_from_slice(&buf[..n]);
    }
    let old = crate::harness::pid_at(port).expect("/pid answers");
    host.signal(Signal::USR1);
    // The new worker takes fresh connections while the stream goes on.
    let new = wait_new_pid(&host, port, old);
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "the restart took until the stream was over ({:?}): it proves nothing",
        started.elapsed()
    );
    s.read_to_end(&mut raw).unwrap();
    let r = parse_response(&raw, false).expect("a complete chunked response");
    assert_eq!(r.status, 200);
    let lines: Vec<String> = r.body_str().lines().map(str::to_string).collect();
    let want: Vec<String> = (0..10).map(|i| format!("tick {i} pid {old}")).collect();
    assert_eq!(
        lines, want,
        "every tick, from the worker that started the stream"
    );
    assert_ne!(new, old);
    wait_gone(old, T, "the old worker, once its stream ended");
}

#[test]
fn fifty_restarts_under_load_fail_no_request() {
    let port = low_port();
    let mut host = start(&config(port, "/v2", false), "load", port);
    let first = crate::harness::pid_at(port).unwrap();
    // New-connection clients (GET /pid), and a keep-alive client on a JSON route that reconnects
    // only when a response says `Connection: close`.
    let hammers: Vec<Hammer> = (0..2).map(|_| Hammer::start(port)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let keep_alive = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = KeepAlive::new(port);
            let (mut ok, mut failures) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match c.get("/api/users/1") {
                    Ok(r) if r.status == 200 && r.body_str() == r#"{"id":1,"name":"ada"}"# => {
                        ok += 1
                    }
                    Ok(r) => failures.push(format!("status {} body {:?}", r.status, r.body_str())),
                    Err(e) => failures.push(e),
                }
            }
            (ok, failures, c.connects)
        })
    };
    let started = Instant::now();
    let mut pids = vec![first];
    for i in 1..=50 {
        let prev = *pids.last().unwrap();
        host.signal(Signal::USR1);
        wait_log_n(&host, "restart done (graceful)", i);
        let new = wait_new_pid(&host, port, prev);
        assert_eq!(Some(new), generation_pid(&host.log(), i as u64 + 1));
        pids.push(new);
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (ka_ok, ka_failures, ka_connects) = keep_alive.join().unwrap();
    let (mut ok, mut failures) = (0, Vec::new());
    for h in hammers {
        let r = h.finish();
        ok += r.ok;
        failures.extend(r.failures);
    }
    assert!(
        failures.is_empty() && ka_failures.is_empty(),
        "failed requests: {} of {} on new connections {:?}; {} of {} keep-alive {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)],
        ka_failures.len(),
        ka_ok + ka_failures.len(),
        &ka_failures[..ka_failures.len().min(5)],
    );
    assert!(ok >= 50 && ka_ok >= 50, "too few requests: {ok}, {ka_ok}");
    assert!(
        ka_connects >= 2,
        "the keep-alive client never moved to a new worker"
    );
    assert_supervised_by(&mut host, *pids.last().unwrap());
    for &p in &pids[..50] {
        wait_gone(p, T, "an old worker");
    }
    eprintln!(
        "50 restarts in {took:?}: {ok} new-connection and {ka_ok} keep-alive requests \
         ({ka_connects} connections), 0 failed"
    );
}

#[test]
fn the_programs_own_cli_checks_and_the_supervisors_preflight_uses_it() {
    let port = low_port();
    let host = start(&config(port, "/v2", true), "cli", port);
    host.wait_log("watching for changes");
    // `check` through the program's own command line.
    let out = Command::new(example_bin("axum_app"))
        .args(["serve", "check", "-c"])
        .arg(&host.config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("route /v2/*rest -> app"), "{stdout}");
    // The program's other commands are its own.
    let out = Command::new(example_bin("axum_app"))
        .arg("routes")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("GET /api/users/{id}"));
    // An edited config is checked by the supervisor (the program started again with its own
    // arguments, as a check) and then served by a worker started the same way.
    std::fs::write(&host.config, config(port, "/v3", true)).unwrap();
    wait_until(T, "the /v3 mount to answer", || {
        (get(port, "/v3/api/users/1").status == 200).then_some(())
    });
    host.wait_log("restarted after the config change");
    assert!(
        get(port, "/api/hello").body_str().starts_with("cli "),
        "the new worker has the program's --motd"
    );
    // A broken config is refused by that check, with its position; the old worker serves on.
    std::fs::write(
        &host.config,
        config(port, "/v4", true).replace("strip_prefix: true", "strip_prefix: maybe"),
    )
    .unwrap();
    host.wait_log("change refused: preflight `check` failed");
    let log = host.log();
    assert!(
        log.contains("strip_prefix") && log.contains("server.yaml:"),
        "the check's error, with its position:\n{log}"
    );
    assert_eq!(get(port, "/v3/api/users/1").status, 200);
}

#[test]
fn a_body_that_fails_mid_response_cuts_it_and_is_logged() {
    let port = low_port();
    let host = start(&config(port, "/v2", false), "fail", port);
    let path = "/api/ticks?n=5&ms=1&fail_at=2";

    // HTTP/1.1, keep-alive asked for: the server closes the connection at the failure, without
    // the last chunk, so the client cannot take the response for a whole one.
    let started = Instant::now();
    let raw = raw_exchange(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the connection was not closed at the failure"
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("tick 1 pid"), "{text}");
    assert!(!text.contains("tick 2"), "{text}");
    assert!(!text.ends_with("0\r\n\r\n"), "ended as if whole: {text}");
    assert!(parse_response(&raw, false).is_err(), "{text}");

    // HTTP/2: that stream is reset; the connection serves on.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use http_body_util::BodyExt;
        let (mut send, _conn) = h2c_connect(port).await.unwrap();
        let req = |p: &str| {
            http::Request::get(format!("http://127.0.0.1:{port}{p}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap()
        };
        let resp = send.send_request(req(path)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let err = resp
            .into_body()
            .collect()
            .await
            .expect_err("the stream is reset, not ended");
        assert!(format!("{err:?}").contains("INTERNAL_ERROR"), "{err:?}");
        let resp = send.send_request(req("/pid")).await.unwrap();
        assert_eq!(resp.status(), 200, "the connection survives the reset");
    });
    host.wait_log("response body failed");
    assert!(
        host.log().contains("the upstream went away"),
        "{}",
        host.log()
    );
}
