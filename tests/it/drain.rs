//! The drain's deadlines on the real binary: `keepalive_grace` for an idle keep-alive connection
//! across a restart, `shutdown_timeout` cutting a request that outlives it, the supervisor's kill
//! of a worker that does not exit by then, and a second stop signal exiting at once.
//!
//! Each test picks values far enough apart that the wrong deadline fails it: a connection closed
//! at once, or only at `shutdown_timeout`, falls outside the band asserted.

use std::io::Read;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::harness::*;
use crate::support::*;

/// One server on `port` with `/pid` and a `/sleep` of `sleep`, the file watchers off, and
/// `extra` (top-level keys, one per line) added.
fn drain_config(port: u16, sleep: &str, extra: &str) -> String {
    format!(
        "graceful: true\n{extra}watch: {{ executable: false, config: false }}\n\
         servers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \
         \"/pid\": pid\n      \"/sleep\": {{ handler: sleep, duration: {sleep} }}\n"
    )
}

/// Read until the server closes the connection (EOF or reset) or `timeout` passes; what was
/// read, and when it ended (`None` on the timeout).
fn read_until_closed(s: &mut impl Read, timeout: Duration) -> (Vec<u8>, Option<Instant>) {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (got, Some(Instant::now())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (got, Some(Instant::now()));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    (got, None)
}

/// An HTTP/1 keep-alive connection that sits idle across a graceful restart: the old worker
/// does not close it at once (its client may be sending the next request), nor keep it until
/// `shutdown_timeout`; it closes it about `keepalive_grace` after the drain began, and exits
/// then.
#[test]
fn an_idle_keep_alive_connection_is_closed_after_keepalive_grace_then_the_old_worker_exits() {
    let port = low_port();
    let host = Host::start(&drain_config(
        port,
        "1s",
        "keepalive_grace: 1500ms\nshutdown_timeout: 12s\n",
    ));
    let old = host.wait_serving(port);
    let mut ka = KeepAlive::new(port);
    let r = ka.get("/pid").unwrap();
    assert_eq!(r.body_str().trim(), old.to_string());
    assert_eq!(r.header("connection"), None, "kept alive: {:?}", r.headers);
    let mut idle = ka.conn.take().expect("the keep-alive connection");
    idle.get_mut()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();

    let signalled = Instant::now();
    host.signal(Signal::USR1);
    let new = wait_new_pid(&host, port, old);
    host.wait_log(&format!("pid[{old}]: server reloading"));
    let drain_seen = Instant::now();
    let (got, closed) = read_until_closed(&mut idle, Duration::from_secs(15));
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    let closed = closed.unwrap_or_else(|| {
        panic!(
            "the idle connection is still open 15 s after the drain began; log:\n{}",
            host.log()
        )
    });
    assert!(
        closed - signalled >= Duration::from_millis(1400),
        "closed {:?} after the restart was asked, before keepalive_grace (1.5 s)",
        closed - signalled
    );
    assert!(
        closed - drain_seen < Duration::from_secs(5),
        "closed {:?} after the drain began: keepalive_grace is 1.5 s (shutdown_timeout 12 s)",
        closed - drain_seen
    );
    // That was the old worker's last connection: it exits now, not at shutdown_timeout.
    wait_gone(old, Duration::from_secs(3), "the old worker once idle");
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "the old worker exited {:?} after the restart",
        signalled.elapsed()
    );
    assert_eq!(pid_at(port), Some(new));
}

/// A request longer than `shutdown_timeout` is cut when the deadline passes (the worker does not
/// wait for it), and the host still exits 0.
#[test]
fn shutdown_timeout_cuts_a_request_that_outlives_it() {
    let port = low_port();
    let mut host = Host::start(&drain_config(port, "30s", "shutdown_timeout: 1s\n"));
    let worker = host.wait_serving(port);
    let sleep = InFlight::start(port);
    let stopped = Instant::now();
    host.signal(Signal::TERM);
    let (resp, cut_at) = sleep.handle.join().unwrap();
    assert!(
        resp.is_err(),
        "the 30 s response completed: {:?}",
        resp.map(|r| r.body_str())
    );
    assert!(
        cut_at - stopped >= Duration::from_millis(900) && cut_at - stopped < Duration::from_secs(5),
        "cut {:?} after the stop (shutdown_timeout is 1 s)",
        cut_at - stopped
    );
    let st = host.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "log:\n{}", host.log());
    host.wait_log(&format!("pid[{worker}]: shutdown_timeout reached"));
    assert!(!process_alive(worker));
}

/// A draining worker that does not exit by `shutdown_timeout` (here: stopped with SIGSTOP, so it
/// cannot) is killed by the supervisor; the new generation serves on.
#[test]
fn the_supervisor_kills_an_old_worker_still_running_past_shutdown_timeout() {
    let port = low_port();
    let mut host = Host::start(&drain_config(port, "1s", "shutdown_timeout: 1s\n"));
    let old = host.wait_serving(port);
    signal(old, Signal::STOP);
    let signalled = Instant::now();
    host.signal(Signal::USR1);
    host.wait_log("restart done (graceful)");
    let new = generation_pid(&host.log(), 2).unwrap();
    assert_eq!(pid_at(port), Some(new));
    wait_gone(old, T, "the stopped old worker");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "killed after {took:?}, before shutdown_timeout (1 s)"
    );
    host.wait_log("still running past shutdown_timeout; killing it");
    assert_supervised_by(&mut host, new);
    assert_eq!(pid_at(port), Some(new));
}

/// On a stop the supervisor waits for its workers to drain; one that does not finish by
/// `shutdown_timeout` (stopped with SIGSTOP) is killed after it, and the supervisor exits.
#[test]
fn a_shutdown_kills_a_worker_still_running_past_shutdown_timeout() {
    let port = low_port();
    let mut host = Host::start(&drain_config(port, "1s", "shutdown_timeout: 1s\n"));
    let worker = host.wait_serving(port);
    signal(worker, Signal::STOP);
    let stopped = Instant::now();
    host.signal(Signal::TERM);
    let st = host.wait_exit(Duration::from_secs(15));
    let took = stopped.elapsed();
    assert!(st.code().is_some(), "{st:?}; log:\n{}", host.log());
    assert!(
        took >= Duration::from_secs(1),
        "exited after {took:?}, before shutdown_timeout (1 s)"
    );
    host.wait_log("still running past shutdown_timeout; killing it");
    wait_gone(worker, Duration::from_secs(5), "the stopped worker");
}

/// A second stop signal while the host drains exits 1 at once: the workers are killed, the
/// request in flight is not waited for.
#[test]
fn a_second_stop_signal_exits_1_at_once() {
    let port = low_port();
    let mut host = Host::start(&drain_config(port, "30s", "shutdown_timeout: 30s\n"));
    let worker = host.wait_serving(port);
    let sleep = InFlight::start(port);
    host.signal(Signal::TERM);
    host.wait_log(&format!("pid[{worker}]: server shutting down"));
    let second = Instant::now();
    host.signal(Signal::INT);
    let st = host.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(1), "log:\n{}", host.log());
    assert!(
        second.elapsed() < Duration::from_secs(3),
        "took {:?} after the second signal",
        second.elapsed()
    );
    assert!(
        host.log().contains("second SIGINT during the shutdown"),
        "log:\n{}",
        host.log()
    );
    wait_gone(worker, Duration::from_secs(5), "the worker");
    let (resp, _) = sleep.handle.join().unwrap();
    assert!(resp.is_err(), "the 30 s request was not waited for");
}
