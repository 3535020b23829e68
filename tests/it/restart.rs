//! Restart integration tests: the real `apphost` binary, real signals, real child processes and
//! real sockets on 127.0.0.1.
//!
//! What is checked here is the supervisor's contract (see `src/supervisor/mod.rs`) and the drain
//! rules (`src/serve/mod.rs`):
//! - a graceful restart (SIGUSR1 to the supervisor or to the worker) never refuses a connection
//!   nor cuts a request in flight; the supervisor's pid never changes;
//! - a keep-alive client that reconnects when told `Connection: close` never loses a request;
//! - an HTTP/2 connection gets GOAWAY at the drain, finishes its open stream and then closes;
//! - a restart that fails (the new process exits, hangs, cannot load its config, or the
//!   executable is not a program) leaves the old worker serving, says why in the log, and the
//!   next restart after a fix succeeds;
//! - one restart at a time; listeners added and removed across a restart; HTTPS across a
//!   restart; `graceful: false` (full restart); crash respawn; shutdown signals, also in the
//!   middle of a restart; a killed supervisor takes its worker with it.
//!
//! Tests that need to change "the executable" run the supervisor from a copy of the binary in a
//! temp dir and replace that file (new file + rename, as an upgrade would), then send SIGUSR1.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::harness::*;
use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Graceful restarts that work
// ---------------------------------------------------------------------------------------------

/// The new executable takes 2 s to start: until it has said it is ready, the old worker
/// keeps taking new connections (the readiness wait); then it drains, and its request in flight
/// finishes on it while the new one serves.
#[test]
fn graceful_restart_lets_an_in_flight_request_finish_on_the_old_worker() {
    let port = low_port();
    let (mut host, exe) = start_from_copy(&config(true, "10s", &[port], "4s"));
    let old = host.wait_serving(port);
    assert_supervised_by(&mut host, old);
    replace_with(&exe, &slow_start_script(2));

    let sleep = InFlight::start(port);
    host.signal(Signal::USR1);
    wait_generation_pid(&host, 2);
    // For 800 ms of the new worker's 2 s start (long enough for a drain message to have reached
    // the old one even on a loaded machine), every fresh connection is the old worker's.
    let starting = Instant::now();
    while starting.elapsed() < Duration::from_millis(800) {
        assert_eq!(
            pid_at(port),
            Some(old),
            "while the new worker starts, the old one still takes new connections; log:\n{}",
            host.log()
        );
    }
    let new = wait_new_pid(&host, port, old);
    let new_seen = Instant::now();
    assert!(
        !sleep.handle.is_finished(),
        "the new worker should serve while the old one still answers /sleep"
    );
    assert_supervised_by(&mut host, new);
    // The old worker drains, it is not killed: it is still there until its request is done.
    assert!(
        process_alive(old),
        "old worker {old} stopped before its request was done"
    );

    let started = sleep.started;
    let (resp, done) = sleep.finish();
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.body_str(),
        format!("{old}\n{old}\n"),
        "both lines come from the old worker"
    );
    assert!(done > new_seen);
    assert!(
        done - started >= Duration::from_secs(4),
        "the /sleep response ended early, after {:?}",
        done - started
    );
    assert_eq!(pid_at(port), Some(new));
    wait_gone(old, T, "the drained old worker");
    assert_supervised_by(&mut host, new);
    assert_eq!(host.log().matches("restart done (graceful)").count(), 1);
}

/// An HTTP/2 (h2c) connection with a stream in flight when the drain starts gets GOAWAY: the
/// stream finishes on the old worker with its full body, then the connection closes (and the old
/// worker exits) at once rather than at `shutdown_timeout`; while it is still open, a new stream
/// on it is refused.
#[test]
fn graceful_restart_sends_goaway_to_http2_and_finishes_its_stream() {
    use http_body_util::BodyExt;
    let port = low_port();
    let cfg = graceful_config(port).replace("shutdown_timeout: 5s", "shutdown_timeout: 15s");
    let host = Host::start(&cfg);
    let old = host.wait_serving(port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let get = |path: &str| {
        http::Request::get(format!("http://127.0.0.1:{port}{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let (mut send, conn_task) = rt.block_on(h2c_connect(port)).unwrap();
    // The /sleep stream: its headers and first line arrive, then it waits 3 s.
    let (body, started) = rt.block_on(async {
        let resp = send.send_request(get("/sleep")).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, format!("{old}\n"));
        (body, Instant::now())
    });
    host.signal(Signal::USR1);
    let new = wait_new_pid(&host, port, old);
    assert_ne!(new, old);
    // While the /sleep stream is still open (and so the connection), a new stream on it is
    // refused once the GOAWAY has arrived; until then the old worker answers it.
    host.wait_log(&format!("pid[{old}]: server reloading"));
    let refused_at = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match send.send_request(get("/pid")).await {
                Err(_) => break Instant::now(),
                Ok(r) => {
                    let b = r.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(b, format!("{old}\n"), "a stream taken before GOAWAY");
                }
            }
            assert!(
                Instant::now() < deadline,
                "new streams still accepted on the connection 2 s after the drain began"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // The /sleep stream on the same connection is still running (it ends at 3 s, below), so the
    // connection is open: the refusal is the GOAWAY's, not a closed connection's.
    assert!(
        refused_at - started < Duration::from_millis(2500),
        "the refusal came only after {:?}, too late to tell",
        refused_at - started
    );
    let ended = rt.block_on(async {
        let rest = body.collect().await.expect("the stream was cut").to_bytes();
        assert_eq!(
            rest,
            format!("{old}\n"),
            "the second line from the old worker"
        );
        Instant::now()
    });
    assert!(
        ended - started >= Duration::from_millis(2500),
        "/sleep ended early"
    );
    // GOAWAY: the old worker closes the connection once its last stream is done, and so exits
    // then. Without it the connection would stay open until shutdown_timeout (15 s).
    wait_gone(
        old,
        Duration::from_secs(4),
        "the old worker, once its last HTTP/2 stream is done",
    );
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(1), conn_task)
            .await
            .expect("the client's HTTP/2 connection is over")
            .unwrap()
            .expect("the HTTP/2 connection ended with an error");
    });
}

/// `restarts` graceful restarts in a row while `clients` threads do fresh-connection GETs;
/// after each restart `/pid` changes to the generation the supervisor started. Returns the
/// clients' report.
fn restarts_under_load(restarts: usize, clients: usize) -> HammerReport {
    let port = low_port();
    let mut host = Host::start(&graceful_config(port));
    let first = host.wait_serving(port);
    let hammers: Vec<Hammer> = (0..clients).map(|_| Hammer::start(port)).collect();
    let mut pids = vec![first];
    for i in 1..=restarts {
        let prev = *pids.last().unwrap();
        host.signal(Signal::USR1);
        // The supervisor takes the next restart only once it has recorded this one.
        wait_log_n(&host, "restart done (graceful)", i);
        let started = generation_pid(&host.log(), i as u64 + 1)
            .unwrap_or_else(|| panic!("restart {i}: no generation {} in the log", i + 1));
        // The generations it replaced were told to drain, but one may take a connection until
        // it has read that (a scheduling delay under load, which can outlast the next restart):
        // until the new generation answers, an answer may come from one of those, never from
        // anything else (a standby, a stranger).
        let new = wait_until(
            T,
            &format!("restart {i}: /pid from generation {}", i + 1),
            || {
                let p = pid_at(port)?;
                assert!(
                    p == started || pids.contains(&p),
                    "restart {i}: /pid answered {p}: not generation {} ({started}), nor one it \
                 replaced {pids:?}",
                    i + 1
                );
                (p == started).then_some(p)
            },
        );
        assert_ne!(new, prev, "restart {i}: a new worker");
        pids.push(new);
    }
    let mut rep = HammerReport::default();
    for h in hammers {
        let r = h.finish();
        rep.ok += r.ok;
        rep.failures.extend(r.failures);
        rep.pids.extend(r.pids);
    }
    assert!(
        rep.ok >= restarts,
        "the client threads made only {} requests",
        rep.ok
    );
    assert!(rep.pids.len() >= 2, "the clients saw only {:?}", rep.pids);
    let distinct: BTreeSet<u32> = pids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        restarts + 1,
        "every restart gives a new worker: {pids:?}"
    );
    assert_supervised_by(&mut host, *pids.last().unwrap());
    for &p in &pids[..restarts] {
        wait_gone(p, T, "an old worker");
    }
    assert!(
        !host.log().contains("refused"),
        "no restart was refused; log:\n{}",
        host.log()
    );
    rep
}

#[test]
fn twenty_restarts_in_a_row_keep_serving() {
    let rep = restarts_under_load(20, 1);
    assert!(
        rep.failures.is_empty(),
        "{} of {} requests failed during 20 restarts: {:?}",
        rep.failures.len(),
        rep.ok + rep.failures.len(),
        &rep.failures[..rep.failures.len().min(10)]
    );
}

/// Many restarts under load from several clients: no request fails, not even by a reset
/// (a connection accepted just as a drain starts must still be served).
#[test]
fn two_hundred_restarts_under_load_never_fail_a_request() {
    let rep = restarts_under_load(200, 3);
    assert!(
        rep.failures.is_empty(),
        "{} of {} requests failed during 200 restarts: {:?}",
        rep.failures.len(),
        rep.ok + rep.failures.len(),
        &rep.failures[..rep.failures.len().min(10)]
    );
}

/// The same, 1000 restarts (about 30 s): a soak run, `cargo test -- --ignored`.
#[test]
#[ignore = "soak: 1000 restarts, about 30 s"]
fn a_thousand_restarts_under_load_never_fail_a_request() {
    let rep = restarts_under_load(1000, 3);
    assert!(
        rep.failures.is_empty(),
        "{} of {} requests failed during 1000 restarts: {:?}",
        rep.failures.len(),
        rep.ok + rep.failures.len(),
        &rep.failures[..rep.failures.len().min(10)]
    );
}

#[test]
fn keep_alive_client_loses_no_request_across_a_restart() {
    let port = low_port();
    let mut host = Host::start(&graceful_config(port));
    let old = host.wait_serving(port);
    let mut c = KeepAlive::new(port);
    let mut failures = Vec::new();
    // (pid, whether the response said `Connection: close`), in order.
    let mut seen: Vec<(u32, bool)> = Vec::new();
    let mut signalled = false;
    let deadline = Instant::now() + T;
    loop {
        match c.get("/pid") {
            Ok(r) if r.status == 200 => {
                let close = r
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                match r.body_str().trim().parse::<u32>() {
                    Ok(p) => seen.push((p, close)),
                    Err(_) => failures.push(format!("bad body {:?}", r.body_str())),
                }
            }
            Ok(r) => failures.push(format!("status {}", r.status)),
            Err(e) => failures.push(e),
        }
        if !signalled && seen.len() == 50 {
            host.signal(Signal::USR1);
            signalled = true;
        }
        let after_new = seen.iter().skip_while(|(p, _)| *p == old).count();
        if after_new >= 50 || Instant::now() > deadline {
            break;
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed requests on a keep-alive client: {failures:?}",
        failures.len()
    );
    let new = seen.last().unwrap().0;
    assert_ne!(
        new,
        old,
        "the restart never reached the client; log:\n{}",
        host.log()
    );
    assert_supervised_by(&mut host, new);
    // The old worker told the client to reconnect: the connection was not dropped under it.
    let closes: Vec<u32> = seen.iter().filter(|(_, c)| *c).map(|(p, _)| *p).collect();
    assert!(
        !closes.is_empty() && closes.iter().all(|&p| p == old),
        "the old worker ends its keep-alive connections with `Connection: close` \
         (closes seen from {closes:?}; old {old}, new {new})"
    );
    assert_eq!(c.closes, closes.len());
    assert!(c.connects >= 2);
    // Every answer comes from the old worker, then the new one: never back.
    let first_new = seen.iter().position(|(p, _)| *p != old).unwrap();
    assert!(
        seen[first_new..].iter().all(|(p, _)| *p == new),
        "pids after the switch: {:?}",
        &seen[first_new..]
    );
}

#[test]
fn sigusr1_to_the_worker_also_restarts() {
    let port = low_port();
    let mut host = Host::start(&graceful_config(port));
    let old = host.wait_serving(port);
    signal(old, Signal::USR1);
    let new = wait_new_pid(&host, port, old);
    assert_supervised_by(&mut host, new);
    host.wait_log("restart done (graceful)");
    wait_gone(old, T, "the old worker");
    let log = host.log();
    assert!(
        lines_with(&log, "restart requested")
            .iter()
            .any(|l| l.contains(&format!("pid[{}]", host.pid())) && l.contains("signal")),
        "the supervisor logged the request from the worker's signal; log:\n{log}"
    );
}

#[test]
fn https_keeps_serving_across_a_restart() {
    let port = low_port();
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 7);
    let cfg = format!(
        "graceful: true\nshutdown_timeout: 5s\nwatch: {{ executable: false, config: false }}\n\
         servers:\n  s1:\n    https:\n      address: \"127.0.0.1:{port}\"\n      \
         cert: server.crt\n      key: server.key\n    routes:\n      \"/pid\": pid\n"
    );
    let mut host = Host::start_in(dir, &cfg, BIN.as_ref());
    let before = wait_https(port, &pki.ca_pem, &host);
    let old: u32 = before.body.trim().parse().unwrap();
    assert_eq!(before.version, http::Version::HTTP_2);
    // A client doing HTTPS requests on fresh connections (h2 and HTTP/1.1 in turn) all through
    // the restart: handshakes and requests the old worker took as its drain began included.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let client = {
        let (stop, ca, ok) = (stop.clone(), pki.ca_pem.clone(), served.clone());
        let pids = seen.clone();
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut h2 = true;
            while !stop.load(Ordering::Relaxed) {
                match https_get(port, "/pid", &ca, h2) {
                    Ok(r) if r.status == 200 => match r.body.trim().parse::<u32>() {
                        Ok(p) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            pids.lock().unwrap().insert(p);
                        }
                        Err(_) => failures.push(format!("bad body {:?}", r.body)),
                    },
                    Ok(r) => failures.push(format!("status {} (h2: {h2})", r.status)),
                    Err(e) => failures.push(format!("{e} (h2: {h2})")),
                }
                h2 = !h2;
            }
            failures
        })
    };
    // Some requests on the old worker first.
    wait_until(T, "the HTTPS client's first answers", || {
        (served.load(Ordering::Relaxed) >= 5).then_some(())
    });
    host.signal(Signal::USR1);
    let new = wait_until(T, "a new pid over HTTPS", || {
        let r = https_get(port, "/pid", &pki.ca_pem, true).ok()?;
        let p: u32 = r.body.trim().parse().ok()?;
        (r.status == 200 && p != old).then_some(p)
    });
    assert_supervised_by(&mut host, new);
    host.wait_log("restart done (graceful)");
    wait_gone(old, T, "the drained old worker");
    // Under load the client may not have been answered by the new worker yet: it runs until it
    // has.
    wait_until(T, "the client answered by the new worker", || {
        seen.lock().unwrap().contains(&new).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let failures = client.join().unwrap();
    let pids = seen.lock().unwrap().clone();
    let ok = served.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} HTTPS requests failed across the restart: {failures:?}",
        failures.len(),
        ok + failures.len()
    );
    assert!(
        pids.contains(&old) && pids.contains(&new),
        "the client saw both workers: {pids:?} (old {old}, new {new})"
    );
    // Both protocols on the new worker, same certificate.
    for h2 in [true, false] {
        let r = https_get(port, "/pid", &pki.ca_pem, h2).expect("HTTPS after the restart");
        assert_eq!((r.status, r.body.trim()), (200, new.to_string().as_str()));
        assert_eq!(r.peer_cert, before.peer_cert);
    }
}

#[test]
fn ports_added_and_removed_across_a_restart() {
    let (kept, removed, added) = (low_port(), low_port(), low_port());
    let mut host = Host::start(&config(true, "10s", &[kept, removed], "3s"));
    let old = host.wait_serving(kept);
    assert_eq!(pid_at(removed), Some(old));
    assert!(
        TcpStream::connect(("127.0.0.1", added)).is_err(),
        "port {added} is not served yet"
    );
    let hammer = Hammer::start(kept);
    std::fs::write(&host.config, config(true, "10s", &[kept, added], "3s")).unwrap();
    host.signal(Signal::USR1);
    let new = wait_new_pid(&host, kept, old);
    host.wait_log("restart done (graceful)");
    assert_eq!(
        pid_at(added),
        Some(new),
        "the added port serves the new worker"
    );
    wait_gone(old, T, "the old worker");
    match TcpStream::connect(("127.0.0.1", removed)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!(
            "the removed port {removed} should refuse connections once the old worker is gone, \
             got {other:?}; log:\n{}",
            host.log()
        ),
    }
    let rep = hammer.finish();
    assert!(
        rep.failures.is_empty(),
        "the kept port failed {} requests: {:?}",
        rep.failures.len(),
        rep.failures
    );
    assert!(
        rep.pids.contains(&old) && rep.pids.contains(&new),
        "{:?}",
        rep.pids
    );
    assert_eq!(pid_at(kept), Some(new));
    assert_eq!(pid_at(added), Some(new));
    assert_supervised_by(&mut host, new);
    assert!(
        host.log()
            .contains(&format!("listener [127.0.0.1:{removed}] left the config"))
    );
}

// ---------------------------------------------------------------------------------------------
// Restarts that fail: the old worker keeps serving, the log says why, the next one works
// ---------------------------------------------------------------------------------------------

/// After a failed restart: the old worker still serves and is still the supervisor's child,
/// and `failure` is in the log. Then the fix is applied, and a restart must work again.
fn assert_failed_then_recovers(
    host: &mut Apphost,
    port: u16,
    old: u32,
    failure: &[&str],
    fix: impl FnOnce(),
) {
    assert_eq!(pid_at(port), Some(old), "the old worker keeps serving");
    assert_supervised_by(host, old);
    let log = host.log();
    assert!(
        failure.iter().all(|f| log.contains(f)),
        "expected {failure:?} in the log:\n{log}"
    );
    assert!(!log.contains("restart done"), "log:\n{log}");
    fix();
    host.signal(Signal::USR1);
    let new = wait_new_pid(host, port, old);
    host.wait_log("restart done (graceful)");
    assert_supervised_by(host, new);
    wait_gone(old, T, "the old worker");
}

#[test]
fn restart_to_an_executable_that_exits_1_keeps_the_old_worker() {
    let port = low_port();
    let (mut host, exe) = start_from_copy(&graceful_config(port));
    let old = host.wait_serving(port);
    replace_with(&exe, b"#!/bin/sh\necho 'new build is broken' >&2\nexit 1\n");
    host.signal(Signal::USR1);
    host.wait_log("restart failed");
    let failed = lines_with(&host.log(), "restart failed").join("\n");
    assert!(
        failed.contains("exited before it was ready") && failed.contains("exit status 1"),
        "the failure names the exit status: {failed}"
    );
    let dead = generation_pid(&host.log(), 2).unwrap();
    assert!(!process_alive(dead));
    assert_failed_then_recovers(
        &mut host,
        port,
        old,
        &[
            "new build is broken",
            "the serving generation keeps serving",
        ],
        || restore_binary(&exe),
    );
}

#[test]
fn restart_to_an_executable_that_hangs_times_out_and_kills_it() {
    let port = low_port();
    let (mut host, exe) = start_from_copy(&config(true, "2s", &[port], "3s"));
    let old = host.wait_serving(port);
    replace_with(&exe, b"#!/bin/sh\nexec sleep 30\n");
    host.signal(Signal::USR1);
    let hung = wait_generation_pid(&host, 2);
    host.wait_log("restart failed");
    let failed = lines_with(&host.log(), "restart failed").join("\n");
    assert!(
        failed.contains("not ready in time") && failed.contains("graceful_timeout (2s)"),
        "the failure gives the reason: {failed}"
    );
    wait_gone(hung, Duration::from_secs(5), "the hung new process");
    assert_failed_then_recovers(&mut host, port, old, &[], || restore_binary(&exe));
}

#[test]
fn restart_timeout_kills_everything_the_hung_process_started() {
    let (kept, removed) = (low_port(), low_port());
    let (mut host, exe) = start_from_copy(&config(true, "2s", &[kept, removed], "3s"));
    let old = host.wait_serving(kept);
    // Not `exec`: the shell waits on its child, as a wrapper script would.
    replace_with(&exe, b"#!/bin/sh\nsleep 30\n");
    host.signal(Signal::USR1);
    let hung = wait_generation_pid(&host, 2);
    wait_until(T, "the wrapper's child to start", || {
        (group_members(hung).len() >= 2).then_some(())
    });
    host.wait_log("restart failed");
    wait_gone(hung, Duration::from_secs(5), "the hung new process");
    // Fixed binary, and `removed` leaves the config: once the old worker is gone, nothing may
    // accept on it any more.
    restore_binary(&exe);
    std::fs::write(&host.config, config(true, "2s", &[kept], "3s")).unwrap();
    host.signal(Signal::USR1);
    let new = wait_new_pid(&host, kept, old);
    wait_gone(old, T, "the old worker");
    assert_supervised_by(&mut host, new);
    let mut problems = Vec::new();
    match TcpStream::connect(("127.0.0.1", removed)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => problems.push(format!(
            "port {removed} left the config but still takes connections ({other:?})"
        )),
    }
    let left: Vec<String> = group_members(hung)
        .into_iter()
        .map(|p| format!("{p}: {}", cmdline(p)))
        .collect();
    if !left.is_empty() {
        problems.push(format!(
            "processes of the timed-out generation {hung} still running: {left:?}"
        ));
    }
    for p in group_members(hung) {
        signal(p, Signal::KILL);
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn restart_with_a_broken_config_keeps_the_old_worker_and_gives_the_position() {
    let port = low_port();
    let good = graceful_config(port);
    let mut host = Host::start(&good);
    let old = host.wait_serving(port);
    let broken = format!(
        "graceful: true\nservers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \
         \"/pid\": pid: x\n"
    );
    std::fs::write(&host.config, broken).unwrap();
    host.signal(Signal::USR1);
    host.wait_log("restart failed");
    let failed = lines_with(&host.log(), "restart failed").join("\n");
    let at = format!("{}:6:18", host.config.display());
    assert!(
        failed.contains(&at) && failed.contains("invalid YAML"),
        "the failure gives file:line:col ({at}): {failed}\nlog:\n{}",
        host.log()
    );
    let config = host.config.clone();
    assert_failed_then_recovers(&mut host, port, old, &[], || {
        std::fs::write(&config, good).unwrap()
    });
}

#[test]
fn restart_to_a_file_that_is_not_a_program_is_refused() {
    let port = low_port();
    let (mut host, exe) = start_from_copy(&graceful_config(port));
    let old = host.wait_serving(port);
    replace_with(
        &exe,
        b"this is not a program, just text with the exec bit\n",
    );
    host.signal(Signal::USR1);
    host.wait_log("restart refused");
    let refused = lines_with(&host.log(), "restart refused").join("\n");
    assert!(
        refused.contains(&exe.display().to_string()) && refused.contains("no ELF header"),
        "the refusal names the file and the reason: {refused}"
    );
    assert_eq!(
        generation_pid(&host.log(), 2),
        None,
        "nothing was started from it"
    );
    assert_failed_then_recovers(&mut host, port, old, &[], || restore_binary(&exe));
}

#[test]
fn restart_during_a_restart_is_refused() {
    let port = low_port();
    let (mut host, exe) = start_from_copy(&graceful_config(port));
    let old = host.wait_serving(port);
    replace_with(&exe, &slow_start_script(2));
    host.signal(Signal::USR1);
    // Sent once the first one is under way (two signals at once would merge into one).
    wait_generation_pid(&host, 2);
    host.signal(Signal::USR1);
    host.wait_log("restart refused");
    let refused = lines_with(&host.log(), "restart refused").join("\n");
    assert!(
        refused.contains("a restart is already under way") && refused.contains("generation 2"),
        "{refused}"
    );
    let new = wait_new_pid(&host, port, old);
    host.wait_log("restart done (graceful)");
    assert_eq!(Some(new), generation_pid(&host.log(), 2));
    assert_eq!(generation_pid(&host.log(), 3), None, "log:\n{}", host.log());
    assert_eq!(host.log().matches("restart done").count(), 1);
    wait_gone(old, T, "the old worker");
    assert_eq!(pid_at(port), Some(new));
    assert_supervised_by(&mut host, new);
}

// ---------------------------------------------------------------------------------------------
// Shutdown, crashes, full restarts
// ---------------------------------------------------------------------------------------------

#[test]
fn sigterm_during_a_restart_exits_0_and_leaves_no_worker() {
    let port = low_port();
    let (mut host, exe) = start_from_copy(&graceful_config(port));
    let old = host.wait_serving(port);
    replace_with(&exe, &slow_start_script(2));
    host.signal(Signal::USR1);
    let starting = wait_generation_pid(&host, 2);
    host.signal(Signal::TERM);
    let t0 = Instant::now();
    let st = host.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit status {st:?}; log:\n{}", host.log());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert!(!host.log().contains("restart done"), "log:\n{}", host.log());
    assert!(
        !process_alive(old),
        "the serving worker {old} is left running"
    );
    assert!(
        !process_alive(starting),
        "the starting worker {starting} is left running"
    );
    // Nothing of either generation becomes an apphost later (the slow script's `exec`).
    wait_until(
        Duration::from_secs(5),
        "the starting generation's processes to end",
        || group_members(starting).is_empty().then_some(()),
    );
    assert!(group_members(old).is_empty());
}

#[test]
fn killed_worker_is_replaced_on_the_same_port() {
    let port = low_port();
    let mut host = Host::start(&graceful_config(port));
    let old = host.wait_serving(port);
    signal(old, Signal::KILL);
    let new = wait_new_pid(&host, port, old);
    assert_supervised_by(&mut host, new);
    host.wait_log("worker died unexpectedly");
    let died = lines_with(&host.log(), "worker died unexpectedly").join("\n");
    assert!(died.contains("KILL"), "the log says how it died: {died}");
    // The replacement is a working generation: it restarts like any other, once the supervisor
    // counts it as ready (it accepts before it reports ready; a restart asked in between is
    // refused as "already under way").
    host.wait_notify_count("READY=1", 2);
    host.signal(Signal::USR1);
    let newer = wait_new_pid(&host, port, new);
    assert_supervised_by(&mut host, newer);
    assert!(
        !host.log().contains("restart refused"),
        "log:\n{}",
        host.log()
    );
}

/// The README: "If the supervisor is killed with SIGKILL, its workers get SIGTERM from the kernel
/// (parent-death signal) and drain and exit". A request in flight then still completes.
#[test]
fn killed_supervisor_takes_its_worker_with_it() {
    let port = low_port();
    let mut host = Host::start(&graceful_config(port));
    let worker = host.wait_serving(port);
    let sleep = InFlight::start(port);
    host.signal(Signal::KILL);
    host.wait_exit(Duration::from_secs(5));
    let (resp, _) = sleep.finish();
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.body_str(),
        format!("{worker}\n{worker}\n"),
        "the request in flight finished on the orphaned worker"
    );
    let deadline = Instant::now() + T;
    while process_alive(worker) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let alive = process_alive(worker);
    if alive {
        signal(worker, Signal::KILL);
    }
    assert!(
        !alive,
        "worker {worker} still running {T:?} after its supervisor was killed; log:\n{}",
        host.log()
    );
}

#[test]
fn full_restart_finishes_the_request_then_switches_without_refusing() {
    let port = low_port();
    let mut host = Host::start(&config(false, "10s", &[port], "2s"));
    let old = host.wait_serving(port);
    let sleep = InFlight::start(port);
    let started = sleep.started;
    host.signal(Signal::USR1);
    host.wait_log("restart requested");
    // Connections made while the old worker drains and the new one starts wait; none is refused.
    let hammer = Hammer::start(port);
    let new = wait_new_pid(&host, port, old);
    let new_seen = Instant::now();
    host.wait_log("restart done (full)");
    let (resp, done) = sleep.finish();
    let rep = hammer.finish();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), format!("{old}\n{old}\n"));
    assert!(done - started >= Duration::from_secs(2));
    // Full restart: the new worker only starts once the old one has finished its request.
    assert!(
        new_seen - started >= Duration::from_secs(2),
        "a new worker served after {:?}, before the old one had drained",
        new_seen - started
    );
    assert!(
        rep.failures.is_empty(),
        "{} requests failed during a full restart: {:?}",
        rep.failures.len(),
        rep.failures
    );
    assert!(rep.pids.contains(&new), "{:?}", rep.pids);
    assert!(!process_alive(old));
    assert_supervised_by(&mut host, new);
    let log = host.log();
    let drained = log
        .find("drained; starting the new worker")
        .expect("full restart in the log");
    let started2 = log.find("worker started generation=2").unwrap();
    assert!(
        drained < started2,
        "old drained before the new one started; log:\n{log}"
    );
}

fn stop_signal_exits_0(sig: Signal, name: &str) {
    let port = low_port();
    let mut host = Host::start(&graceful_config(port));
    let worker = host.wait_serving(port);
    host.signal(sig);
    let st = host.wait_exit(Duration::from_secs(10));
    assert!(
        st.success(),
        "{name}: exit status {st:?}; log:\n{}",
        host.log()
    );
    let log = host.log();
    assert!(log.contains(&format!("{name} received")), "log:\n{log}");
    assert!(log.contains("all servers shutdown"), "log:\n{log}");
    assert!(!process_alive(worker), "worker {worker} left running");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn sighup_shuts_down_with_exit_0() {
    stop_signal_exits_0(Signal::HUP, "SIGHUP");
}

#[test]
fn sigquit_shuts_down_with_exit_0() {
    stop_signal_exits_0(Signal::QUIT, "SIGQUIT");
}
