//! Recovery on the real binary: a worker that dies is replaced with a doubling backoff, reset once
//! a worker has served a minute; with `graceful: false`, a new worker that fails to start is
//! started again from the recorded executable, with backoff, while connections wait.

use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::harness::*;
use crate::support::*;

/// The delays of the supervisor's `starting a new worker in N ms` lines so far.
fn backoffs(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| {
            let rest =
                &l[l.find("starting a new worker in ")? + "starting a new worker in ".len()..];
            rest.strip_suffix(" ms")?.trim().parse().ok()
        })
        .collect()
}

/// Kill the serving worker `pid`; return the replacement's pid, once the supervisor counts it as
/// ready (its `count`-th `READY=1`), and how long after the kill it first answered.
fn kill_and_wait_replacement(host: &Host, port: u16, pid: u32, count: usize) -> (u32, Duration) {
    let killed = Instant::now();
    signal(pid, Signal::KILL);
    // Asked while nothing serves: the connection waits in the queue and is answered by the
    // replacement (never refused).
    let r = get(port, "/pid");
    let answered = killed.elapsed();
    assert_eq!(r.status, 200);
    let new: u32 = r.body_str().trim().parse().unwrap();
    assert_ne!(new, pid, "answered by the replacement");
    host.wait_notify_count("READY=1", count);
    (new, answered)
}

/// A worker that keeps dying is replaced after 100 ms, then 200, 400, 800 (the supervisor
/// waits that long: the replacement answers no sooner), and a request made meanwhile waits for
/// the replacement instead of being refused.
#[test]
fn a_dying_worker_is_replaced_with_a_doubling_backoff() {
    let port = low_port();
    let host = Host::start(&graceful_config(port));
    let mut pid = host.wait_serving(port);
    let mut waited = Vec::new();
    for i in 0..4 {
        let (new, took) = kill_and_wait_replacement(&host, port, pid, i + 2);
        waited.push(took);
        pid = new;
    }
    assert_eq!(
        backoffs(&host.log()),
        [100, 200, 400, 800],
        "log:\n{}",
        host.log()
    );
    for (took, backoff) in waited.iter().zip([100u64, 200, 400, 800]) {
        assert!(
            *took >= Duration::from_millis(backoff),
            "replaced after {took:?}, before its {backoff} ms backoff"
        );
    }
    assert_eq!(
        host.log().matches("worker died unexpectedly").count(),
        4,
        "log:\n{}",
        host.log()
    );
}

/// The backoff goes back to 100 ms once a worker has served for a minute before dying. (The
/// test waits that minute, in parallel with the rest of the suite.)
#[test]
fn the_crash_backoff_resets_after_a_worker_served_a_minute() {
    let port = low_port();
    let host = Host::start(&graceful_config(port));
    let first = host.wait_serving(port);
    let (second, _) = kill_and_wait_replacement(&host, port, first, 2);
    let (third, _) = kill_and_wait_replacement(&host, port, second, 3);
    assert_eq!(backoffs(&host.log()), [100, 200]);
    let serving_since = Instant::now();
    // Served a minute (plus a margin for the supervisor's clock), answering all along.
    while serving_since.elapsed() < Duration::from_secs(61) {
        assert_eq!(pid_at(port), Some(third));
        std::thread::sleep(Duration::from_millis(500));
    }
    kill_and_wait_replacement(&host, port, third, 4);
    assert_eq!(
        backoffs(&host.log()),
        [100, 200, 100],
        "the third crash, after a minute of service, waits 100 ms again (400 without the reset); \
         log:\n{}",
        host.log()
    );
}

/// `graceful: false` and a new executable that fails: there is no old worker to fall back to, so
/// the supervisor starts the recorded executable again and again with backoff, while connections
/// wait in the queue; once the file is fixed, the next attempt serves them.
#[test]
fn full_restart_to_a_failing_executable_retries_it_with_backoff_until_it_works() {
    let port = low_port();
    let (host, exe) = start_from_copy(&config(false, "5s", &[port], "1s"));
    let old = host.wait_serving(port);
    replace_with(&exe, b"#!/bin/sh\necho 'broken build' >&2\nexit 1\n");
    host.signal(Signal::USR1);
    host.wait_log("restart requested");
    wait_gone(old, T, "the old worker (a full restart drains it first)");
    // A client meanwhile: its connection is accepted by the kernel and waits.
    let waiting = std::thread::spawn(move || get(port, "/pid"));
    wait_until(T, "two failed starts with backoff", || {
        (backoffs(&host.log()).len() >= 2).then_some(())
    });
    let log = host.log();
    assert_eq!(backoffs(&log)[..2], [100, 200], "log:\n{log}");
    assert!(log.contains("broken build"), "the reason is logged:\n{log}");
    assert!(
        !waiting.is_finished(),
        "the waiting request was answered early"
    );
    restore_binary(&exe);
    let r = waiting.join().unwrap();
    assert_eq!(r.status, 200);
    let new: u32 = r.body_str().trim().parse().unwrap();
    assert_ne!(new, old);
    assert_eq!(pid_at(port), Some(new));
    host.wait_log("restart done (full)");
}
