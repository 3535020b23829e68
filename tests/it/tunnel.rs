//! `CONNECT` tunnels across restarts, on the axum example (`examples/axum_app.rs`: its fallback
//! is a forward proxy to loopback addresses): a tunnel is a connection in flight, like a
//! WebSocket: counted, waited for by the drain, and closed by the host at `stream_grace`. The
//! client is a raw socket; the far end is an echo server the test runs.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::axum::start;
use crate::harness::{T, generation_pid, low_port, pid_at, wait_gone, wait_new_pid};
use crate::support::{process_alive, wait_until};
use crate::websocket::{admin_connections, closed_at_grace_then_gone, config};

/// An echo server on 127.0.0.1 (a thread per connection, for the test's life); its port.
fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    port
}

/// `CONNECT 127.0.0.1:to` through apphost on `port`: the socket, once the `200` head is read.
fn open_tunnel(port: u16, to: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "CONNECT 127.0.0.1:{to} HTTP/1.1\r\nHost: 127.0.0.1:{to}\r\n\r\n"
    )
    .unwrap();
    // Byte by byte up to the head's end: nothing of the tunnel is read with it.
    let mut head = Vec::new();
    let mut b = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "head so far: {head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s
}

/// Send `msg` through the tunnel and read it back from the echo server.
fn echo(s: &mut TcpStream, msg: &str) -> std::io::Result<()> {
    s.write_all(msg.as_bytes())?;
    let mut back = vec![0; msg.len()];
    s.read_exact(&mut back)?;
    assert_eq!(String::from_utf8_lossy(&back), msg);
    Ok(())
}

#[test]
fn a_restart_waits_for_an_open_tunnel_and_the_old_worker_ends_when_it_closes() {
    let to = echo_server();
    let port = low_port();
    // A short keepalive_grace: the drain closes idle HTTP connections after it, and a tunnel
    // must not be taken for one.
    // The access log has the tunnel's line, with its target.
    let cfg = config(port, "shutdown_timeout: 60s\nkeepalive_grace: 200ms\n").replace(
        "    routes:\n",
        "    access_log: { path: access.log, format: json }\n    routes:\n",
    );
    let host = start(&cfg, "tunnel", port);
    let old = pid_at(port).unwrap();
    let mut t = open_tunnel(port, to);
    echo(&mut t, "before the restart").unwrap();
    // Handed to the application, it is still a connection of this worker.
    assert_eq!(
        admin_connections(port),
        2,
        "the tunnel and the asking request"
    );

    host.signal(Signal::USR1);
    let new = wait_new_pid(&host, port, old);
    assert_eq!(Some(new), generation_pid(&host.log(), 2));
    // The new worker serves; the old one drains, and keeps the tunnel open meanwhile, well
    // past keepalive_grace (a client sending every 20 ms).
    let draining = Instant::now();
    let mut i = 0;
    while draining.elapsed() < Duration::from_millis(800) {
        echo(&mut t, &format!("while the old worker drains {i} ")).unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(process_alive(old), "the old worker left with a tunnel open");
    // The client closes the tunnel: the old worker's drain ends with it, long before
    // shutdown_timeout.
    let closed = Instant::now();
    t.shutdown(Shutdown::Write).unwrap();
    wait_gone(old, Duration::from_secs(15), "the old worker");
    eprintln!("old worker gone {:?} after the close", closed.elapsed());
    assert!(
        !host.log().contains("shutdown_timeout reached"),
        "{}",
        host.log()
    );
    // The new worker tunnels too.
    let mut t = open_tunnel(port, to);
    echo(&mut t, "after").unwrap();
    // One line per tunnel, each with its target where other requests have their path.
    let log = host.dir.path().join("access.log");
    let tunnels = wait_until(T, "two CONNECT lines in the access log", || {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
            .ok()?
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .filter(|v: &serde_json::Value| v["method"] == "CONNECT")
            .collect();
        (lines.len() == 2).then_some(lines)
    });
    for v in tunnels {
        assert_eq!(v["path"], format!("127.0.0.1:{to}"), "{v}");
        assert_eq!(v["status"], 200, "{v}");
    }
}

#[test]
fn stream_grace_closes_an_open_tunnel_and_the_old_worker_exits_then() {
    let to = echo_server();
    let port = low_port();
    let host = start(
        &config(port, "stream_grace: 1500ms\nshutdown_timeout: 30s\n"),
        "tunnel-grace",
        port,
    );
    let old = pid_at(port).unwrap();
    let mut t = open_tunnel(port, to);
    echo(&mut t, "hi").unwrap();
    let signalled = Instant::now();
    host.signal(Signal::USR1);
    // The application keeps copying (the echo server never closes): the host closes the
    // tunnel at stream_grace, and the client reads its end.
    let mut buf = [0u8; 64];
    let end = loop {
        match t.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => panic!("unexpected bytes: {:?}", &buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        }
    };
    let closed_after = signalled.elapsed();
    assert!(end.is_ok(), "a clean end of stream, not {end:?}");
    closed_at_grace_then_gone(&host, old, signalled, closed_after);
}
