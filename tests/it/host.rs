//! The host issue's end-to-end tests: the real `apphost` binary on free 127.0.0.1 ports.
//!
//! - several servers and ports in one process, all moved to one new worker by SIGUSR1;
//! - every built-in handler (`hello`, `pid`, `sleep`, `static`, `health`), `404` for unknown
//!   paths, route `methods` (`405` with `Allow`);
//! - HTTPS with HTTP/2 (ALPN) and HTTP/1.1, h2c prior knowledge on a plain port;
//! - config errors through `apphost check` and `apphost run` (exit 2, `file:line:col: key.path`,
//!   never a panic), a port already in use;
//! - YAML/TOML equivalence, the embedded default, config file lookup (`$APPHOST_CONFIG`,
//!   `./server.yaml`, `./config/server.toml`);
//! - SIGTERM/SIGINT with a request in flight, the header read timeout, the log lines (text and
//!   JSON), `--version`.
//!
//! Nothing sleeps to wait for a condition: everything polls with a deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::*;

const EXIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Helpers

/// A canonical temp dir (so paths in messages compare equal to ours).
fn tempdir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().canonicalize().unwrap();
    (d, p)
}

/// 1-based line and character column of the first occurrence of `needle` in `text`.
fn pos_of(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the config"));
    pos_at(text, at)
}

/// 1-based line and character column of byte offset `at` in `text`.
fn pos_at(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..at].chars().count() + 1;
    (line, col)
}

/// Wait until an HTTPS port answers `/pid` (trusting `ca`) and return that pid.
fn wait_serving_tls(host: &Apphost, port: u16, ca: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = https_get(port, "/pid", ca, true)
            && r.status == 200
        {
            return r.body.trim().parse().expect("pid body");
        }
        assert!(
            Instant::now() < deadline,
            "HTTPS port {port} never served /pid; log:\n{}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Read from `s` until the response's head has arrived and its body (raw, maybe chunked) holds
/// `want`; return everything read so far and when that was.
fn read_until_body_contains(
    s: &mut TcpStream,
    want: &str,
    timeout: Duration,
) -> (Vec<u8>, Instant) {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
            && String::from_utf8_lossy(&buf[end + 4..]).contains(want)
        {
            return (buf, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "{want:?} not received within {timeout:?}; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        s.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        match s.read(&mut chunk) {
            Ok(0) => panic!(
                "connection closed before {want:?}; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn connect(port: u16) -> TcpStream {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap()
}

fn assert_no_panic(what: &str, text: &str) {
    assert!(
        !text.contains("panicked"),
        "{what} printed a panic:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Several servers, several ports

#[test]
fn two_servers_four_ports_move_to_one_new_worker_on_sigusr1() {
    let (dir, path) = tempdir();
    let pki = make_pki(&path, 1);
    let [p1, p2, p3, p4] = free_ports();
    let cfg = format!(
        r#"graceful: true
shutdown_timeout: 5s
servers:
  one:
    address: ["127.0.0.1:{p1}", "127.0.0.1:{p2}"]
    routes:
      "/": {{ handler: hello, text: "server one" }}
      "/pid": pid
  two:
    address: "127.0.0.1:{p3}"
    https: {{ address: "127.0.0.1:{p4}", cert: server.crt, key: server.key }}
    routes:
      "/": {{ handler: hello, text: "server two" }}
      "/pid": pid
"#
    );
    let (host, notify) = Apphost::start_notified(dir, &cfg, "server.yaml");
    let first = host.wait_serving(p1);
    assert_eq!(host.wait_serving(p2), first);
    assert_eq!(host.wait_serving(p3), first);
    assert_eq!(wait_serving_tls(&host, p4, &pki.ca_pem), first);
    assert_ne!(first, host.pid());
    // Each server answers with its own routes.
    assert_eq!(get(p1, "/").body_str(), "server one\n");
    assert_eq!(get(p2, "/").body_str(), "server one\n");
    assert_eq!(get(p3, "/").body_str(), "server two\n");
    assert_eq!(
        https_get(p4, "/", &pki.ca_pem, true).unwrap().body,
        "server two\n"
    );

    // A restart asked for while the first worker is still starting is refused (busy): wait
    // until the supervisor counts it as ready.
    notify.wait_for("READY=1");
    host.signal(Signal::USR1);
    let second = wait_until(
        Duration::from_secs(15),
        "a new worker on the first port",
        || {
            let p: u32 = try_get(p1, "/pid").ok()?.body_str().trim().parse().ok()?;
            (p != first).then_some(p)
        },
    );
    wait_until(Duration::from_secs(15), "the old worker to exit", || {
        (!process_alive(first)).then_some(())
    });
    // The old worker is gone: every port is now served by the one new worker.
    assert_eq!(get(p1, "/pid").body_str(), format!("{second}\n"));
    assert_eq!(get(p2, "/pid").body_str(), format!("{second}\n"));
    assert_eq!(get(p3, "/pid").body_str(), format!("{second}\n"));
    assert_eq!(
        https_get(p4, "/pid", &pki.ca_pem, true).unwrap().body,
        format!("{second}\n")
    );
    assert_eq!(parent_pid(second), Some(host.pid()));
    assert_eq!(get(p3, "/").body_str(), "server two\n");
}

// ---------------------------------------------------------------------------------------------
// Built-in handlers and routing

fn handlers_config(port: u16) -> String {
    format!(
        r#"shutdown_timeout: 5s
servers:
  s1:
    address: "127.0.0.1:{port}"
    routes:
      "/": hello
      "/custom": {{ handler: hello, text: "Hello, world" }}
      "/pid": pid
      "/sleep": {{ handler: sleep, duration: 2s }}
      "/health": health
      "/files/*path": {{ handler: static, dir: www }}
      "/post-only": {{ handler: pid, methods: [post] }}
      "/get-only": {{ handler: health, methods: GET }}
"#
    )
}

/// An apphost on `handlers_config(port)`, its dir holding the static site.
fn start_handlers(port: u16) -> Apphost {
    let (dir, path) = tempdir();
    static_site(&path);
    Apphost::start_in(dir, &handlers_config(port), "server.yaml", BIN.as_ref())
}

#[test]
fn hello_answers_the_default_and_a_custom_text() {
    let port = unique_port();
    let host = start_handlers(port);
    host.wait_serving(port);
    let r = get(port, "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "哈喽！\n");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let r = get(port, "/custom");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "Hello, world\n");
}

#[test]
fn pid_is_the_worker_not_the_supervisor() {
    let port = unique_port();
    let host = start_handlers(port);
    let pid = host.wait_serving(port);
    assert_ne!(pid, host.pid());
    assert_eq!(
        parent_pid(pid),
        Some(host.pid()),
        "the answering process is a child of the supervisor"
    );
    assert!(process_alive(pid));
    assert_eq!(get(port, "/pid").body_str(), format!("{pid}\n"));
}

#[test]
fn sleep_streams_the_pid_line_at_once_then_again_after_the_duration() {
    let port = unique_port();
    let host = start_handlers(port);
    let pid = host.wait_serving(port);
    let mut s = connect(port);
    let start = Instant::now();
    s.write_all(
        format!("GET /sleep HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let line = format!("{pid}\n");
    let (mut raw, first_at) = read_until_body_contains(&mut s, &line, Duration::from_secs(10));
    let first = first_at - start;
    assert!(
        first < Duration::from_millis(1500),
        "the first line took {first:?} (the duration is 2s)"
    );
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.read_to_end(&mut raw).unwrap();
    let total = start.elapsed();
    assert!(
        total >= Duration::from_secs(2),
        "the response ended after {total:?}, before the 2s duration"
    );
    let r = parse_response(&raw, false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), format!("{pid}\n{pid}\n"));
}

/// A config dir with `www/` (a file, an index, a subdirectory) and a secret next to it.
fn static_site(path: &Path) {
    std::fs::create_dir_all(path.join("www/sub")).unwrap();
    std::fs::write(path.join("www/a.txt"), "file a\n").unwrap();
    std::fs::write(path.join("www/index.html"), "<p>index</p>\n").unwrap();
    std::fs::write(path.join("www/sub/index.html"), "<p>sub</p>\n").unwrap();
    std::fs::write(path.join("secret.txt"), "TOP SECRET\n").unwrap();
}

#[test]
fn static_serves_files_and_index_html_and_404_for_missing() {
    let port = unique_port();
    let host = start_handlers(port);
    host.wait_serving(port);

    let r = get(port, "/files/a.txt");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "file a\n");
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/plain"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("content-length"), Some("7"));

    for p in ["/files/", "/files"] {
        let r = get(port, p);
        assert_eq!(r.status, 200, "{p}");
        assert_eq!(r.body_str(), "<p>index</p>\n", "{p}");
        assert!(
            r.header("content-type")
                .unwrap_or("")
                .starts_with("text/html"),
            "{p}: {:?}",
            r.headers
        );
    }
    assert_eq!(get(port, "/files/sub/").body_str(), "<p>sub</p>\n");

    let r = get(port, "/files/missing.txt");
    assert_eq!(r.status, 404);
    assert_eq!(get(port, "/files/sub/missing/").status, 404);
}

#[test]
fn static_refuses_dot_dot_escapes() {
    let port = unique_port();
    let host = start_handlers(port);
    host.wait_serving(port);
    // The file exists one level up: each of these would reach it if `..` were followed.
    assert_eq!(
        std::fs::read_to_string(host.config.with_file_name("www/../secret.txt")).unwrap(),
        "TOP SECRET\n"
    );
    for target in [
        "/files/../secret.txt",
        "/files/sub/../../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/%2E%2E/secret.txt",
        "/files/..%2fsecret.txt",
        "/files/%2e%2e%2fsecret.txt",
        "/files/sub/%2e%2e/%2e%2e/secret.txt",
    ] {
        let raw = raw_exchange(
            port,
            format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(
            !text.contains("TOP SECRET"),
            "{target} escaped the directory:\n{text}"
        );
        let r = parse_response(&raw, false).unwrap();
        assert_eq!(r.status, 404, "{target}: {text}");
    }
}

#[test]
fn static_head_gives_headers_only_and_post_gets_405() {
    let port = unique_port();
    let host = start_handlers(port);
    host.wait_serving(port);

    let raw = raw_exchange(
        port,
        format!(
            "HEAD /files/a.txt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert_eq!(
        &raw[end + 4..],
        b"",
        "HEAD must not carry a body: {:?}",
        String::from_utf8_lossy(&raw)
    );
    let r = parse_response(&raw, true).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("7"));
    assert!(r.header("last-modified").is_some(), "{:?}", r.headers);

    let r = request(port, "POST", "/files/a.txt", &[], b"x=1").unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[test]
fn health_answers_ok() {
    let port = unique_port();
    let host = start_handlers(port);
    host.wait_serving(port);
    let r = get(port, "/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "ok\n");
    let r = request(port, "DELETE", "/health", &[], b"").unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[test]
fn unknown_path_is_404_page_not_found() {
    let port = unique_port();
    let host = start_handlers(port);
    host.wait_serving(port);
    for p in ["/nope", "/pid/extra", "/filesx", "/health/"] {
        let r = get(port, p);
        assert_eq!(r.status, 404, "{p}");
        assert_eq!(r.body_str(), "404 page not found\n", "{p}");
    }
}

#[test]
fn route_methods_give_405_with_allow() {
    let port = unique_port();
    let host = start_handlers(port);
    let pid = host.wait_serving(port);

    // methods: [post] — only POST passes.
    let r = get(port, "/post-only");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = request(port, "POST", "/post-only", &[], b"body").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), format!("{pid}\n"));

    // methods: GET — GET implies HEAD.
    let r = request(port, "PUT", "/get-only", &[], b"x").unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(get(port, "/get-only").body_str(), "ok\n");
    let r = request(port, "HEAD", "/get-only", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("3"));
}

// ---------------------------------------------------------------------------------------------
// Protocols

fn tls_host() -> (Apphost, TestPki, u16, u16) {
    let (dir, path) = tempdir();
    let pki = make_pki(&path, 42);
    let [http, https] = free_ports();
    let cfg = format!(
        r#"shutdown_timeout: 5s
servers:
  s1:
    address: "127.0.0.1:{http}"
    https:
      address: "127.0.0.1:{https}"
      cert: server.crt
      key: server.key
    routes:
      "/": hello
      "/pid": pid
"#
    );
    let host = Apphost::start_in(dir, &cfg, "server.yaml", BIN.as_ref());
    (host, pki, http, https)
}

/// The DER of the leaf certificate in `pki`'s cert file.
fn configured_cert_der(pki: &TestPki) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(&pki.cert_path)
        .unwrap()
        .to_vec()
}

#[test]
fn https_negotiates_h2_by_alpn() {
    let (host, pki, http, https) = tls_host();
    let pid = host.wait_serving(http);
    assert_eq!(wait_serving_tls(&host, https, &pki.ca_pem), pid);
    let r = https_get(https, "/", &pki.ca_pem, true).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.body, "哈喽！\n");
    assert!(
        r.peer_cert == configured_cert_der(&pki),
        "the served certificate is not the configured one"
    );
}

#[test]
fn https_serves_http1_when_h2_is_not_offered() {
    let (host, pki, http, https) = tls_host();
    let pid = host.wait_serving(http);
    wait_serving_tls(&host, https, &pki.ca_pem);
    let r = https_get(https, "/pid", &pki.ca_pem, false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(r.body, format!("{pid}\n"));
}

#[test]
fn plain_port_speaks_h2c_with_prior_knowledge() {
    let port = unique_port();
    let host = start_handlers(port);
    let pid = host.wait_serving(port);
    let r = h2c_get(port, "/pid").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.body, format!("{pid}\n"));
    let r = h2c_get(port, "/nope").unwrap();
    assert_eq!(r.status, 404);
    // The same port still speaks HTTP/1.1.
    assert_eq!(get(port, "/").body_str(), "哈喽！\n");
}

// ---------------------------------------------------------------------------------------------
// Config errors

/// Where an error must point: the file, the line and column, the key path, words of the message.
struct Expect<'a> {
    line: usize,
    col: usize,
    key_path: &'a str,
    words: &'a [&'a str],
}

/// Write `text` as `name` in a new dir; return the dir and the file's canonical path.
fn bad_config(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let (dir, path) = tempdir();
    let file = path.join(name);
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

fn assert_config_error(cmd: &str, dir: &Path, file: &Path, e: &Expect<'_>) {
    let out = run_cli(dir, &[cmd, "-c", file.to_str().unwrap()], &[], EXIT);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_no_panic(cmd, &all);
    let want = format!("{}:{}:{}: {}: ", file.display(), e.line, e.col, e.key_path);
    assert!(
        out.stderr.contains(&want),
        "`apphost {cmd}`: stderr does not name {want:?}:\n{}",
        out.stderr
    );
    let line = out.stderr.lines().find(|l| l.contains(&want)).unwrap();
    for w in e.words {
        assert!(
            line.contains(w),
            "`apphost {cmd}`: {w:?} missing from {line:?}"
        );
    }
    assert_eq!(
        out.code(),
        Some(2),
        "`apphost {cmd}` must exit 2 on a config error; stderr:\n{}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("\nok\n"),
        "{cmd} said ok:\n{}",
        out.stdout
    );
}

#[test]
fn check_and_run_reject_a_type_error_in_yaml() {
    let port = unique_port();
    let text = format!(
        "graceful: true\nservers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/\": [hello]\n"
    );
    let (dir, file) = bad_config("server.yaml", &text);
    let (line, col) = pos_of(&text, "[hello]");
    let e = Expect {
        line,
        col,
        key_path: "servers.s1.routes./",
        words: &["expected a handler name or a map"],
    };
    assert_config_error("check", dir.path(), &file, &e);
    assert_config_error("run", dir.path(), &file, &e);
}

#[test]
fn check_and_run_reject_a_type_error_in_toml() {
    let port = unique_port();
    let text = format!(
        "graceful = \"yes\"\n\n[servers.s1]\naddress = \"127.0.0.1:{port}\"\n\n[servers.s1.routes]\n\"/\" = \"hello\"\n"
    );
    let (dir, file) = bad_config("server.toml", &text);
    let (line, col) = pos_of(&text, "\"yes\"");
    let e = Expect {
        line,
        col,
        key_path: "graceful",
        words: &["expected a boolean", "\"yes\""],
    };
    assert_config_error("check", dir.path(), &file, &e);
    assert_config_error("run", dir.path(), &file, &e);
}

#[test]
fn check_and_run_reject_a_nested_type_error_in_toml() {
    let text = "[servers.s1]\naddress = 8080\n".to_string();
    let (dir, file) = bad_config("server.toml", &text);
    let (line, col) = pos_of(&text, "8080");
    let e = Expect {
        line,
        col,
        key_path: "servers.s1.address",
        words: &["expected an address or a list of addresses"],
    };
    assert_config_error("check", dir.path(), &file, &e);
    assert_config_error("run", dir.path(), &file, &e);
}

fn bad_duration_case() -> (tempfile::TempDir, PathBuf, usize, usize) {
    let port = unique_port();
    let text = format!(
        "servers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/sleep\": {{ handler: sleep, duration: soon }}\n"
    );
    let (d, f) = bad_config("server.yaml", &text);
    let (line, col) = pos_of(&text, "soon");
    (d, f, line, col)
}

const BAD_DURATION_WORDS: &[&str] = &["invalid duration", "\"soon\""];

#[test]
fn check_and_run_reject_an_invalid_sleep_duration() {
    for command in ["check", "run"] {
        let (dir, file, line, col) = bad_duration_case();
        let e = Expect {
            line,
            col,
            key_path: "servers.s1.routes./sleep.duration",
            words: BAD_DURATION_WORDS,
        };
        assert_config_error(command, dir.path(), &file, &e);
    }
}

#[test]
fn check_and_run_reject_an_unknown_key_with_a_did_you_mean_hint() {
    let port = unique_port();
    let text = format!(
        "shutdown_timeout: 5s\nservers:\n  s1:\n    adress: \"127.0.0.1:{port}\"\n    routes:\n      \"/\": hello\n"
    );
    let (dir, file) = bad_config("server.yaml", &text);
    let (line, col) = pos_of(&text, "adress");
    let e = Expect {
        line,
        col,
        key_path: "servers.s1.adress",
        words: &["unknown key \"adress\"", "did you mean \"address\"?"],
    };
    assert_config_error("check", dir.path(), &file, &e);
    assert_config_error("run", dir.path(), &file, &e);
}

fn unknown_handler_case() -> (tempfile::TempDir, PathBuf, usize, usize) {
    let port = unique_port();
    let text = format!(
        "servers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/\": hello\n      \"/x\": {{ handler: helo }}\n"
    );
    let (d, f) = bad_config("server.yaml", &text);
    let (line, col) = pos_of(&text, "helo ");
    (d, f, line, col)
}

const UNKNOWN_HANDLER_WORDS: &[&str] = &[
    "unknown handler \"helo\"",
    "registered: health, hello, metrics, pid, ready, sleep, static",
];

#[test]
fn check_and_run_reject_an_unknown_handler_listing_the_registered_ones() {
    for command in ["check", "run"] {
        let (dir, file, line, col) = unknown_handler_case();
        let e = Expect {
            line,
            col,
            key_path: "servers.s1.routes./x.handler",
            words: UNKNOWN_HANDLER_WORDS,
        };
        assert_config_error(command, dir.path(), &file, &e);
    }
}

#[test]
fn check_and_run_reject_two_servers_on_one_address() {
    let port = unique_port();
    let text = format!(
        "servers:\n  a:\n    address: \"127.0.0.1:{port}\"\n  b:\n    address: [\"127.0.0.1:{}\", \"127.0.0.1:{port}\"]\n",
        unique_port()
    );
    let (dir, file) = bad_config("server.yaml", &text);
    // The second occurrence is the one reported.
    let (line, col) = pos_at(&text, text.rfind(&format!("\"127.0.0.1:{port}\"")).unwrap());
    let e = Expect {
        line,
        col,
        key_path: "servers.b.address[1]",
        words: &[
            &format!("\"127.0.0.1:{port}\""),
            "already used at servers.a.address",
        ],
    };
    assert_config_error("check", dir.path(), &file, &e);
    assert_config_error("run", dir.path(), &file, &e);
}

#[test]
fn check_and_run_reject_a_missing_cert_file() {
    let (dir, path) = tempdir();
    let pki = make_pki(&path, 7);
    std::fs::remove_file(&pki.cert_path).unwrap();
    let text = format!(
        "servers:\n  s1:\n    https:\n      address: \"127.0.0.1:{}\"\n      cert: server.crt\n      key: server.key\n",
        unique_port()
    );
    let file = path.join("server.yaml");
    std::fs::write(&file, &text).unwrap();
    let (line, col) = pos_of(&text, "server.crt");
    let e = Expect {
        line,
        col,
        key_path: "servers.s1.https.cert",
        words: &[&pki.cert_path.display().to_string(), "No such file"],
    };
    assert_config_error("check", dir.path(), &file, &e);
    assert_config_error("run", dir.path(), &file, &e);
}

/// A config whose cert comes from one PKI and key from another.
fn mismatched_pair() -> (tempfile::TempDir, PathBuf, String) {
    let (dir, path) = tempdir();
    std::fs::create_dir(path.join("a")).unwrap();
    std::fs::create_dir(path.join("b")).unwrap();
    make_pki(&path.join("a"), 1);
    make_pki(&path.join("b"), 2);
    let text = format!(
        "servers:\n  s1:\n    https:\n      address: \"127.0.0.1:{}\"\n      cert: a/server.crt\n      key: b/server.key\n    routes:\n      \"/\": hello\n",
        unique_port()
    );
    let file = path.join("server.yaml");
    std::fs::write(&file, &text).unwrap();
    (dir, file, text)
}

fn assert_mismatch_reported(cmd: &str) {
    let (dir, file, text) = mismatched_pair();
    let out = run_cli(dir.path(), &[cmd, "-c", file.to_str().unwrap()], &[], EXIT);
    assert_no_panic(cmd, &format!("{}{}", out.stdout, out.stderr));
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("does not match"))
        .unwrap_or_else(|| panic!("`apphost {cmd}`: no mismatch message:\n{}", out.stderr));
    assert!(line.contains("servers.s1.https"), "{line}");
    // FILE:LINE:COL: — somewhere between `https:` and `key:`.
    let prefix = format!("{}:", file.display());
    let at = line
        .find(&prefix)
        .unwrap_or_else(|| panic!("`apphost {cmd}`: the file is not named in {line:?}"));
    let rest = &line[at + prefix.len()..];
    let mut nums = rest.splitn(3, ':');
    let l: usize = nums
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("`apphost {cmd}`: no line number in {line:?}"));
    let c: Option<usize> = nums.next().and_then(|n| n.parse().ok());
    assert!(c.is_some(), "`apphost {cmd}`: no column in {line:?}");
    let (https_line, _) = pos_of(&text, "https:");
    let (key_line, _) = pos_of(&text, "key:");
    assert!(
        (https_line..=key_line).contains(&l),
        "`apphost {cmd}`: line {l} is outside the https block in {line:?}"
    );
    assert_eq!(
        out.code(),
        Some(2),
        "`apphost {cmd}`; stderr:\n{}",
        out.stderr
    );
}

#[test]
fn check_and_run_refuse_a_key_that_does_not_match_the_cert() {
    // What works today: `check` says why (without a position), `run` refuses to start.
    let (dir, file, _) = mismatched_pair();
    let out = run_cli(
        dir.path(),
        &["check", "-c", file.to_str().unwrap()],
        &[],
        EXIT,
    );
    assert_no_panic("check", &format!("{}{}", out.stdout, out.stderr));
    assert!(
        out.stderr.contains("servers.s1.https")
            && out
                .stderr
                .contains("the private key does not match the certificate"),
        "`apphost check`:\n{}",
        out.stderr
    );
    assert_eq!(out.code(), Some(2), "`apphost check`:\n{}", out.stderr);
    // `run` refuses too (its message and exit code: see the tests below).
    let out = run_cli(
        dir.path(),
        &["run", "-c", file.to_str().unwrap()],
        &[],
        EXIT,
    );
    assert_no_panic("run", &format!("{}{}", out.stdout, out.stderr));
    assert!(
        out.code().is_some_and(|c| c != 0),
        "`apphost run`: {:?}\n{}",
        out.status,
        out.stderr
    );
    assert!(
        !out.stderr.contains("server started listening"),
        "{}",
        out.stderr
    );
}

#[test]
fn check_names_file_line_col_for_a_key_that_does_not_match_the_cert() {
    assert_mismatch_reported("check");
}

#[test]
fn run_names_file_line_col_and_exits_2_for_a_key_that_does_not_match_the_cert() {
    assert_mismatch_reported("run");
}

/// `apphost run` on a config whose only address is `port`, held by someone else.
fn run_on_a_taken_port(port: u16) -> CmdOutput {
    let (dir, path) = tempdir();
    let file = path.join("server.yaml");
    std::fs::write(
        &file,
        format!(
            "servers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/\": hello\n"
        ),
    )
    .unwrap();
    run_cli(
        dir.path(),
        &["run", "-c", file.to_str().unwrap()],
        &[],
        EXIT,
    )
}

#[test]
fn run_fails_cleanly_when_the_port_is_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = run_on_a_taken_port(port);
    assert_no_panic("run", &out.stderr);
    assert!(
        out.code().is_some_and(|c| c != 0),
        "run must exit with a non-zero code: {:?}\n{}",
        out.status,
        out.stderr
    );
    assert!(
        out.stderr.contains("worker failed to start"),
        "{}",
        out.stderr
    );
    // Why (the address, "in use") is checked by the next test: the supervisor sometimes loses it.
    // The listener we hold still works.
    taken.set_nonblocking(true).unwrap();
    let _client = connect(port);
    wait_until(Duration::from_secs(5), "our listener to accept", || {
        taken.accept().ok()
    });
}

/// Start `apphost run -c file` in `dir` and read its stderr until the first worker is started:
/// the supervisor (killed on drop), its stderr, what it logged so far, and the worker's pid.
fn start_until_first_worker(
    file: &std::path::Path,
    dir: &std::path::Path,
) -> (
    Stopped,
    std::io::BufReader<std::process::ChildStderr>,
    String,
    u32,
) {
    use std::io::BufRead;
    let child = std::process::Command::new(BIN)
        .args(["run", "-c", file.to_str().unwrap()])
        .current_dir(dir)
        .env_remove("APPHOST_CONFIG")
        .env("APPHOST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut sup = Stopped(child);
    let mut err = std::io::BufReader::new(sup.0.stderr.take().unwrap());
    let mut log = String::new();
    let pid: u32 = loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "no worker started:\n{log}"
        );
        log.push_str(&line);
        if let Some(rest) = line.split("worker started generation=1 pid=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    (sup, err, log, pid)
}

/// A supervisor process that is stopped (SIGSTOP) for a while; continued and killed if a test
/// panics before continuing it.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0.id(), Signal::CONT);
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[test]
fn run_always_says_which_address_is_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (_dir, path) = tempdir();
    let file = path.join("server.yaml");
    std::fs::write(
        &file,
        format!(
            "servers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/\": hello\n"
        ),
    )
    .unwrap();
    // The race shows when the supervisor learns everything at once: stop it as soon as it has
    // started its worker, let the worker fail and exit, then let the supervisor go on.
    for attempt in 0..10 {
        let (mut sup, mut err, mut log, worker) = start_until_first_worker(&file, &path);
        signal(sup.0.id(), Signal::STOP);
        wait_until(Duration::from_secs(10), "the worker to fail", || {
            (!process_alive(worker)).then_some(())
        });
        signal(sup.0.id(), Signal::CONT);
        err.read_to_string(&mut log).unwrap();
        let st = sup.0.wait().unwrap();
        assert_no_panic("run", &log);
        assert_eq!(st.code(), Some(1), "{log}");
        assert!(
            log.contains(&format!("127.0.0.1:{port}")) && log.contains("in use"),
            "attempt {attempt}: the error names neither the address nor the cause:\n{log}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Formats and lookup

fn equivalent_configs(p1: u16, p2: u16, p3: u16) -> (String, String) {
    let yaml = format!(
        r#"graceful: true
shutdown_timeout: 5s
keepalive_grace: 200ms
servers:
  web:
    address: "127.0.0.1:{p3}"
    routes:
      "/pid": pid
      "/": hello
      "/files/*path": {{ handler: static, dir: www }}
  api:
    address: ["127.0.0.1:{p1}", "127.0.0.1:{p2}"]
    routes:
      "/": {{ handler: hello, text: "hi from api" }}
      "/pid": pid
      "/health": {{ handler: health, methods: [GET] }}
      "/sleep": {{ handler: sleep, duration: 1s }}
      "/only-post": {{ handler: pid, methods: [post, PUT] }}
"#
    );
    let toml = format!(
        r#"graceful = true
shutdown_timeout = "5s"
keepalive_grace = "200ms"

[servers.web]
address = "127.0.0.1:{p3}"

[servers.web.routes]
"/pid" = "pid"
"/" = "hello"
"/files/*path" = {{ handler = "static", dir = "www" }}

[servers.api]
address = ["127.0.0.1:{p1}", "127.0.0.1:{p2}"]

[servers.api.routes]
"/" = {{ handler = "hello", text = "hi from api" }}
"/pid" = "pid"
"/health" = {{ handler = "health", methods = ["GET"] }}
"/sleep" = {{ handler = "sleep", duration = "1s" }}
"/only-post" = {{ handler = "pid", methods = ["post", "PUT"] }}
"#
    );
    (yaml, toml)
}

/// What a server answers, minus the pids.
fn observe(p1: u16, p2: u16, p3: u16) -> Vec<String> {
    let mut out = Vec::new();
    for (port, method, path) in [
        (p1, "GET", "/"),
        (p2, "GET", "/"),
        (p1, "GET", "/health"),
        (p1, "POST", "/health"),
        (p2, "GET", "/only-post"),
        (p2, "PUT", "/only-post"),
        (p1, "GET", "/files/a.txt"),
        (p3, "GET", "/"),
        (p3, "GET", "/files/a.txt"),
        (p3, "GET", "/files/"),
        (p3, "GET", "/health"),
    ] {
        let r = request(port, method, path, &[], b"").unwrap();
        let body = if path == "/only-post" && r.status == 200 {
            "<pid>".to_string()
        } else {
            r.body_str()
        };
        out.push(format!(
            "{method} {path} on {port} -> {} allow={:?} {body:?}",
            r.status,
            r.header("allow")
        ));
    }
    out
}

#[test]
fn yaml_and_toml_configs_are_equivalent() {
    let (_dir, path) = tempdir();
    static_site(&path);
    let [p1, p2, p3] = free_ports();
    let (yaml, toml) = equivalent_configs(p1, p2, p3);
    let yaml_file = path.join("server.yaml");
    let toml_file = path.join("server.toml");
    std::fs::write(&yaml_file, &yaml).unwrap();
    std::fs::write(&toml_file, &toml).unwrap();

    let cy = run_cli(
        &path,
        &["check", "-c", yaml_file.to_str().unwrap()],
        &[],
        EXIT,
    );
    let ct = run_cli(
        &path,
        &["check", "-c", toml_file.to_str().unwrap()],
        &[],
        EXIT,
    );
    assert_eq!(cy.code(), Some(0), "{}", cy.stderr);
    assert_eq!(ct.code(), Some(0), "{}", ct.stderr);
    let (yl, tl): (Vec<&str>, Vec<&str>) =
        (cy.stdout.lines().collect(), ct.stdout.lines().collect());
    assert_eq!(yl[0], format!("config: {}", yaml_file.display()));
    assert_eq!(tl[0], format!("config: {}", toml_file.display()));
    assert_eq!(
        yl[1..],
        tl[1..],
        "check output differs:\n{}\n---\n{}",
        cy.stdout,
        ct.stdout
    );
    // The report says what was configured, in file order.
    let report = yl[1..].join("\n");
    assert!(report.contains("shutdown_timeout: 5s"), "{report}");
    assert!(report.contains("keepalive_grace: 200ms"), "{report}");
    assert!(
        report.contains(&format!(
            "server api:\n  listen http://127.0.0.1:{p1}\n  listen http://127.0.0.1:{p2}\n  route / -> hello\n  route /pid -> pid\n"
        )),
        "{report}"
    );
    assert!(
        report.contains("server web:")
            && report.contains(
                "  route /pid -> pid\n  route / -> hello\n  route /files/*path -> static"
            ),
        "{report}"
    );

    // Both serve the same routes (one after the other, on the same ports).
    let mut seen = Vec::new();
    for name in ["server.yaml", "server.toml"] {
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("run")
            .arg("-c")
            .arg(path.join(name))
            .current_dir(&path);
        let keep = tempfile::tempdir().unwrap();
        let mut host = Apphost::spawn(cmd, keep, path.join(name));
        host.wait_serving(p1);
        host.wait_serving(p2);
        host.wait_serving(p3);
        seen.push(observe(p1, p2, p3));
        host.signal(Signal::TERM);
        let st = host.wait_exit(EXIT);
        assert!(st.success(), "{name}: {st:?}\n{}", host.log());
    }
    assert_eq!(seen[0], seen[1]);
    // And what they serve is what was configured.
    let s = &seen[0];
    assert!(
        s[0].ends_with("-> 200 allow=None \"hi from api\\n\""),
        "{s:?}"
    );
    assert!(s[3].contains("-> 405 allow=Some(\"GET, HEAD\")"), "{s:?}");
    assert!(s[4].contains("-> 405 allow=Some(\"POST, PUT\")"), "{s:?}");
    assert!(s[5].contains("-> 200"), "{s:?}");
    assert!(s[6].contains("-> 404"), "{s:?}");
    assert!(s[7].ends_with("\"哈喽！\\n\""), "{s:?}");
    assert!(s[8].ends_with("-> 200 allow=None \"file a\\n\""), "{s:?}");
    assert!(s[10].contains("-> 404"), "{s:?}");
}

#[test]
fn check_without_a_config_file_reports_the_embedded_default() {
    let (_dir, path) = tempdir();
    let out = run_cli(&path, &["check"], &[], EXIT);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.starts_with("config: <embedded default>\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("listen http://:8199"), "{}", out.stdout);
    for r in [
        "route / -> hello",
        "route /pid -> pid",
        "route /sleep -> sleep",
    ] {
        assert!(out.stdout.contains(r), "{r}: {}", out.stdout);
    }
    assert!(out.stdout.ends_with("ok\n"), "{}", out.stdout);
}

fn small_config(port: u16, text: &str) -> String {
    format!(
        "servers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/\": {{ handler: hello, text: \"{text}\" }}\n"
    )
}

fn small_config_toml(port: u16) -> String {
    format!(
        "[servers.s1]\naddress = \"127.0.0.1:{port}\"\n\n[servers.s1.routes]\n\"/\" = \"hello\"\n"
    )
}

#[test]
fn check_finds_the_file_named_by_apphost_config() {
    let (_dir, path) = tempdir();
    let port = unique_port();
    std::fs::create_dir(path.join("etc")).unwrap();
    std::fs::write(path.join("etc/custom.yaml"), small_config(port, "custom")).unwrap();
    // A ./server.yaml that must lose to $APPHOST_CONFIG.
    std::fs::write(
        path.join("server.yaml"),
        small_config(unique_port(), "local"),
    )
    .unwrap();
    let out = run_cli(
        &path,
        &["check"],
        &[("APPHOST_CONFIG", "etc/custom.yaml")],
        EXIT,
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.lines().next(),
        Some(format!("config: {}", path.join("etc/custom.yaml").display()).as_str())
    );
    assert!(
        out.stdout
            .contains(&format!("listen http://127.0.0.1:{port}")),
        "{}",
        out.stdout
    );

    // A name that does not exist is an error, not a fallback.
    let out = run_cli(
        &path,
        &["check"],
        &[("APPHOST_CONFIG", "etc/missing.yaml")],
        EXIT,
    );
    assert_eq!(out.code(), Some(2), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("missing.yaml"), "{}", out.stderr);
    assert!(out.stderr.contains("APPHOST_CONFIG"), "{}", out.stderr);
    assert_no_panic("check", &out.stderr);
}

#[test]
fn check_finds_config_server_toml_in_the_current_directory() {
    let (_dir, path) = tempdir();
    let port = unique_port();
    std::fs::create_dir(path.join("config")).unwrap();
    std::fs::write(path.join("config/server.toml"), small_config_toml(port)).unwrap();
    let out = run_cli(&path, &["check"], &[], EXIT);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.lines().next(),
        Some(format!("config: {}", path.join("config/server.toml").display()).as_str())
    );
    assert!(
        out.stdout
            .contains(&format!("listen http://127.0.0.1:{port}")),
        "{}",
        out.stdout
    );

    // ./server.yaml comes first in the lookup order.
    let other = unique_port();
    std::fs::write(path.join("server.yaml"), small_config(other, "top")).unwrap();
    let out = run_cli(&path, &["check"], &[], EXIT);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.lines().next(),
        Some(format!("config: {}", path.join("server.yaml").display()).as_str())
    );
    assert!(
        out.stdout
            .contains(&format!("listen http://127.0.0.1:{other}")),
        "{}",
        out.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// Signals and timeouts

fn sleep_config(port: u16) -> String {
    format!(
        "shutdown_timeout: 5s\nservers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/pid\": pid\n      \"/sleep\": {{ handler: sleep, duration: 1s }}\n"
    )
}

/// Send a `/sleep` request, wait for its first line, send `sig` to the supervisor, and check
/// that the response completes and the host exits 0 with the shutdown log lines.
fn stop_with_a_request_in_flight(sig: Signal) {
    let port = unique_port();
    let (mut host, notify) = Apphost::start_notified(
        tempfile::tempdir().unwrap(),
        &sleep_config(port),
        "server.yaml",
    );
    let pid = host.wait_serving(port);
    // The supervisor counts the worker as ready (see the test below for the case where it has not yet).
    notify.wait_for("READY=1");
    let mut s = connect(port);
    s.write_all(
        format!("GET /sleep HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let line = format!("{pid}\n");
    // The request is under way (its first line has arrived) when the signal is sent.
    let (mut raw, _) = read_until_body_contains(&mut s, &line, Duration::from_secs(10));
    host.signal(sig);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    let read = s.read_to_end(&mut raw);
    let r = parse_response(&raw, false).unwrap_or_else(|e| {
        let _ = host.wait_exit(EXIT);
        panic!(
            "the response was cut ({e}; read: {read:?}) after {:?}: {:?}\nlog:\n{}",
            started.elapsed(),
            String::from_utf8_lossy(&raw),
            host.log()
        )
    });
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), format!("{pid}\n{pid}\n"), "the body was cut");
    let st = host.wait_exit(EXIT);
    assert_eq!(st.code(), Some(0), "{st:?}; log:\n{}", host.log());
    // The log is read by a thread: wait for the last lines to come through.
    host.wait_log(&format!("pid[{pid}]: all servers shutdown"));
    let log = host.log();
    let stopping = log
        .find(&format!("pid[{pid}]: server shutting down"))
        .unwrap_or_else(|| panic!("no `server shutting down` from the worker:\n{log}"));
    let done = log
        .find(&format!("pid[{pid}]: all servers shutdown"))
        .unwrap();
    assert!(stopping < done, "{log}");
    assert!(!process_alive(pid), "the worker outlived the supervisor");
    assert_no_panic("run", &log);
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    stop_with_a_request_in_flight(Signal::TERM);
}

#[test]
fn sigint_lets_the_request_in_flight_finish_then_exits_0() {
    stop_with_a_request_in_flight(Signal::INT);
}

#[test]
fn sigterm_does_not_cut_a_request_served_before_the_supervisor_saw_ready() {
    // Stop the supervisor as soon as it has started its worker: the worker serves on its own and
    // reports to the supervisor (one `bound` message per new socket, then `ready`); SIGTERM then
    // arrives together with those messages. Many listeners make the report long, so SIGTERM
    // usually comes first, and the worker is SIGKILLed with the request in flight.
    let ports: [u16; 200] = free_ports();
    let list: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let (_dir, path) = tempdir();
    let file = path.join("server.yaml");
    std::fs::write(
        &file,
        format!(
            "shutdown_timeout: 5s\nservers:\n  s1:\n    address: [{}]\n    routes:\n      \"/sleep\": {{ handler: sleep, duration: 300ms }}\n",
            list.join(", ")
        ),
    )
    .unwrap();
    let port = ports[0];
    let attempts = 8;
    let mut cut = Vec::new();
    for attempt in 0..attempts {
        let (mut sup, mut err, mut log, pid) = start_until_first_worker(&file, &path);
        signal(sup.0.id(), Signal::STOP);
        // A request to the worker as soon as it accepts (polled tightly: the window is short).
        let deadline = Instant::now() + Duration::from_secs(15);
        let (mut s, mut raw) = loop {
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            if let Ok(mut s) = TcpStream::connect(addr) {
                s.write_all(
                    format!(
                        "GET /sleep HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .unwrap();
                let (raw, _) =
                    read_until_body_contains(&mut s, &format!("{pid}\n"), Duration::from_secs(10));
                break (s, raw);
            }
            assert!(Instant::now() < deadline, "the worker never accepted");
            std::thread::sleep(Duration::from_millis(1));
        };
        signal(sup.0.id(), Signal::TERM);
        signal(sup.0.id(), Signal::CONT);
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = s.read_to_end(&mut raw);
        err.read_to_string(&mut log).unwrap();
        let st = sup.0.wait().unwrap();
        assert_no_panic("run", &log);
        let whole = parse_response(&raw, false)
            .is_ok_and(|r| r.status == 200 && r.body_str() == format!("{pid}\n{pid}\n"));
        if whole {
            assert_eq!(st.code(), Some(0), "attempt {attempt}:\n{log}");
        } else {
            cut.push(format!(
                "attempt {attempt}: {:?}\nlog:\n{log}",
                String::from_utf8_lossy(&raw)
            ));
        }
    }
    assert!(
        cut.is_empty(),
        "{} of {attempts} requests in flight were cut; the first:\n{}",
        cut.len(),
        cut[0]
    );
}

/// With `header_read_timeout: 1s`, a client on a plain port (`tls: false`) or an HTTPS port that
/// sends `first_bytes` and then nothing is disconnected after about a second, while another
/// client is served meanwhile. One that sends nothing at all is held by the kernel for a second
/// first (`defer_accept`, on by default: `TCP_DEFER_ACCEPT`), so it is disconnected after about
/// two; with `defer_accept: false`, after one.
fn slow_client_is_disconnected(tls: bool, first_bytes: &[u8], defer_accept: bool) {
    let (dir, path) = tempdir();
    let pki = make_pki(&path, 5);
    let [http, https] = free_ports();
    let host = Apphost::start_in(
        dir,
        &format!(
            "header_read_timeout: 1s\nshutdown_timeout: 5s\nservers:\n  s1:\n    defer_accept: {defer_accept}\n    address: \"127.0.0.1:{http}\"\n    https: {{ address: \"127.0.0.1:{https}\", cert: server.crt, key: server.key }}\n    routes:\n      \"/pid\": pid\n"
        ),
        "server.yaml",
        BIN.as_ref(),
    );
    let pid = host.wait_serving(http);
    wait_serving_tls(&host, https, &pki.ca_pem);
    let mut slow = connect(if tls { https } else { http });
    let start = Instant::now();
    slow.write_all(first_bytes).unwrap();
    // Served while the slow client hangs.
    assert_eq!(get(http, "/pid").body_str(), format!("{pid}\n"));
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let r = slow.read_to_end(&mut rest);
    let took = start.elapsed();
    match r {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the slow client was not disconnected within 10s ({e})"),
    }
    // The kernel hands over a connection that sent nothing after one SYN-ACK retransmission
    // (its initial timeout is 1 s); `header_read_timeout` runs from the `accept`.
    let held = defer_accept && first_bytes.is_empty();
    let (least, most) = if held {
        (Duration::from_millis(1900), Duration::from_secs(6))
    } else if defer_accept {
        (Duration::from_millis(900), Duration::from_secs(5))
    } else {
        // Accepted at once: not held by the kernel first (the held case takes 1.9 s or more).
        (Duration::from_millis(900), Duration::from_millis(1800))
    };
    assert!(
        took >= least && took < most,
        "disconnected after {took:?} (header_read_timeout is 1s, defer_accept {defer_accept})"
    );
    if !tls {
        // Nothing but perhaps an error status was sent.
        let text = String::from_utf8_lossy(&rest);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
    }
    assert_eq!(get(http, "/pid").body_str(), format!("{pid}\n"));
}

#[test]
fn header_read_timeout_disconnects_a_half_sent_request_line_while_others_are_served() {
    slow_client_is_disconnected(false, b"GET /pid HT", true);
}

#[test]
fn header_read_timeout_disconnects_unfinished_headers() {
    slow_client_is_disconnected(false, b"GET /pid HTTP/1.1\r\nHost: 127.0.0.1\r\n", true);
}

#[test]
fn header_read_timeout_bounds_the_tls_handshake() {
    slow_client_is_disconnected(true, b"", true);
}

/// `defer_accept` (default on): the kernel holds the silent connection for a second, then
/// apphost's `header_read_timeout` closes it.
#[test]
fn header_read_timeout_disconnects_a_plain_client_that_sends_nothing() {
    slow_client_is_disconnected(false, b"", true);
}

#[test]
fn without_defer_accept_a_client_that_sends_nothing_is_timed_from_its_connect() {
    slow_client_is_disconnected(false, b"", false);
    slow_client_is_disconnected(true, b"", false);
}

/// How long until the server closes `stream` (EOF or reset), within 10 s.
fn time_to_close(stream: &mut TcpStream) -> Duration {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("not closed within 10s ({e})"),
    }
    let text = String::from_utf8_lossy(&rest);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
    start.elapsed()
}

/// The idle_timeout tests use `idle_timeout: 1s` and `header_read_timeout: 5s`: a close comes no
/// earlier than the idle timeout, and well before the header-read one, so a connection timed by
/// the wrong deadline fails.
fn assert_about_a_second(took: Duration) {
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?} (idle_timeout is 1s, header_read_timeout 5s)"
    );
}

fn idle_timeout_host() -> (Apphost, u16, u32) {
    timeouts_host("5s", "1s")
}

/// A host with these `header_read_timeout` and `idle_timeout`, serving `/pid` and a 2.5 s `/sleep`.
fn timeouts_host(header_read: &str, idle: &str) -> (Apphost, u16, u32) {
    let port = free_port();
    let host = Apphost::start(&format!(
        "header_read_timeout: {header_read}\nidle_timeout: {idle}\nshutdown_timeout: 5s\nservers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/pid\": pid\n      \"/sleep\": {{ handler: sleep, duration: 2500ms }}\n"
    ));
    let pid = host.wait_serving(port);
    (host, port, pid)
}

/// With `idle_timeout: 1s`, a keep-alive connection that stays quiet after its response is
/// closed about a second later (not at the 5 s `header_read_timeout`); one that keeps sending
/// requests is not.
#[test]
fn idle_timeout_closes_a_quiet_keep_alive_connection() {
    let (_host, port, pid) = idle_timeout_host();
    let req = format!("GET /pid HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    let mut busy = connect(port);
    let mut quiet = connect(port);
    quiet.write_all(req.as_bytes()).unwrap();
    assert!(read_one_response(&mut quiet).ends_with(&format!("\r\n\r\n{pid}\n")));
    // Meanwhile `busy` sends a request every 300 ms for 2.4 s, longer than the idle timeout.
    let chatter = std::thread::spawn(move || {
        for _ in 0..8 {
            busy.write_all(req.as_bytes()).unwrap();
            let r = read_one_response(&mut busy);
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let took = time_to_close(&mut quiet);
    assert_about_a_second(took);
    chatter.join().expect("a connection in use was closed");
}

/// An HTTP/2 (h2c) connection with no open stream for `idle_timeout` gets GOAWAY and is closed
/// cleanly (the client's connection ends without an error).
#[test]
fn idle_timeout_closes_an_idle_http2_connection_with_goaway() {
    let (_host, port, pid) = idle_timeout_host();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut send, conn) = h2c_connect(port).await.unwrap();
        let req = http::Request::get(format!("http://127.0.0.1:{port}/pid"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("{pid}\n"));
        let idle_from = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), conn)
            .await
            .expect("the idle HTTP/2 connection was not closed within 10s")
            .unwrap()
            .expect("closed with an error, not GOAWAY");
        let took = idle_from.elapsed();
        assert_about_a_second(took);
    });
}

/// A keep-alive connection whose second request head stalls half-way is closed within about
/// `idle_timeout` of its first response.
#[test]
fn idle_timeout_bounds_a_stalled_second_request() {
    let (_host, port, pid) = idle_timeout_host();
    let mut c = connect(port);
    c.write_all(format!("GET /pid HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
        .unwrap();
    assert!(read_one_response(&mut c).ends_with(&format!("{pid}\n")));
    c.write_all(b"GET /pid HTTP/1.1\r\nHost: 127").unwrap();
    let took = time_to_close(&mut c);
    assert_about_a_second(took);
}

/// A response that streams for longer than `idle_timeout` and `header_read_timeout` is not cut:
/// a connection is never idle while a response is being written.
#[test]
fn a_response_longer_than_the_idle_timeout_is_not_cut() {
    let (_host, port, pid) = timeouts_host("1s", "1s");
    let started = Instant::now();
    let raw = raw_exchange(
        port,
        format!("GET /sleep HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let r = parse_response(&raw, false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), format!("{pid}\n{pid}\n"));
    assert!(started.elapsed() >= Duration::from_millis(2400));
}

// ---------------------------------------------------------------------------------------------
// Logs and the command line

#[test]
fn log_lines_use_the_seed_wording_with_the_worker_pid() {
    let (host, pki, http, https) = tls_host();
    let pid = host.wait_serving(http);
    wait_serving_tls(&host, https, &pki.ca_pem);
    host.wait_log(&format!(
        "pid[{pid}]: http server started listening on [127.0.0.1:{http}]"
    ));
    host.wait_log(&format!(
        "pid[{pid}]: https server started listening on [127.0.0.1:{https}]"
    ));
    let sup = host.pid();
    assert!(
        host.log().contains(&format!("pid[{sup}]: ")),
        "{}",
        host.log()
    );
}

#[test]
fn json_log_format_gives_json_lines_with_a_pid() {
    let port = unique_port();
    let host = Apphost::start(&format!(
        "log: {{ format: json }}\nshutdown_timeout: 5s\nservers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/pid\": pid\n"
    ));
    let pid = host.wait_serving(port);
    let started = format!("http server started listening on [127.0.0.1:{port}]");
    host.wait_log(&started);
    let log = host.log();
    let mut pids = Vec::new();
    let mut found = false;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\n{log}"));
        let p = v["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("no numeric pid: {line}"));
        assert!(v["level"].is_string() && v["time"].is_string(), "{line}");
        pids.push(p as u32);
        if v["msg"] == started.as_str() {
            assert_eq!(p as u32, pid, "{line}");
            found = true;
        }
    }
    assert!(found, "no JSON line with msg {started:?}:\n{log}");
    assert!(
        pids.contains(&host.pid()),
        "no line from the supervisor:\n{log}"
    );
}

#[test]
fn version_flag_prints_the_version() {
    let (_dir, path) = tempdir();
    let out = run_cli(&path, &["--version"], &[], EXIT);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout,
        format!("apphost {}\n", env!("CARGO_PKG_VERSION"))
    );
}
