//! The access log and request ids (issue #13): exactly one valid line per request across
//! restarts under load, requests finishing on a draining worker, the combined format, the
//! `x-request-id` round trip (`reopen-logs`: `reopen_logs.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Host, KeepAlive, T, low_port};
use crate::support::*;

/// A graceful host on `port` with `/pid`, `/sleep` (`sleep` long) and an admin, logging to
/// `access.log` in its directory in `format`.
pub(crate) fn config(port: u16, format: &str, sleep: &str) -> String {
    format!(
        "graceful: true\n\
         shutdown_timeout: 10s\n\
         watch: {{ executable: false, config: false }}\n\
         servers:\n  \
           s1:\n    \
             address: \"127.0.0.1:{port}\"\n    \
             admin: true\n    \
             access_log: {{ path: access.log, format: {format} }}\n    \
             routes:\n      \
               \"/pid\": pid\n      \
               \"/sleep\": {{ handler: sleep, duration: {sleep} }}\n"
    )
}

/// Every line of `path`, each parsed as JSON (a line that does not parse fails the test).
pub(crate) fn json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("not one JSON object: {l:?}: {e}"))
        })
        .collect()
}

/// Stop the host (SIGTERM: every worker drains and exits, writing out its log) and wait.
pub(crate) fn stop(host: &mut Host) {
    host.signal(rustix::process::Signal::TERM);
    let st = host.wait_exit(T);
    assert!(st.success(), "exit {st:?}; log:\n{}", host.log());
}

pub(crate) fn cli(host: &Host, args: &[&str]) -> CmdOutput {
    let config = host.config.to_str().unwrap().to_string();
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["-c", &config]);
    let out = run_cli(host.dir.path(), &a, &[], T);
    assert_eq!(out.code(), Some(0), "apphost {args:?}: {}", out.stderr);
    out
}

#[test]
fn exactly_one_json_line_per_request_across_restarts_under_load() {
    let port = low_port();
    // Host::start returns once the supervisor has the worker's ready report: no request of
    // the test's own is needed (it would be one line more).
    let mut host = Host::start(&config(port, "json", "1s"));
    let stop_clients = Arc::new(AtomicBool::new(false));
    // Clients on fresh connections, each request with an id of its own; and one keep-alive
    // client whose requests get generated ids.
    let fresh: Vec<_> = (0..3)
        .map(|t| {
            let stop = stop_clients.clone();
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                let mut failures = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("c{t}-{i}");
                    i += 1;
                    match request(port, "GET", "/pid", &[("x-request-id", &id)], b"") {
                        Ok(r) if r.status == 200 => {
                            assert_eq!(r.header("x-request-id"), Some(id.as_str()));
                            ids.push(id);
                        }
                        other => failures.push(format!("{id}: {other:?}")),
                    }
                }
                (ids, failures)
            })
        })
        .collect();
    let keepalive = {
        let stop = stop_clients.clone();
        std::thread::spawn(move || {
            let mut c = KeepAlive::new(port);
            let (mut ids, mut failures) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match c.get("/pid") {
                    Ok(r) if r.status == 200 => {
                        ids.push(r.header("x-request-id").expect("an id").to_string())
                    }
                    other => failures.push(format!("{other:?}")),
                }
            }
            (ids, failures)
        })
    };
    for n in 2..=4 {
        let out = cli(&host, &["restart"]);
        assert!(
            out.stdout.contains(&format!("generation {n}")),
            "{}",
            out.stdout
        );
        // Let every client see the new generation serve before the next restart.
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_clients.store(true, Ordering::Relaxed);
    let mut sent = BTreeSet::new();
    let mut total = 0;
    for h in fresh.into_iter().chain([keepalive]) {
        let (ids, failures) = h.join().unwrap();
        assert!(failures.is_empty(), "client failures: {failures:?}");
        total += ids.len();
        sent.extend(ids);
    }
    assert_eq!(sent.len(), total, "two responses carried the same id");
    stop(&mut host);

    let lines = json_lines(&host.dir.path().join("access.log"));
    let mut logged = BTreeMap::new();
    let mut generations = BTreeSet::new();
    for v in &lines {
        let id = v["request_id"].as_str().expect("request_id").to_string();
        assert_eq!(v["path"], "/pid");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["status"], 200);
        assert_eq!(v["client"], "127.0.0.1");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert!(v["bytes"].as_u64().unwrap() > 0);
        assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert!(v.get("user_agent").is_some());
        generations.insert(v["generation"].as_u64().expect("generation"));
        *logged.entry(id).or_insert(0) += 1;
    }
    let doubled: Vec<_> = logged.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "logged twice: {doubled:?}");
    let logged: BTreeSet<String> = logged.into_keys().collect();
    let missing: Vec<_> = sent.difference(&logged).take(5).collect();
    let extra: Vec<_> = logged.difference(&sent).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} sent, {} lines; missing {missing:?}, never sent {extra:?}",
        sent.len(),
        lines.len()
    );
    assert_eq!(lines.len(), total);
    assert!(
        generations.len() >= 3,
        "lines from generations {generations:?} only"
    );
}

/// `GET path` with `x-request-id: id`, on a thread; returns once the response has started.
pub(crate) fn slow_request(port: u16, path: &str, id: &str) -> std::thread::JoinHandle<Vec<u8>> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nx-request-id: {id}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).unwrap();
    std::thread::spawn(move || {
        let mut rest = first.to_vec();
        s.read_to_end(&mut rest).unwrap();
        rest
    })
}

#[test]
fn a_slow_request_finishing_on_the_draining_worker_is_logged() {
    let port = low_port();
    let mut host = Host::start(&config(port, "json", "2s"));
    let old = host.wait_serving(port);
    let slow = slow_request(port, "/sleep", "slow-1");
    cli(&host, &["restart"]);
    let resp = slow.join().unwrap();
    let text = String::from_utf8_lossy(&resp);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains(&old.to_string()),
        "{text}"
    );
    // The line is written by the draining worker: before it exits, at the latest.
    crate::harness::wait_gone(old, T, "the old worker");
    let lines = json_lines(&host.dir.path().join("access.log"));
    let v = lines
        .iter()
        .find(|v| v["request_id"] == "slow-1")
        .unwrap_or_else(|| panic!("no line for the slow request: {lines:?}"));
    assert_eq!(v["generation"], 1);
    assert_eq!(v["status"], 200);
    assert_eq!(v["path"], "/sleep");
    assert!(v["duration_ms"].as_f64().unwrap() >= 1900.0, "{v}");
    assert_eq!(
        v["bytes"].as_u64().unwrap(),
        2 * (old.to_string().len() as u64 + 1)
    );
    assert_eq!(
        lines.iter().filter(|v| v["request_id"] == "slow-1").count(),
        1
    );
    stop(&mut host);
}

#[test]
fn combined_format_is_apaches_and_nginxs() {
    let port = low_port();
    let mut host = Host::start(&config(port, "combined", "1s"));
    let pid = host.wait_serving(port);
    let r = request(
        port,
        "GET",
        "/pid?x=1",
        &[
            ("User-Agent", "tester \"7\""),
            ("Referer", "http://example.test/"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    stop(&mut host);
    let text = std::fs::read_to_string(host.dir.path().join("access.log")).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("/pid?x=1"))
        .unwrap_or_else(|| panic!("no line: {text}"));
    // 127.0.0.1 - - [29/Nov/2026:17:33:26 +0000] "GET /pid?x=1 HTTP/1.1" 200 6 "ref" "ua"
    let (head, rest) = line.split_once(" [").unwrap();
    assert_eq!(head, "127.0.0.1 - -");
    let (time, rest) = rest.split_once("] ").unwrap();
    assert_eq!(time.len(), 26, "{time}");
    assert!(time.ends_with(" +0000") && &time[2..3] == "/" && &time[11..12] == ":");
    assert_eq!(
        rest,
        format!(
            "\"GET /pid?x=1 HTTP/1.1\" 200 {} \"http://example.test/\" \"tester \\x227\\x22\"",
            pid.to_string().len() + 1
        )
    );
}

#[test]
fn request_ids_are_echoed_or_generated_and_bounded() {
    let port = low_port();
    let mut host = Host::start(&config(port, "json", "1s"));
    host.wait_serving(port);
    let given = request(port, "GET", "/pid", &[("X-Request-Id", "abc-123")], b"").unwrap();
    assert_eq!(given.header("x-request-id"), Some("abc-123"));
    let generated = get(port, "/pid");
    let gen_id = generated
        .header("x-request-id")
        .expect("a generated id")
        .to_string();
    let (prefix, n) = gen_id.split_once('-').expect("PREFIX-N");
    assert_eq!(prefix.len(), 16, "{gen_id}");
    assert!(
        prefix
            .chars()
            .chain(n.chars())
            .all(|c| c.is_ascii_hexdigit())
    );
    // A hostile id (too long, or with characters a log or a terminal should not get) is
    // replaced; an 8 KiB user agent is cut; the line stays one valid JSON line.
    let long = "x".repeat(200);
    let replaced = request(port, "GET", "/pid", &[("x-request-id", &long)], b"").unwrap();
    let replaced_id = replaced.header("x-request-id").unwrap().to_string();
    assert_ne!(replaced_id, long);
    let odd = request(port, "GET", "/pid", &[("x-request-id", "<a b>")], b"").unwrap();
    assert_ne!(odd.header("x-request-id"), Some("<a b>"));
    let ua = "u".repeat(8192);
    get_with_ua(port, &ua);
    stop(&mut host);
    let lines = json_lines(&host.dir.path().join("access.log"));
    let ids: Vec<&str> = lines
        .iter()
        .map(|v| v["request_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"abc-123") && ids.contains(&gen_id.as_str()));
    assert!(ids.contains(&replaced_id.as_str()));
    assert!(
        !ids.iter().any(|i| i.contains('<') || i.len() > 128),
        "{ids:?}"
    );
    let cut = lines
        .iter()
        .find(|v| {
            v["user_agent"]
                .as_str()
                .is_some_and(|u| u.starts_with("uuu"))
        })
        .expect("the long user agent's line");
    assert!(cut["user_agent"].as_str().unwrap().ends_with("..."));
    let text = std::fs::read_to_string(host.dir.path().join("access.log")).unwrap();
    assert!(text.lines().all(|l| l.len() <= 4096));
}

/// `echo_id: false`: the ids are given and logged as before, and no response carries one.
#[test]
fn with_echo_id_false_ids_are_logged_but_not_returned() {
    let port = low_port();
    let cfg =
        config(port, "json", "1s").replace("format: json }", "format: json, echo_id: false }");
    let mut host = Host::start(&cfg);
    host.wait_serving(port);
    let given = request(port, "GET", "/pid", &[("x-request-id", "abc-9")], b"").unwrap();
    let made = get(port, "/pid");
    assert_eq!((given.status, made.status), (200, 200));
    assert_eq!(given.header("x-request-id"), None);
    assert_eq!(made.header("x-request-id"), None);
    stop(&mut host);
    let lines = json_lines(&host.dir.path().join("access.log"));
    let ids: Vec<&str> = lines
        .iter()
        .filter(|v| v["path"] == "/pid")
        .map(|v| v["request_id"].as_str().unwrap())
        .collect();
    // (The first is `wait_serving`'s.)
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(ids[1], "abc-9");
    assert_eq!(ids[2].len(), 33, "{ids:?}");
}

#[test]
fn a_handlers_log_lines_carry_the_request_id_of_their_span() {
    let port = low_port();
    let host = Host::start(&config(port, "json", "1s"));
    host.wait_serving(port);
    // The admin handler logs every request it serves, inside the request's span.
    let r = request(
        port,
        "GET",
        "/debug/admin/status",
        &[("x-request-id", "span-77")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    host.wait_log("request_id=span-77");
    let line = crate::harness::lines_with(&host.log(), "request_id=span-77").remove(0);
    assert!(line.contains("admin: status"), "{line}");
}

fn get_with_ua(port: u16, ua: &str) {
    let r = request(port, "GET", "/pid", &[("User-Agent", ua)], b"").unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn check_reports_a_bad_access_log_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.yaml");
    std::fs::write(
        &cfg,
        "servers:\n  s1:\n    address: \"127.0.0.1:1\"\n    access_log: { path: a.log, format: xml }\n",
    )
    .unwrap();
    let out = run_cli(dir.path(), &["check", "-c", "server.yaml"], &[], T);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "server.yaml:4:40: servers.s1.access_log.format: unknown access log format \"xml\""
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn check_lists_the_access_log() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("server.yaml"),
        "servers:\n  s1:\n    address: \"127.0.0.1:1\"\n    access_log: { path: logs/a.log, format: json }\n",
    )
    .unwrap();
    let out = run_cli(dir.path(), &["check", "-c", "server.yaml"], &[], T);
    assert_eq!(
        out.code(),
        Some(2),
        "the directory is missing: {}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("server.yaml:4:25: servers.s1.access_log.path: the directory"),
        "{}",
        out.stderr
    );
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let out = run_cli(dir.path(), &["check", "-c", "server.yaml"], &[], T);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let want = format!(
        "  access_log {} (json)",
        dir.path().join("logs/a.log").display()
    );
    assert!(out.stdout.contains(&want), "{}", out.stdout);
    let text = std::fs::read_to_string(dir.path().join("server.yaml")).unwrap();
    std::fs::write(
        dir.path().join("server.yaml"),
        text.replace("json }", "json, echo_id: false }"),
    )
    .unwrap();
    let out = run_cli(dir.path(), &["check", "-c", "server.yaml"], &[], T);
    assert!(
        out.stdout.contains("(json, ids not returned in responses)"),
        "{}",
        out.stdout
    );
}

/// stdout is a pipe nobody reads: the log's writer blocks on it, its buffer fills, and lines
/// are dropped and counted, while every request is still answered at once; once the pipe is
/// read again, the count is reported.
#[test]
fn a_stuck_stdout_drops_and_counts_lines_without_holding_requests() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let port = low_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.yaml");
    std::fs::write(
        &cfg,
        format!(
            "watch: {{ executable: false, config: false }}\n\
             servers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    \
             access_log: {{ path: stdout, format: json }}\n    routes: {{ \"/pid\": pid }}\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&cfg)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("APPHOST_CONFIG")
        .env("APPHOST_LOG", "info")
        .spawn()
        .unwrap();
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let (l, err) = (log.clone(), child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            l.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    wait_until(T, "the worker to serve", || {
        try_get(port, "/pid").ok().filter(|r| r.status == 200)
    });
    // Lines of about 2.2 KiB (a 2 KiB path, answered 404): 64 KiB fill the pipe, 1 MiB the
    // buffer; 800 requests are well past both.
    let path = format!("/{}", "p".repeat(2047));
    // Nobody reads the pipe yet: a request whose line waited on it would never be answered.
    for _ in 0..800 {
        let r = try_get(port, &path).unwrap();
        assert_eq!(r.status, 404);
    }
    // Read the pipe again: the writer gets going and reports what it dropped.
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = out.read_to_end(&mut all);
        String::from_utf8(all).unwrap()
    });
    wait_until(T, "the dropped lines to be reported", || {
        log.lock()
            .unwrap()
            .contains("line(s) dropped")
            .then_some(())
    });
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{st:?}");
    let written = reader
        .join()
        .unwrap()
        .lines()
        .filter(|l| l.contains("pppp"))
        .inspect(|l| {
            serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
        })
        .count();
    let text = log.lock().unwrap().clone();
    let dropped: usize = text
        .lines()
        .filter(|l| l.contains("line(s) dropped"))
        .map(|l| {
            l.split("stdout: ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("no count in {l:?}"))
        })
        .sum();
    assert!(dropped > 0, "nothing dropped: {text}");
    // Each request is written or counted as dropped, exactly once.
    assert_eq!(
        written + dropped,
        800,
        "{written} written, {dropped} dropped"
    );
}

/// HTTP/2 streams are recorded like HTTP/1 requests: one line each, with their protocol, the
/// path from the `:path` pseudo-header, and the body bytes.
#[test]
fn http2_streams_are_logged_one_line_each() {
    let port = low_port();
    let mut host = Host::start(&config(port, "json", "1s"));
    let pid = host.wait_serving(port);
    for _ in 0..3 {
        let r = h2c_get(port, "/pid?h2=1").unwrap();
        assert_eq!((r.status, r.version), (200, http::Version::HTTP_2));
    }
    stop(&mut host);
    let lines = json_lines(&host.dir.path().join("access.log"));
    let h2: Vec<&Value> = lines.iter().filter(|v| v["path"] == "/pid?h2=1").collect();
    assert_eq!(h2.len(), 3, "{lines:?}");
    for v in h2 {
        assert_eq!(v["protocol"], "HTTP/2.0");
        assert_eq!(v["status"], 200);
        assert_eq!(
            v["bytes"].as_u64().unwrap(),
            pid.to_string().len() as u64 + 1
        );
    }
}
