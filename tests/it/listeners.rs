//! Listeners beyond a TCP port: Unix-domain sockets (kept, same inode, through restarts;
//! removed at the final shutdown; a stale file replaced, a live one refused), sockets systemd
//! activated and named (`systemd:NAME`, through `systemd-socket-activate --fdname`), and the
//! PROXY protocol (v1 and v2, by hand and from a real HAProxy with `send-proxy` and
//! `send-proxy-v2`).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::*;

const T: Duration = Duration::from_secs(15);

/// `GET path` over a fresh connection to the Unix socket at `sock`.
fn unix_get(sock: &Path, path: &str) -> std::io::Result<Resp> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw, false)
}

/// Whether systemd-socket-activate can be run; without it: false and why is printed, or a
/// panic in CI.
fn socket_activate_here() -> bool {
    if Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_ok()
    {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "systemd-socket-activate is not installed (Debian package systemd); CI needs it"
    );
    eprintln!("skipped: systemd-socket-activate is not installed (Debian package systemd)");
    false
}

#[test]
fn a_unix_socket_keeps_its_inode_through_a_restart_and_goes_at_shutdown() {
    let port = free_port();
    // A relative path: resolved against the config's directory.
    let cfg = format!(
        "graceful: true\nshutdown_timeout: 5s\n\
         watch: {{ executable: false, config: false }}\n\
         servers:\n  s1:\n    address: [\"unix:app.sock\", \"127.0.0.1:{port}\"]\n    \
         unix_mode: \"0660\"\n    routes: {{ \"/pid\": pid }}\n"
    );
    let mut host = Apphost::start(&cfg);
    let sock = host.dir.path().join("app.sock");
    let first = host.wait_serving(port);
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let r = unix_get(&sock, "/pid").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str().trim(), first.to_string());

    // Requests on fresh connections over the socket all through the restart, until the
    // hammer itself has been answered by the new generation.
    let stop = Arc::new(AtomicBool::new(false));
    let pids = Arc::new(Mutex::new(BTreeSet::new()));
    let (s, seen, path) = (stop.clone(), pids.clone(), sock.clone());
    let hammer = std::thread::spawn(move || {
        let (mut ok, mut failures) = (0u32, Vec::new());
        while !s.load(Ordering::Relaxed) {
            match unix_get(&path, "/pid") {
                Ok(r) if r.status == 200 => {
                    ok += 1;
                    seen.lock().unwrap().insert(r.body_str().trim().to_string());
                }
                Ok(r) => failures.push(format!("status {}", r.status)),
                Err(e) => failures.push(e.to_string()),
            }
        }
        (ok, failures)
    });
    wait_until(T, "the hammer answered by the first worker", || {
        (!pids.lock().unwrap().is_empty()).then_some(())
    });
    host.signal(Signal::USR1);
    host.wait_log("restart done");
    wait_until(T, "the hammer answered by the new worker", || {
        (pids.lock().unwrap().len() >= 2).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = hammer.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {failures:?}",
        failures.len(),
        ok
    );
    let after = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(
        (after.dev(), after.ino()),
        (meta.dev(), meta.ino()),
        "the same socket file, never re-bound"
    );
    assert!(!host.log().contains("stale"), "{}", host.log());

    host.signal(Signal::TERM);
    assert!(host.wait_exit(T).success());
    assert!(
        !sock.exists(),
        "the socket file is removed at the final shutdown"
    );
}

#[test]
fn https_over_a_unix_socket_with_and_without_the_proxy_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 1);
    let port = free_port();
    // s2 takes a PROXY header before the TLS handshake; its admin logs whom it named.
    let cfg = format!(
        "servers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    \
         https: {{ address: \"unix:tls.sock\", cert: server.crt, key: server.key }}\n    \
         routes: {{ \"/pid\": pid }}\n  \
         s2:\n    proxy_protocol: true\n    admin: true\n    \
         https: {{ address: \"unix:proxied.sock\", cert: server.crt, key: server.key }}\n"
    );
    let host = Apphost::start_in(dir, &cfg, "server.yaml", BIN.as_ref());
    let pid = host.wait_serving(port);
    let sock = host.dir.path().join("tls.sock");
    for h2 in [false, true] {
        let r = https_get_unix(&sock, b"", "/pid", &pki.ca_pem, h2).unwrap();
        assert_eq!((r.status, r.body.trim()), (200, pid.to_string().as_str()));
        let want = if h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        assert_eq!(r.version, want);
    }
    let proxied = host.dir.path().join("proxied.sock");
    let header = b"PROXY TCP6 2001:db8::7 2001:db8::1 5000 443\r\n";
    let r = https_get_unix(&proxied, header, "/debug/admin/status", &pki.ca_pem, true).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // The real peer of a Unix socket is this machine: the admin serves it.
    host.wait_log("client=[2001:db8::7]:5000 (via 127.0.0.1:0)");
    assert!(https_get_unix(&proxied, b"", "/pid", &pki.ca_pem, true).is_err());
}

#[test]
fn a_stale_socket_file_is_replaced_and_a_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    // Bound and dropped: the file stays, nobody listens (as after a crash).
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let port = free_port();
    let cfg = format!(
        "servers:\n  s1:\n    address: [\"unix:{}\", \"127.0.0.1:{port}\"]\n    \
         routes: {{ \"/pid\": pid }}\n",
        stale.display()
    );
    let mut host = Apphost::start(&cfg);
    let pid = host.wait_serving(port);
    host.wait_log("removing the stale socket file");
    assert_eq!(
        unix_get(&stale, "/pid").unwrap().body_str().trim(),
        pid.to_string()
    );
    host.signal(Signal::TERM);
    assert!(host.wait_exit(T).success());

    // Someone listens there: `run` fails, saying so, and leaves the socket alone.
    let live = dir.path().join("live.sock");
    let theirs = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let cfg = format!(
        "servers:\n  s1:\n    address: \"unix:{}\"\n    routes: {{ \"/pid\": pid }}\n",
        live.display()
    );
    let mut host = Apphost::start(&cfg);
    let st = host.wait_exit(T);
    assert_eq!(st.code(), Some(1), "log:\n{}", host.log());
    let log = host.log();
    assert!(
        log.contains(&format!("cannot listen on unix:{}", live.display()))
            && log.contains("another running process listens on this socket"),
        "{log}"
    );
    assert!(live.exists());
    let _c = UnixStream::connect(&live).unwrap();
    assert!(theirs.accept().is_ok(), "their socket still works");
}

#[test]
fn check_validates_unix_systemd_and_proxy_keys() {
    let dir = tempfile::tempdir().unwrap();
    for (yaml, want) in [
        (
            "servers:\n  s1:\n    address: \"unix:\"\n    routes: { \"/\": hello }\n",
            "server.yaml:3:14: servers.s1.address: invalid listen address \"unix:\": the path is empty",
        ),
        (
            "servers:\n  s1:\n    address: [\":0\", \"systemd:a b\"]\n    routes: { \"/\": hello }\n",
            "server.yaml:3:21: servers.s1.address[1]: invalid listen address \"systemd:a b\"",
        ),
        (
            "servers:\n  s1:\n    address: \":0\"\n    unix_mode: \"0660\"\n    routes: { \"/\": hello }\n",
            "server.yaml:4:16: servers.s1.unix_mode: unix_mode is set but the server has no unix: address",
        ),
        (
            "servers:\n  s1:\n    address: \"unix:/tmp/x.sock\"\n    unix_mode: 660\n    routes: { \"/\": hello }\n",
            "server.yaml:4:16: servers.s1.unix_mode: expected an octal mode in quotes",
        ),
        (
            "servers:\n  s1:\n    address: \"unix:/tmp/x.sock\"\n    unix_mode: \"0999\"\n    routes: { \"/\": hello }\n",
            "server.yaml:4:16: servers.s1.unix_mode: invalid mode \"0999\"",
        ),
        (
            "servers:\n  s1:\n    address: \":0\"\n    proxy_protocol: yes please\n    routes: { \"/\": hello }\n",
            "server.yaml:4:21: servers.s1.proxy_protocol: expected a boolean",
        ),
        (
            "servers:\n  a:\n    address: \"unix:/tmp/x.sock\"\n  b:\n    address: \"unix:/tmp/x.sock\"\n",
            "server.yaml:5:14: servers.b.address: listen address \"unix:/tmp/x.sock\" is already used at servers.a.address",
        ),
    ] {
        std::fs::write(dir.path().join("server.yaml"), yaml).unwrap();
        let out = run_cli(dir.path(), &["check", "-c", "server.yaml"], &[], T);
        assert_eq!(out.code(), Some(2), "{yaml}\n{}", out.stderr);
        assert!(
            out.stderr.contains(want),
            "{yaml}\nwanted {want:?}\ngot {}",
            out.stderr
        );
    }
    std::fs::write(
        dir.path().join("server.yaml"),
        "servers:\n  s1:\n    address: [\"unix:run/app.sock\", \"systemd:web\"]\n    \
         unix_mode: \"660\"\n    proxy_protocol: true\n    routes: { \"/\": hello }\n",
    )
    .unwrap();
    let out = run_cli(dir.path(), &["check", "-c", "server.yaml"], &[], T);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("listen http://unix:/"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("/run/app.sock"), "{}", out.stdout);
    assert!(
        out.stdout.contains("listen http://systemd:web"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("proxy_protocol: on"), "{}", out.stdout);
}

#[test]
fn systemd_named_sockets_tcp_and_unix_are_taken_by_name() {
    if !socket_activate_here() {
        return;
    }
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("activated.sock");
    let cfg = dir.path().join("server.yaml");
    std::fs::write(
        &cfg,
        "graceful: true\nshutdown_timeout: 5s\n\
         watch: { executable: false, config: false }\n\
         servers:\n  s1:\n    address: [\"systemd:web\", \"systemd:local\"]\n    \
         routes: { \"/pid\": pid }\n",
    )
    .unwrap();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-l")
        .arg(&sock)
        .arg("--fdname=web:local")
        .arg(BIN)
        .arg("run")
        .arg("-c")
        .arg(&cfg);
    let mut host = Apphost::spawn(cmd, dir, cfg);
    let first = wait_until(T, "apphost serving on the activated socket", || {
        try_get(port, "/pid").ok().filter(|r| r.status == 200)
    });
    host.wait_log(&format!(
        "adopted socket-activated listener [127.0.0.1:{port}] named \"web\""
    ));
    host.wait_log(&format!(
        "adopted socket-activated listener [unix:{}] named \"local\"",
        sock.display()
    ));
    host.wait_log("worker ready");
    let r = unix_get(&sock, "/pid").unwrap();
    assert_eq!(r.body_str(), first.body_str());
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    host.signal(Signal::USR1);
    wait_until(T, "a new worker on the named sockets", || {
        (get(port, "/pid").body_str() != first.body_str()).then_some(())
    });
    // The old generation may still answer a moment, until it has read its drain.
    wait_until(T, "the new worker on the named Unix socket", || {
        (unix_get(&sock, "/pid").unwrap().body_str() != first.body_str()).then_some(())
    });
    assert!(
        !host.log().contains("left the config"),
        "a socket taken by name is kept: {}",
        host.log()
    );
    host.signal(Signal::TERM);
    assert!(host.wait_exit(T).success());
    // systemd's file is systemd's to remove.
    let after = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(after.ino(), meta.ino());
}

#[test]
fn a_systemd_name_that_was_not_passed_is_an_error_naming_what_was() {
    if !socket_activate_here() {
        return;
    }
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.yaml");
    std::fs::write(
        &cfg,
        "servers:\n  s1:\n    address: \"systemd:api\"\n    routes: { \"/pid\": pid }\n",
    )
    .unwrap();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--fdname=web")
        .arg(BIN)
        .arg("run")
        .arg("-c")
        .arg(&cfg);
    let mut host = Apphost::spawn(cmd, dir, cfg);
    // The first connection starts apphost; it is refused then (closed unanswered).
    wait_until(T, "apphost started by a connection", || {
        let _ = try_get(port, "/pid");
        host.log().contains("supervisor started").then_some(())
    });
    let st = host.wait_exit(T);
    assert_eq!(st.code(), Some(1), "log:\n{}", host.log());
    assert!(
        host.log().contains(
            "systemd:api: systemd passed no socket with that name (it passed systemd:web)"
        ),
        "{}",
        host.log()
    );
}

/// A config with `proxy_protocol: true` on `port`: `/pid`, the token-less admin (loopback
/// clients only) whose log lines name the client, and a JSON access log `access.log` in the
/// config's directory.
fn proxied_config(port: u16) -> String {
    format!(
        "header_read_timeout: 1s\n\
         servers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    proxy_protocol: true\n    \
         admin: true\n    access_log: {{ path: access.log, format: json }}\n    \
         routes: {{ \"/pid\": pid }}\n"
    )
}

/// Send `header` then `GET path` on a fresh connection; the whole answer.
fn proxied_get(port: u16, header: &[u8], path: &str) -> std::io::Result<Resp> {
    let mut req = header.to_vec();
    req.extend_from_slice(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let raw = raw_exchange(port, &req)?;
    parse_response(&raw, false)
}

/// A v2 header relaying `src` (IPv4) to 127.0.0.1:`dst_port`.
fn v2_header(src: SocketAddr, dst_port: u16) -> Vec<u8> {
    let SocketAddr::V4(src) = src else {
        panic!("IPv4 only")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst_port.to_be_bytes());
    h
}

#[test]
fn proxy_protocol_v1_and_v2_name_the_client_and_the_admin_trusts_the_real_peer() {
    let port = free_port();
    let host = Apphost::start(&proxied_config(port));
    let v1 = format!("PROXY TCP4 203.0.113.7 127.0.0.1 5000 {port}\r\n");
    wait_until(T, "the proxied server", || {
        proxied_get(port, v1.as_bytes(), "/pid")
            .ok()
            .filter(|r| r.status == 200)
    });
    // The header claims a distant client; the connection comes from loopback: the admin serves
    // it (trust follows the real peer), and logs the client the header named.
    let r = proxied_get(port, v1.as_bytes(), "/debug/admin/status?format=json").unwrap();
    assert_eq!(r.status, 200, "{}", r.body_str());
    host.wait_log("client=203.0.113.7:5000 (via 127.0.0.1:");

    let v2 = v2_header("198.51.100.9:6000".parse().unwrap(), port);
    let r = proxied_get(port, &v2, "/debug/admin/status?format=json").unwrap();
    assert_eq!(r.status, 200, "{}", r.body_str());
    host.wait_log("client=198.51.100.9:6000 (via 127.0.0.1:");
    // The access log's client is the one the header named.
    let access = host.dir.path().join("access.log");
    for client in ["203.0.113.7", "198.51.100.9"] {
        wait_until(T, &format!("{client} in the access log"), || {
            let text = std::fs::read_to_string(&access).ok()?;
            text.contains(&format!("\"client\":\"{client}"))
                .then_some(())
        });
    }

    // v2 LOCAL (a proxy's own health check): the connection's own peer.
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    let r = proxied_get(port, local, "/pid").unwrap();
    assert_eq!(r.status, 200);

    // No header, or a garbled one: closed without an answer.
    assert_closed_unanswered(port, b"GET /pid HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert_closed_unanswered(
        port,
        b"PROXY TCP4 1.2.3.4 nonsense\r\nGET / HTTP/1.1\r\n\r\n",
    );
    assert_closed_unanswered(port, b"\x16\x03\x01\x00\x05hello");
}

/// Send `bytes`: the connection must close (or be reset, when bytes were left unread) without a
/// byte of answer.
fn assert_closed_unanswered(port: u16, bytes: &[u8]) {
    match raw_exchange(port, bytes) {
        Ok(raw) => assert!(raw.is_empty(), "{:?}", String::from_utf8_lossy(&raw)),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn a_proxy_header_that_never_finishes_is_cut_at_header_read_timeout() {
    let port = free_port();
    let host = Apphost::start(&proxied_config(port));
    host.wait_log("worker ready");
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.7 127.0").unwrap();
    let mut buf = [0u8; 64];
    let n = match s.read(&mut buf) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
        Err(e) => panic!("not closed within {T:?}: {e}"),
    };
    assert_eq!(n, 0, "closed without an answer");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "cut after {took:?}, before header_read_timeout"
    );
}

/// Whether `haproxy` can be run; without it: false and why is printed, or a panic in CI.
fn haproxy_here() -> bool {
    match Command::new("haproxy").arg("-v").output() {
        Ok(o) if o.status.success() => true,
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true and no haproxy: {why}"
            );
            eprintln!("SKIPPED: no haproxy here ({why}); apt-get install haproxy");
            false
        }
    }
}

/// HAProxy in TCP mode: one frontend per entry of `sends` (`send-proxy`, `send-proxy-v2`), each
/// relaying to 127.0.0.1:`backend` with that option; killed when dropped.
struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
    ports: Vec<u16>,
}

impl Haproxy {
    fn start(backend: u16, sends: &[&str]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  \
                       timeout server 30s\n"
            .to_string();
        let mut ports = Vec::new();
        for (i, send) in sends.iter().enumerate() {
            let p = free_port();
            cfg.push_str(&format!(
                "frontend fe{i}\n  bind 127.0.0.1:{p}\n  default_backend be{i}\n\
                 backend be{i}\n  server s0 127.0.0.1:{backend} {send}\n"
            ));
            ports.push(p);
        }
        let file: PathBuf = dir.path().join("haproxy.cfg");
        std::fs::write(&file, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start haproxy");
        Haproxy {
            child,
            _dir: dir,
            ports,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn haproxy_send_proxy_and_send_proxy_v2_reach_handlers_as_the_client() {
    if !haproxy_here() {
        return;
    }
    let port = free_port();
    let host = Apphost::start(&proxied_config(port));
    host.wait_log("worker ready");
    let hap = Haproxy::start(port, &["send-proxy", "send-proxy-v2"]);
    for &front in &hap.ports {
        // Through HAProxy, the client is this test's own socket: its port is what the admin
        // must log, not HAProxy's.
        let (mine, r) = wait_until(T, "HAProxy relaying", || {
            let mut s = TcpStream::connect(("127.0.0.1", front)).ok()?;
            s.set_read_timeout(Some(T)).ok()?;
            let mine = s.local_addr().ok()?;
            s.write_all(
                b"GET /debug/admin/status?format=json HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                  Connection: close\r\n\r\n",
            )
            .ok()?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).ok()?;
            let r = parse_response(&raw, false).ok()?;
            Some((mine, r))
        });
        assert_eq!(r.status, 200, "{}", r.body_str());
        host.wait_log(&format!("client={mine} (via 127.0.0.1:"));
    }
}
