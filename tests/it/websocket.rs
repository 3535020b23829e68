//! WebSockets and server-sent events across restarts, on the axum example
//! (`examples/axum_app.rs`: `/api/ws` is an echo that greets with its worker's pid and sends
//! close 1001 when [`apphost::draining`] resolves, unless `?drain=ignore`; `/api/events` is an
//! SSE stream that ends with a `retry:` hint at the drain and resumes from `Last-Event-ID`).
//! Real clients: tokio-tungstenite for WebSockets, a raw socket for SSE.

use std::collections::{BTreeSet, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustix::process::Signal;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::axum::start;
use crate::harness::{Hammer, T, generation_pid, low_port, pid_at, wait_gone, wait_log_n};
use crate::support::{Apphost, get, parse_response, wait_until};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The example's router at `/*rest` on `port`, with the admin routes (for the connection count)
/// and `extra` top-level keys. No file watching: restarts happen when a test signals.
pub(crate) fn config(port: u16, extra: &str) -> String {
    format!(
        "graceful: true\n\
         {extra}\
         watch: {{ executable: false, config: false }}\n\
         servers:\n  \
           app:\n    \
             address: \"127.0.0.1:{port}\"\n    \
             admin: {{ path: /debug/admin }}\n    \
             routes:\n      \
               \"/*rest\": app\n"
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Open `/api/ws{query}` and read its greeting: the socket and the serving worker's pid.
async fn connect(port: u16, query: &str) -> Result<(Ws, u32), String> {
    let url = format!("ws://127.0.0.1:{port}/api/ws{query}");
    let (mut ws, resp) = tokio_tungstenite::connect_async(&url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if resp.status() != 101 {
        return Err(format!("status {}", resp.status()));
    }
    match next(&mut ws).await {
        Event::Text(t) => {
            let pid = t
                .strip_prefix("hello pid ")
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("greeting {t:?}"))?;
            Ok((ws, pid))
        }
        other => Err(format!("no greeting: {other:?}")),
    }
}

/// What the client reads next.
#[derive(Debug, PartialEq)]
enum Event {
    Text(String),
    Close(Option<(u16, String)>),
    /// The stream ended, or failed, without a close frame.
    End(String),
}

async fn next<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Event
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(T, ws.next()).await;
        return match m {
            Err(_) => Event::End(format!("nothing for {T:?}")),
            Ok(None) => Event::End("end of stream".into()),
            Ok(Some(Err(e))) => Event::End(e.to_string()),
            Ok(Some(Ok(Message::Text(t)))) => Event::Text(t.to_string()),
            Ok(Some(Ok(Message::Close(c)))) => Event::Close(
                c.map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string())),
            ),
            Ok(Some(Ok(_))) => continue,
        };
    }
}

/// After a close frame: read to the end (tungstenite answers the close meanwhile).
async fn finish<S>(mut ws: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(T, async { while ws.next().await.is_some() {} }).await;
}

/// `worker.connections` from the admin status (the asking request included).
pub(crate) fn admin_connections(port: u16) -> u64 {
    let r = get(port, "/debug/admin/status?format=json");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let v: serde_json::Value = serde_json::from_str(&r.body_str()).expect("JSON status");
    v["worker"]["connections"]
        .as_u64()
        .expect("worker.connections")
}

#[test]
fn messages_flow_and_a_restart_says_going_away_and_the_client_lands_on_the_new_worker() {
    let port = low_port();
    let host = start(&config(port, ""), "ws", port);
    runtime().block_on(async {
        let (mut ws, old) = connect(port, "").await.unwrap();
        assert_eq!(Some(old), pid_at(port), "greeted by another process");
        for i in 0..20 {
            let m = format!("message {i} {}", "x".repeat(i * 100));
            ws.send(Message::Text(m.clone().into())).await.unwrap();
            assert_eq!(next(&mut ws).await, Event::Text(m));
        }
        // Upgraded, it is still a connection of this worker: the status counts it.
        assert_eq!(
            admin_connections(port),
            2,
            "the WebSocket and the asking request"
        );

        host.signal(Signal::USR1);
        // The application's own goodbye, as soon as the drain begins.
        assert_eq!(
            next(&mut ws).await,
            Event::Close(Some((1001, "restarting".into())))
        );
        finish(ws).await;
        let (mut ws, new) = connect(port, "").await.unwrap();
        assert_ne!(new, old, "reconnected to the draining worker");
        assert_eq!(Some(new), generation_pid(&host.log(), 2));
        ws.send(Message::Text("after".into())).await.unwrap();
        assert_eq!(next(&mut ws).await, Event::Text("after".into()));
        // The old worker ends with its last connection, long before shutdown_timeout (60 s).
        let drained = Instant::now();
        wait_gone(old, Duration::from_secs(10), "the old worker");
        eprintln!("old worker gone {:?} after the close", drained.elapsed());
        // Dropped by the application, no longer counted.
        ws.close(None).await.unwrap();
        finish(ws).await;
        wait_until(T, "the closed WebSocket to stop counting", || {
            (admin_connections(port) == 1).then_some(())
        });
    });
}

#[test]
fn an_open_websocket_the_application_ignores_is_closed_at_stream_grace_and_the_worker_exits_then() {
    let port = low_port();
    let host = start(
        &config(port, "stream_grace: 1500ms\nshutdown_timeout: 30s\n"),
        "grace",
        port,
    );
    runtime().block_on(async {
        let (mut ws, old) = connect(port, "?drain=ignore").await.unwrap();
        ws.send(Message::Text("hi".into())).await.unwrap();
        assert_eq!(next(&mut ws).await, Event::Text("hi".into()));
        let signalled = Instant::now();
        host.signal(Signal::USR1);
        // The host's close frame: 1001, no reason (the application's says "restarting").
        assert_eq!(
            next(&mut ws).await,
            Event::Close(Some((1001, String::new())))
        );
        let closed_after = signalled.elapsed();
        finish(ws).await;
        closed_at_grace_then_gone(&host, old, signalled, closed_after);
        // The new worker serves WebSockets.
        let (_ws, new) = connect(port, "?drain=ignore").await.unwrap();
        assert_eq!(Some(new), generation_pid(&host.log(), 2));
    });
}

/// A stream the host closed `closed_after` the restart signal (at `signalled`), with a
/// `stream_grace` of 1.5 s and a `shutdown_timeout` of 30 s: not before the grace, and the old
/// worker `old` exits then, not at `shutdown_timeout`.
pub(crate) fn closed_at_grace_then_gone(
    host: &Apphost,
    old: u32,
    signalled: Instant,
    closed_after: Duration,
) {
    wait_gone(old, Duration::from_secs(30), "the old worker");
    let gone_after = signalled.elapsed();
    eprintln!(
        "stream_grace 1.5s: closed after {closed_after:?}, old worker gone after {gone_after:?}"
    );
    // Not before stream_grace (counted from the drain, which follows the signal) ...
    assert!(
        closed_after >= Duration::from_millis(1500),
        "{closed_after:?}"
    );
    // ... and the worker exits then, not at shutdown_timeout (30 s).
    assert!(gone_after < Duration::from_secs(10), "{gone_after:?}");
    assert!(
        !host.log().contains("shutdown_timeout reached"),
        "{}",
        host.log()
    );
}

/// The echo client of the restart test: keeps a window of numbered messages in flight, and after
/// each close (or failure) reconnects and re-sends what was not echoed yet.
struct EchoReport {
    sent: u64,
    acked: BTreeSet<u64>,
    failures: Vec<String>,
    closes: Vec<Option<(u16, String)>>,
}

async fn echo_client(port: u16, stop: Arc<AtomicBool>, pids: Arc<Mutex<Vec<u32>>>) -> EchoReport {
    let mut rep = EchoReport {
        sent: 0,
        acked: BTreeSet::new(),
        failures: Vec::new(),
        closes: Vec::new(),
    };
    let mut unacked: VecDeque<u64> = VecDeque::new();
    while !(stop.load(Ordering::Relaxed) && unacked.is_empty()) {
        let (mut ws, pid) = match connect(port, "").await {
            Ok(c) => c,
            Err(e) => {
                rep.failures.push(e);
                if rep.failures.len() > 20 {
                    return rep;
                }
                continue;
            }
        };
        pids.lock().unwrap().push(pid);
        let mut pending: VecDeque<u64> = unacked.iter().copied().collect();
        loop {
            // Re-send what is unacknowledged, then keep up to 8 new messages in flight.
            let next_msg = match pending.pop_front() {
                Some(n) => Some(n),
                None if unacked.len() < 8 && !stop.load(Ordering::Relaxed) => {
                    let n = rep.sent;
                    rep.sent += 1;
                    unacked.push_back(n);
                    Some(n)
                }
                None => None,
            };
            if let Some(n) = next_msg {
                if ws.send(Message::Text(format!("{n}").into())).await.is_err() {
                    // Closed under us: the close frame is read below.
                    pending.clear();
                } else {
                    continue;
                }
            }
            if unacked.is_empty() {
                let _ = ws.close(None).await;
                finish(ws).await;
                break;
            }
            match next(&mut ws).await {
                Event::Text(t) => {
                    let n: u64 = t.parse().unwrap_or(u64::MAX);
                    // Echoes come back in order; a re-sent message may be echoed twice.
                    if let Some(i) = unacked.iter().position(|&u| u == n) {
                        unacked.remove(i);
                        rep.acked.insert(n);
                    } else if !rep.acked.contains(&n) {
                        rep.failures.push(format!("unexpected echo {t:?}"));
                    }
                }
                Event::Close(c) => {
                    rep.closes.push(c);
                    finish(ws).await;
                    break;
                }
                Event::End(e) => {
                    rep.failures
                        .push(format!("ended without a close frame: {e}"));
                    break;
                }
            }
        }
    }
    rep
}

#[test]
fn an_echo_client_that_resends_loses_nothing_over_twenty_restarts_under_load() {
    let port = low_port();
    let host = start(&config(port, ""), "echo", port);
    let stop = Arc::new(AtomicBool::new(false));
    let pids = Arc::new(Mutex::new(Vec::new()));
    let client = {
        let (stop, pids) = (stop.clone(), pids.clone());
        std::thread::spawn(move || runtime().block_on(echo_client(port, stop, pids)))
    };
    let hammers: Vec<Hammer> = (0..2).map(|_| Hammer::start(port)).collect();
    wait_until(T, "the echo client to connect", || {
        (!pids.lock().unwrap().is_empty()).then_some(())
    });
    let started = Instant::now();
    for i in 1..=20u64 {
        host.signal(Signal::USR1);
        wait_log_n(&host, "restart done (graceful)", i as usize);
        let new = wait_until(T, "the new generation's pid", || {
            generation_pid(&host.log(), i + 1)
        });
        // The echo client was told to go away and is now on the new worker.
        wait_until(
            T,
            &format!("the echo client on generation {}", i + 1),
            || pids.lock().unwrap().contains(&new).then_some(()),
        );
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let rep = client.join().unwrap();
    let (mut ok, mut failures) = (0, Vec::new());
    for h in hammers {
        let r = h.finish();
        ok += r.ok;
        failures.extend(r.failures);
    }
    assert!(
        failures.is_empty(),
        "{} of {} HTTP requests failed: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(rep.failures.is_empty(), "echo client: {:?}", rep.failures);
    let lost: Vec<u64> = (0..rep.sent).filter(|n| !rep.acked.contains(n)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} messages lost: {:?}",
        lost.len(),
        rep.sent,
        &lost[..lost.len().min(10)]
    );
    let pids = pids.lock().unwrap().clone();
    assert_eq!(
        pids.iter().collect::<BTreeSet<_>>().len(),
        21,
        "one connection per worker: {pids:?}"
    );
    assert!(
        rep.closes
            .iter()
            .filter(|c| **c == Some((1001, "restarting".into())))
            .count()
            >= 20,
        "closes: {:?}",
        rep.closes
    );
    assert!(
        rep.sent >= 100 && ok >= 100,
        "too little traffic: {} messages, {ok} requests",
        rep.sent
    );
    eprintln!(
        "20 restarts in {took:?}: {} WebSocket messages echoed, {ok} HTTP requests, 0 lost or failed",
        rep.sent
    );
}

/// Read from `s` until `raw` holds `needle`.
fn read_until(s: &mut TcpStream, raw: &mut Vec<u8>, needle: &[u8]) {
    let mut buf = [0u8; 4096];
    while !raw.windows(needle.len()).any(|w| w == needle) {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before {:?}: {}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(raw)
        );
        raw.extend_from_slice(&buf[..n]);
    }
}

/// The events of an SSE body: each a list of `field: value` lines.
fn sse_events(body: &str) -> Vec<Vec<String>> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| e.lines().map(str::to_string).collect())
        .collect()
}

fn field<'a>(event: &'a [String], name: &str) -> Option<&'a str> {
    event
        .iter()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

#[test]
fn an_event_stream_ends_with_a_retry_hint_at_the_drain_and_resumes_on_the_new_worker() {
    let port = low_port();
    let host = start(&config(port, ""), "sse", port);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let open = |last: Option<u64>| {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let last = last.map_or(String::new(), |l| format!("Last-Event-ID: {l}\r\n"));
        write!(
            s,
            "GET /api/events?ms=50 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{last}Connection: close\r\n\r\n"
        )
        .unwrap();
        s
    };
    let mut s = open(None);
    let mut raw = Vec::new();
    read_until(&mut s, &mut raw, b"id: 3\n");
    let old = pid_at(port).unwrap();
    host.signal(Signal::USR1);
    // The stream ends (a whole chunked response) with the goodbye event.
    s.read_to_end(&mut raw).unwrap();
    let r = parse_response(&raw, false).expect("a complete response");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = sse_events(&r.body_str());
    let bye = events.last().unwrap();
    assert_eq!(field(bye, "event"), Some("bye"), "{events:?}");
    assert_eq!(field(bye, "retry"), Some("100"), "{events:?}");
    let ticks: Vec<&Vec<String>> = events.iter().filter(|e| field(e, "id").is_some()).collect();
    let ids: Vec<u64> = ticks
        .iter()
        .map(|e| field(e, "id").unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<_>>(), "no gap");
    for e in &ticks {
        assert!(
            field(e, "data").unwrap().ends_with(&format!("pid {old}")),
            "{e:?}"
        );
    }
    let last = *ids.last().unwrap();
    // The client reconnects with the last id it saw: the new worker resumes after it.
    let mut s = open(Some(last));
    let mut raw = Vec::new();
    read_until(&mut s, &mut raw, b"\n\n");
    let text = String::from_utf8_lossy(&raw);
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let first = body
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .map(|i| i.trim().to_string());
    let new = generation_pid(&host.log(), 2).unwrap();
    assert_eq!(first, Some((last + 1).to_string()), "{text}");
    assert!(
        text.contains(&format!("tick {} pid {new}", last + 1)),
        "{text}"
    );
    wait_gone(old, T, "the old worker");
}

/// The resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn stream_grace_closes_a_busy_websocket_between_two_frames() {
    let port = low_port();
    let host = start(
        &config(port, "stream_grace: 1s\nshutdown_timeout: 30s\n"),
        "frames",
        port,
    );
    const SIZE: usize = 100_000;
    runtime().block_on(async {
        let old = pid_at(port).unwrap();
        let url = format!("ws://127.0.0.1:{port}/api/ws?firehose={SIZE}");
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        // A client slower than the server: the server's writes wait on it, mostly mid-frame,
        // when stream_grace comes.
        let mut got = 0u64;
        let signalled = Instant::now();
        host.signal(Signal::USR1);
        let close = loop {
            match tokio::time::timeout(T, ws.next()).await.expect("no message for 15 s") {
                Some(Ok(Message::Binary(b))) => {
                    assert_eq!(b.len(), SIZE, "message {got} cut");
                    assert!(b.iter().all(|&x| x == got as u8), "message {got} garbled");
                    got += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Some(Ok(Message::Close(c))) => break c,
                other => panic!("after {got} whole messages: {other:?}"),
            }
        };
        let c = close.expect("a close frame with a code");
        assert_eq!((u16::from(c.code), c.reason.as_str()), (1001, ""));
        let closed_after = signalled.elapsed();
        finish(ws).await;
        wait_gone(old, Duration::from_secs(30), "the old worker");
        eprintln!(
            "{got} whole messages of {SIZE} bytes, then close 1001 after {closed_after:?}; old worker gone after {:?}",
            signalled.elapsed()
        );
        assert!(closed_after >= Duration::from_secs(1), "{closed_after:?}");
        assert!(got > 10, "only {got} messages: the writes were never under way");
    });
}

#[test]
fn a_websocket_client_that_never_reads_holds_bounded_memory_and_is_let_go_at_stream_grace() {
    let port = low_port();
    let host = start(
        &config(port, "stream_grace: 1s\nshutdown_timeout: 30s\n"),
        "noread",
        port,
    );
    runtime().block_on(async {
        let old = pid_at(port).unwrap();
        let before = rss_kib(old);
        let url = format!("ws://127.0.0.1:{port}/api/ws?firehose=1000000");
        // Connected, then never read: the socket buffers fill, the application's send waits.
        let (ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let early = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let filled = rss_kib(old);
        // Two more seconds of a sender that would send at memory speed if nothing held it back.
        while early.elapsed() < Duration::from_millis(2500) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let later = rss_kib(old);
        eprintln!("worker RSS: {before} KiB before, {filled} KiB filled, {later} KiB 2 s later");
        assert!(
            later <= filled + 4096,
            "RSS grew by {} KiB while the client read nothing",
            later - filled
        );
        // A restart: the application's write is stuck mid-frame, so no close frame can be
        // written; the host stops waiting a second after stream_grace and the worker exits.
        let signalled = Instant::now();
        host.signal(Signal::USR1);
        wait_gone(old, Duration::from_secs(30), "the old worker");
        let gone_after = signalled.elapsed();
        eprintln!("never-reading client: old worker gone {gone_after:?} after the restart");
        assert!(
            gone_after >= Duration::from_secs(2),
            "{gone_after:?}: before stream_grace + 1 s"
        );
        assert!(
            gone_after < Duration::from_secs(10),
            "{gone_after:?}: not at stream_grace"
        );
        drop(ws);
    });
}

#[test]
fn over_tls_messages_flow_and_stream_grace_closes_with_1001() {
    use rustls_pki_types::pem::PemObject;
    let (port, tls_port) = (low_port(), low_port());
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = crate::support::make_pki(pki_dir.path(), 1);
    let https = format!(
        "https: {{ address: \"127.0.0.1:{tls_port}\", cert: {}, key: {} }}\n    ",
        pki.cert_path.display(),
        pki.key_path.display()
    );
    let cfg = config(port, "stream_grace: 1s\nshutdown_timeout: 30s\n")
        .replace("admin:", &format!("{https}admin:"));
    let host = start(&cfg, "tls", port);
    runtime().block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // What browsers offer for a WebSocket: HTTP/1.1.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .unwrap();
        let url = format!("wss://localhost:{tls_port}/api/ws?drain=ignore");
        let (mut ws, resp) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        assert_eq!(resp.status(), 101);
        let old = pid_at(port).unwrap();
        assert_eq!(next(&mut ws).await, Event::Text(format!("hello pid {old}")));
        for i in 0..5 {
            let m = format!("over tls {i}");
            ws.send(Message::Text(m.clone().into())).await.unwrap();
            assert_eq!(next(&mut ws).await, Event::Text(m));
        }
        let signalled = Instant::now();
        host.signal(Signal::USR1);
        assert_eq!(
            next(&mut ws).await,
            Event::Close(Some((1001, String::new())))
        );
        let closed_after = signalled.elapsed();
        finish(ws).await;
        wait_gone(old, Duration::from_secs(30), "the old worker");
        assert!(closed_after >= Duration::from_secs(1), "{closed_after:?}");
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "{:?}",
            signalled.elapsed()
        );
    });
}
