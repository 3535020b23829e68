//! Going away first (`shutdown_delay`), the `ready` probe, and the readiness gate, on the real
//! binary.
//!
//! - A stop with `shutdown_delay` keeps serving (fresh connections too) while `ready` answers
//!   503 and `health` 200, and `status` shows `going_away`; the host drains only when the delay
//!   is over, and exits 0. A second stop signal in the delay exits 1 at once.
//! - `ready` answers 200 on every connection through restarts (the old worker draining, the new
//!   one starting): a balancer never takes a restarting host out.
//! - A restart whose readiness request fails (non-2xx, or no answer in time) is rolled back: the
//!   old generation serves on, and the asker gets the status and the start of the body.

use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::harness::*;
use crate::support::*;

/// One server on `port` with `/pid`, `/ready`, `/health`, `/slow` (a 5 s sleep) and
/// `/hello`; the control socket in `dir`; `extra` added at the top and `server_extra` in `s1`.
fn config(port: u16, dir: &Path, extra: &str, server_extra: &str) -> String {
    format!(
        "graceful: true\n{extra}watch: {{ executable: false, config: false }}\n\
         control: {{ socket: \"{sock}\" }}\n\
         servers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n{server_extra}    routes:\n      \
         \"/pid\": pid\n      \"/ready\": ready\n      \"/health\": health\n      \
         \"/hello\": hello\n      \"/slow\": {{ handler: sleep, duration: 5s }}\n",
        sock = dir.join("ctl.sock").display()
    )
}

fn cli(host: &Apphost, args: &[&str]) -> CmdOutput {
    let sock = host.dir.path().join("ctl.sock");
    let mut all = args.to_vec();
    all.extend(["--socket", sock.to_str().unwrap()]);
    run_cli(host.dir.path(), &all, &[], T)
}

fn start(extra: &str, server_extra: &str) -> (Host, u16) {
    let port = low_port();
    let dir = tempfile::tempdir().unwrap();
    let text = config(port, dir.path(), extra, server_extra);
    (Host::start_in(dir, &text, BIN.as_ref()), port)
}

#[test]
fn a_stop_with_shutdown_delay_serves_on_with_ready_503_then_drains_and_exits_0() {
    let (mut host, port) = start("shutdown_delay: 2s\nshutdown_timeout: 10s\n", "");
    let worker = host.wait_serving(port);
    assert_eq!(get(port, "/ready").status, 200);
    assert_eq!(get(port, "/health").status, 200);

    let stopped = Instant::now();
    host.signal(Signal::TERM);
    wait_until(T, "/ready answering 503", || {
        let r = try_get(port, "/ready").ok()?;
        (r.status == 503).then_some(r)
    });
    let went_away = stopped.elapsed();
    let r = get(port, "/ready");
    assert_eq!(r.body_str(), "shutting down\n");
    assert_eq!(get(port, "/health").status, 200, "health stays liveness");
    let out = cli(&host, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect(&out.stderr);
    assert_eq!(v["supervisor"]["phase"], "going_away", "{v}");

    // Fresh connections are still served, by the same worker, until the delay is over.
    let mut served = 0;
    while stopped.elapsed() < Duration::from_millis(1700) {
        let r = get(port, "/pid");
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str().trim(), worker.to_string());
        served += 1;
    }
    assert!(served > 10, "{served} requests in the delay");
    assert!(
        went_away < Duration::from_millis(1500),
        "ready turned 503 {went_away:?} after the stop"
    );
    // Then the drain; the host exits 0, not before the delay.
    let st = host.wait_exit(T);
    assert_eq!(st.code(), Some(0), "log:\n{}", host.log());
    assert!(
        stopped.elapsed() >= Duration::from_secs(2),
        "exited {:?} after the stop, before shutdown_delay (2 s)",
        stopped.elapsed()
    );
    host.wait_log("shutdown_delay is over; draining");
}

#[test]
fn an_in_flight_request_started_in_the_delay_finishes() {
    let (mut host, port) = start("shutdown_delay: 1s\nshutdown_timeout: 10s\n", "");
    host.wait_serving(port);
    host.signal(Signal::TERM);
    wait_until(T, "/ready answering 503", || {
        (try_get(port, "/ready").ok()?.status == 503).then_some(())
    });
    // 5 s: it outlives the delay and is finished by the drain.
    let r = get(port, "/slow");
    assert_eq!(r.status, 200);
    assert_eq!(host.wait_exit(T).code(), Some(0), "log:\n{}", host.log());
}

#[test]
fn a_second_stop_signal_in_the_delay_exits_at_once() {
    let (mut host, port) = start("shutdown_delay: 30s\n", "");
    host.wait_serving(port);
    host.signal(Signal::TERM);
    wait_until(T, "/ready answering 503", || {
        (try_get(port, "/ready").ok()?.status == 503).then_some(())
    });
    let second = Instant::now();
    host.signal(Signal::TERM);
    let st = host.wait_exit(T);
    assert_eq!(st.code(), Some(1), "log:\n{}", host.log());
    assert!(
        second.elapsed() < Duration::from_secs(3),
        "{:?}",
        second.elapsed()
    );
}

#[test]
fn shutdown_command_goes_away_first_too() {
    let (mut host, port) = start("shutdown_delay: 1s\n", "");
    host.wait_serving(port);
    let asked = Instant::now();
    let out = cli(&host, &["shutdown"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(get(port, "/ready").status, 503);
    assert_eq!(get(port, "/hello").status, 200);
    assert_eq!(host.wait_exit(T).code(), Some(0), "log:\n{}", host.log());
    assert!(asked.elapsed() >= Duration::from_secs(1));
}

/// Rewrite the host's config with `server_extra` in `s1` and ask for a restart over the control
/// socket; its output.
fn restart_with(host: &Host, port: u16, server_extra: &str) -> CmdOutput {
    let text = config(port, host.dir.path(), "", server_extra);
    std::fs::write(&host.config, text).unwrap();
    cli(host, &["restart"])
}

#[test]
fn a_restart_whose_readiness_request_fails_is_rolled_back_and_reported() {
    let (host, port) = start("", "    readiness: { path: /hello, timeout: 2s }\n");
    let first = host.wait_serving(port);

    // 404: the path is not a route of the new config.
    let out = restart_with(&host, port, "    readiness: /nope\n");
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("readiness request GET /nope answered 404 Not Found")
            && out.stderr.contains("404 page not found"),
        "{}",
        out.stderr
    );
    assert_eq!(pid_at(port), Some(first), "the old generation serves on");

    // No answer within the timeout.
    let started = Instant::now();
    let out = restart_with(
        &host,
        port,
        "    readiness: { path: /slow, timeout: 300ms }\n",
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("readiness request GET /slow did not answer within 300ms"),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(pid_at(port), Some(first));
    let out = cli(&host, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect(&out.stderr);
    assert_eq!(v["supervisor"]["last_restart"]["ok"], false, "{v}");

    // A readiness request answered 2xx: the restart goes through (`ready` itself answers 200
    // to the new generation's own request while the old one serves).
    let out = restart_with(&host, port, "    readiness: /ready\n");
    assert_eq!(out.code(), Some(0), "{out:?}");
    let second = wait_new_pid(&host, port, first);
    assert_ne!(second, first);
}

#[test]
fn ready_stays_200_through_restarts() {
    let (host, port) = start("", "    readiness: /ready\n");
    host.wait_serving(port);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let prober = std::thread::spawn(move || {
        let (mut ok, mut bad) = (0usize, Vec::new());
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            match try_get(port, "/ready") {
                Ok(r) if r.status == 200 => ok += 1,
                Ok(r) => bad.push(format!("{} {:?}", r.status, r.body_str())),
                Err(e) => bad.push(e.to_string()),
            }
        }
        (ok, bad)
    });
    for i in 1..=5 {
        host.signal(Signal::USR1);
        wait_log_n(&host, "restart done (graceful)", i);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, bad) = prober.join().unwrap();
    assert!(
        bad.is_empty(),
        "{} of {} probes failed: {bad:?}",
        bad.len(),
        ok + bad.len()
    );
    assert!(ok > 20, "{ok} probes");
}

#[test]
fn check_rejects_a_bad_readiness_or_shutdown_delay_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.yaml");
    let cases = [
        (
            "    readiness: ready\n",
            "server.yaml:7:16: servers.s1.readiness: the readiness path must start with \"/\", found \"ready\"",
        ),
        (
            "    readiness: { path: /ready, timeout: 0s }\n",
            "servers.s1.readiness: the readiness timeout must not be zero",
        ),
        (
            "    readiness: { path: /ready, timout: 1s }\n",
            "servers.s1.readiness.timout",
        ),
    ];
    for (server_extra, want) in cases {
        std::fs::write(&file, config(18999, dir.path(), "", server_extra)).unwrap();
        let out = run_cli(dir.path(), &["check", "-c", file.to_str().unwrap()], &[], T);
        assert_eq!(out.code(), Some(2), "{server_extra}: {out:?}");
        assert!(out.stderr.contains(want), "{server_extra}: {}", out.stderr);
    }
    std::fs::write(
        &file,
        config(18999, dir.path(), "shutdown_delay: soon\n", ""),
    )
    .unwrap();
    let out = run_cli(dir.path(), &["check", "-c", file.to_str().unwrap()], &[], T);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("shutdown_delay: invalid duration \"soon\""),
        "{}",
        out.stderr
    );
    std::fs::write(
        &file,
        config(
            18999,
            dir.path(),
            "shutdown_delay: 5s\n",
            "    readiness: /ready\n",
        ),
    )
    .unwrap();
    let out = run_cli(dir.path(), &["check", "-c", file.to_str().unwrap()], &[], T);
    assert_eq!(out.code(), Some(0), "{out:?}");
}
