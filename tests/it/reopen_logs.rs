//! `reopen-logs` (issue #13) the way logrotate uses it: rename the file, reopen, and compress the
//! renamed one at once (no `delaycompress`). Each test reads the renamed file the moment the
//! command (or the admin route) has answered, with no waiting: the answer must come only when
//! every worker, a draining one too, has written what it held there and opened the path anew.
//! A file that cannot be reopened is named, the command fails, and no line is lost.

use std::path::Path;

use serde_json::Value;

use crate::access_log::{cli, config, json_lines, slow_request, stop};
use crate::harness::{Host, T, low_port};
use crate::support::*;

/// The ids of the lines in `p` that this test's requests sent (`r-…`, `slow-…`).
fn ids(p: &Path) -> Vec<String> {
    json_lines(p)
        .iter()
        .map(|v| v["request_id"].as_str().unwrap().to_string())
        .filter(|id| id.starts_with("r-") || id.starts_with("slow-"))
        .collect()
}

fn expect(r: std::ops::Range<usize>) -> Vec<String> {
    r.map(|i| format!("r-{i}")).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// `POST` the admin route's `reopen-logs`, expecting `status`; its JSON answer.
fn admin_reopen(port: u16, status: u16) -> Value {
    let r = request(
        port,
        "POST",
        "/debug/admin/reopen-logs",
        &[("Accept", "application/json")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, status, "{}", r.body_str());
    serde_json::from_slice(&r.body).unwrap()
}

/// `GET /pid` with ids `r-from` … `r-(from+n-1)`.
fn send(port: u16, from: usize, n: usize) {
    for i in from..from + n {
        let id = format!("r-{i}");
        let r = request(port, "GET", "/pid", &[("x-request-id", &id)], b"").unwrap();
        assert_eq!(r.status, 200);
    }
}

#[test]
fn the_answer_comes_when_the_renamed_file_is_complete() {
    let port = low_port();
    let mut host = Host::start(&config(port, "json", "1s"));
    host.wait_serving(port);
    let log = host.dir.path().join("access.log");
    let rotated = host.dir.path().join("access.log.1");
    send(port, 0, 20);
    // logrotate: rename, then tell the host. Lines are flushed once a second: without the wait,
    // most of these would still be in the worker's buffer now.
    std::fs::rename(&log, &rotated).unwrap();
    let out = cli(&host, &["reopen-logs"]);
    assert_eq!(
        out.stdout.trim(),
        "reopened 1 access log file in 1 of 1 worker: the renamed files are complete"
    );
    assert_eq!(
        ids(&rotated),
        expect(0..20),
        "read as soon as the command returned"
    );
    assert!(log.exists(), "the path is not open anew");
    send(port, 20, 20);
    // Again through the admin route.
    let second = host.dir.path().join("access.log.2");
    std::fs::rename(&log, &second).unwrap();
    let v = admin_reopen(port, 200);
    assert_eq!(
        v,
        serde_json::json!({ "ok": true, "kind": "logs_reopened", "workers": 1,
                            "confirmed": 1, "files": 1, "failed": [] })
    );
    assert_eq!(ids(&second), expect(20..40));
    assert!(log.exists());
    send(port, 40, 20);
    stop(&mut host);
    assert_eq!(ids(&rotated), expect(0..20));
    assert_eq!(ids(&second), expect(20..40));
    assert_eq!(ids(&log), expect(40..60));
}

#[test]
fn a_draining_worker_reopens_too_and_the_answer_waits_for_it() {
    let port = low_port();
    let mut host = Host::start(&config(port, "json", "3s"));
    let old = host.wait_serving(port);
    let log = host.dir.path().join("access.log");
    let rotated = host.dir.path().join("access.log.1");
    send(port, 0, 10);
    // A slow request keeps the first worker draining past the restart.
    let slow = slow_request(port, "/sleep", "slow-1");
    cli(&host, &["restart"]);
    let new = crate::harness::wait_new_pid(&host, port, old);
    send(port, 10, 10);
    std::fs::rename(&log, &rotated).unwrap();
    let out = cli(&host, &["reopen-logs"]);
    assert_eq!(
        out.stdout.trim(),
        "reopened 2 access log files in 2 of 2 workers: the renamed files are complete",
        "old {old}, new {new}"
    );
    // Both workers' lines so far, at once (the first ten were the old worker's: each worker's
    // in order, the two batches in either).
    assert_eq!(sorted(ids(&rotated)), sorted(expect(0..20)));
    // The slow request finishes on the draining worker after the reopen: its line goes to the
    // new file, which the draining worker opened too.
    slow.join().unwrap();
    crate::harness::wait_gone(old, T, "the old worker");
    assert_eq!(ids(&log), ["slow-1"]);
    assert_eq!(sorted(ids(&rotated)), sorted(expect(0..20)));
    stop(&mut host);
}

#[test]
fn a_file_that_cannot_be_reopened_is_named_and_no_line_is_lost() {
    let port = low_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let socket = dir.path().join("control.sock");
    let cfg = config(port, "json", "1s").replace("path: access.log", "path: logs/access.log")
        + &format!("control: {{ socket: {} }}\n", socket.display());
    let mut host = Host::start_in(dir, &cfg, BIN.as_ref());
    host.wait_serving(port);
    let log = host.dir.path().join("logs/access.log");
    send(port, 0, 5);
    // The directory itself moved away: the path cannot be opened anew.
    std::fs::rename(host.dir.path().join("logs"), host.dir.path().join("logs.1")).unwrap();
    let rotated = host.dir.path().join("logs.1/access.log");
    // (By its socket: the config no longer passes `check`, its log directory being gone.)
    let socket = socket.to_str().unwrap();
    let out = run_cli(
        host.dir.path(),
        &["reopen-logs", "--socket", socket],
        &[],
        T,
    );
    assert_eq!(out.code(), Some(1), "{} {}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "reopened 0 access log files in 1 of 1 worker; 1 reopen failed:"
    );
    let want = format!("cannot reopen {}: No such file or directory", log.display());
    assert!(
        out.stderr.starts_with("apphost: worker ") && out.stderr.contains(&want),
        "{}",
        out.stderr
    );
    // The worker goes on writing to the file it has open: the one that moved.
    assert_eq!(ids(&rotated), expect(0..5));
    send(port, 5, 5);
    let v = admin_reopen(port, 500);
    assert_eq!((&v["ok"], &v["files"]), (&false.into(), &0.into()), "{v}");
    assert!(v["failed"][0].as_str().unwrap().contains(&want), "{v}");
    assert_eq!(ids(&rotated), expect(0..10));
    // Once the directory is back, the next reopen works.
    std::fs::create_dir(host.dir.path().join("logs")).unwrap();
    cli(&host, &["reopen-logs"]);
    send(port, 10, 5);
    stop(&mut host);
    assert_eq!(ids(&rotated), expect(0..10));
    assert_eq!(ids(&log), expect(10..15));
}
