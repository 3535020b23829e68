//! Limits a hostile client runs into (issue #10): descriptor exhaustion does not spin the accept
//! loop or flood the log, and the worker starts with its soft open-file limit at the hard limit.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::support::{Apphost, BIN, get, try_get, unique_port, wait_until};

const T: Duration = Duration::from_secs(30);

fn config(ports: &[u16]) -> String {
    let addresses: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        "servers:\n  s:\n    address: [{}]\n    routes:\n      \"/pid\": pid\n",
        addresses.join(", ")
    )
}

/// `apphost run` under `prlimit --nofile=SOFT:HARD`, listening on `ports`.
fn start_limited(ports: &[u16], soft: u32, hard: u32) -> Apphost {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.yaml");
    std::fs::write(&path, config(ports)).unwrap();
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={soft}:{hard}"))
        .arg(BIN)
        .arg("run")
        .arg("-c")
        .arg(&path)
        .current_dir(dir.path());
    let host = Apphost::spawn(cmd, dir, path);
    for &port in ports {
        host.wait_serving(port);
    }
    host
}

/// The soft and hard open-file limits of `pid`.
fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut f = line["Max open files".len()..].split_whitespace();
    (f.next().unwrap().into(), f.next().unwrap().into())
}

#[test]
fn the_worker_raises_its_soft_open_file_limit_to_the_hard_limit() {
    let port = unique_port();
    let _host = start_limited(&[port], 256, 4096);
    let worker: u32 = get(port, "/pid").body_str().trim().parse().unwrap();
    assert_eq!(nofile(worker), ("4096".into(), "4096".into()));
}

/// Seconds into the day of a log line's timestamp (`2026-11-29T14:57:32.228662Z ...`).
fn log_secs(line: &str) -> f64 {
    let t = &line[line.find('T').unwrap() + 1..line.find('Z').unwrap()];
    let p: Vec<f64> = t.split(':').map(|x| x.parse().unwrap()).collect();
    p[0] * 3600.0 + p[1] * 60.0 + p[2]
}

/// Descriptors run out for the whole worker, so every listener's accept loop fails at once: the
/// worker (not each of its listeners) logs it once a second.
#[test]
fn descriptor_exhaustion_is_reported_once_a_second_with_a_count() {
    let [port, port2] = crate::support::free_ports::<2>();
    let host = start_limited(&[port, port2], 64, 64);
    // More connections than the worker has descriptors, on both listeners: the rest wait in the
    // accept queues, and every accept fails with EMFILE until some close.
    let clients: Vec<TcpStream> = (0..80)
        .map(|i| TcpStream::connect(("127.0.0.1", if i % 2 == 0 { port } else { port2 })).unwrap())
        .collect();
    let reports = || -> Vec<String> {
        host.log()
            .lines()
            .filter(|l| l.contains("accept failed"))
            .map(str::to_string)
            .collect()
    };
    let r = wait_until(T, "two reports of failed accepts", || {
        let r = reports();
        (r.len() >= 2).then_some(r)
    });
    let gap = log_secs(&r[1]) - log_secs(&r[0]);
    assert!(
        gap >= 0.9,
        "failed accepts reported {gap:.3} s apart:\n{}\n{}",
        r[0],
        r[1]
    );
    let count: u64 = r[1]
        .split("failures=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no failure count in {:?}", r[1]));
    assert!(count >= 2, "{:?}", r[1]);
    // Paused, not spinning: at most a few dozen tries in that second (10 ms doubling to 500 ms,
    // on each listener).
    assert!(count < 20, "{count} failed accepts in a second: {:?}", r[1]);
    drop(clients);
    for p in [port, port2] {
        wait_until(T, "the worker to accept again", || {
            try_get(p, "/pid").ok().filter(|r| r.status == 200)
        });
    }
}

/// A request body that stops arriving: `408` after `idle_timeout`, then the connection closes.
#[test]
fn a_request_body_that_stops_arriving_gets_408_after_idle_timeout() {
    use std::io::{Read, Write};
    let port = unique_port();
    let cfg = format!(
        "idle_timeout: 1s\nservers:\n  s:\n    address: \"127.0.0.1:{port}\"\n    admin: {{ path: /debug/admin }}\n    routes:\n      \"/pid\": pid\n"
    );
    let host = Apphost::start(&cfg);
    host.wait_serving(port);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    // An admin form post (the handler reads the body) that declares 10,000 bytes and sends 6.
    s.write_all(
        b"POST /debug/admin/restart HTTP/1.1\r\nHost: 127.0.0.1\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 10000\r\n\r\nfoo=ba",
    )
    .unwrap();
    let start = std::time::Instant::now();
    let mut raw = Vec::new();
    // Read to the end: the server must answer and close.
    s.read_to_end(&mut raw).unwrap();
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "408 after {took:?}"
    );
    // The worker is still serving, and did not restart.
    assert!(!host.log().contains("restart done"));
    get(port, "/pid");
}
