//! `warm_standby: true`: the next worker is started ahead of the restart and activated by it.

use std::time::Duration;

use crate::harness::InFlight;
use crate::support::*;

/// The pids of the supervisor's children.
fn children(sup: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if parent_pid(pid) == Some(sup) && process_alive(pid) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn restarts_activate_the_standby_and_requests_in_flight_finish() {
    let port = free_port();
    let mut host = Apphost::start(&format!(
        "graceful: true\nwarm_standby: true\nshutdown_timeout: 5s\nservers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/pid\": pid\n      \"/sleep\": {{ handler: sleep, duration: 1s }}\n"
    ));
    let mut current = host.wait_serving(port);
    for round in 0..5 {
        // The standby is there before the restart: a second child of the supervisor.
        let standby = wait_until(Duration::from_secs(10), "a standby worker", || {
            let c = children(host.pid());
            c.iter()
                .copied()
                .find(|p| *p != current)
                .filter(|_| c.len() == 2)
        });
        // A request in flight across the restart (its first line is in, so the current worker
        // took it) completes on that worker.
        let inflight = InFlight::start(port);
        host.signal(rustix::process::Signal::USR1);
        let new = wait_until(Duration::from_secs(10), "the standby to serve", || {
            let p: u32 = try_get(port, "/pid").ok()?.body_str().trim().parse().ok()?;
            (p != current).then_some(p)
        });
        assert_eq!(
            new, standby,
            "round {round}: the restart activated the standby"
        );
        let (r, _) = inflight.finish();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body_str(),
            format!("{current}\n{current}\n"),
            "round {round}: the request in flight finished on the old worker"
        );
        host.wait_log(&format!(
            "worker started generation={} pid={new}",
            round + 2
        ));
        current = new;
    }
    // The serving worker and the standby, recorded while they are still the supervisor's
    // children (once it has exited they would be re-parented, not its children any more).
    let kids = wait_until(Duration::from_secs(10), "the worker and a standby", || {
        let c = children(host.pid());
        (c.len() == 2).then_some(c)
    });
    assert!(kids.contains(&current), "{kids:?} includes {current}");
    host.signal(rustix::process::Signal::TERM);
    assert!(
        host.wait_exit(Duration::from_secs(10)).success(),
        "log:\n{}",
        host.log()
    );
    for pid in kids {
        assert!(
            !process_alive(pid),
            "worker {pid} outlived the supervisor; log:\n{}",
            host.log()
        );
    }
}

#[test]
fn a_replaced_executable_is_not_served_by_a_stale_standby() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("apphost");
    assert!(
        std::process::Command::new("cp")
            .arg(BIN)
            .arg(&exe)
            .status()
            .unwrap()
            .success()
    );
    let cfg = format!(
        "graceful: true\nwarm_standby: true\nwatch: {{ executable: false, config: false }}\nshutdown_timeout: 5s\nservers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/pid\": pid\n"
    );
    let host = Apphost::start_in(dir, &cfg, "server.yaml", &exe);
    let first = host.wait_serving(port);
    wait_until(Duration::from_secs(10), "a standby worker", || {
        (children(host.pid()).len() == 2).then_some(())
    });
    // Replace the executable with one that fails: the standby (the old file) must not be used.
    let tmp = exe.with_file_name(".new");
    std::fs::write(
        &tmp,
        "#!/bin/sh\necho 'new build refuses to start' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &exe).unwrap();
    host.signal(rustix::process::Signal::USR1);
    host.wait_log("restart failed");
    assert!(
        host.log().contains("new build refuses to start"),
        "log:\n{}",
        host.log()
    );
    assert_eq!(
        get(port, "/pid").body_str().trim(),
        first.to_string(),
        "the old worker serves on"
    );
}

/// The standby builds its log subscriber ahead from the config it parsed ahead; a `log` section
/// changed before the activation is the one the new worker logs with.
#[test]
fn a_log_format_changed_before_the_activation_is_the_one_the_new_worker_uses() {
    let port = free_port();
    let cfg = |format: &str| {
        format!(
            "graceful: true\nwarm_standby: true\nwatch: {{ executable: false, config: false }}\nlog: {{ format: {format} }}\nservers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/pid\": pid\n"
        )
    };
    let host = Apphost::start(&cfg("text"));
    let first = host.wait_serving(port);
    let standby = wait_until(Duration::from_secs(10), "a standby worker", || {
        let c = children(host.pid());
        c.iter()
            .copied()
            .find(|p| *p != first)
            .filter(|_| c.len() == 2)
    });
    std::fs::write(&host.config, cfg("json")).unwrap();
    host.signal(rustix::process::Signal::USR1);
    let new = wait_until(Duration::from_secs(10), "the standby to serve", || {
        let p: u32 = try_get(port, "/pid").ok()?.body_str().trim().parse().ok()?;
        (p != first).then_some(p)
    });
    assert_eq!(new, standby);
    let json_line = format!("\"pid\":{new},");
    wait_until(
        Duration::from_secs(10),
        "a JSON line of the new worker",
        || {
            host.log()
                .lines()
                .any(|l| l.starts_with('{') && l.contains(&json_line) && l.contains("reloaded"))
                .then_some(())
        },
    );
    assert!(
        !host
            .log()
            .lines()
            .any(|l| l.contains(&format!("pid[{new}]"))),
        "the new worker wrote a text line; log:\n{}",
        host.log()
    );
}

/// A standby that is not an apphost worker at all (the executable was replaced by something else
/// just as the standby started: here a script that becomes apphost only the first time) is
/// stopped with a kill of its process group when a restart does not use it, not asked to drain,
/// which it would ignore while keeping every listener, even one that left the config, until the
/// drain deadline.
#[test]
fn an_unused_standby_that_is_not_a_worker_is_killed_with_its_listeners() {
    use crate::harness::{
        Host, cmdline, config, group_members, low_port, place_real_binary, replace_with,
        restore_binary, wait_generation_pid, wait_gone,
    };
    use rustix::process::Signal;
    let (kept, removed) = (low_port(), low_port());
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("apphost");
    place_real_binary(&exe);
    let once = dir.path().join("once");
    let host = Host::start_in(dir, &config(true, "10s", &[kept, removed], "1s"), &exe);
    let first = host.wait_serving(kept);
    // The first standby runs the binary (its exec done) before the file is replaced.
    wait_until(Duration::from_secs(10), "the first standby", || {
        children(host.pid())
            .into_iter()
            .find(|p| *p != first && cmdline(*p).contains("__worker"))
    });
    // The next restart runs this script: apphost the first time (the new generation), a shell
    // waiting on a `sleep` child the second time (the standby started after it is ready).
    replace_with(
        &exe,
        format!(
            "#!/bin/sh\nif mkdir '{}' 2>/dev/null; then exec '{BIN}' \"$@\"; fi\nsleep 30\n",
            once.display()
        )
        .as_bytes(),
    );
    host.signal(Signal::USR1);
    host.wait_log_count("restart done (graceful)", 1, Duration::from_secs(15));
    let second = wait_generation_pid(&host, 2);
    let standby = wait_until(
        Duration::from_secs(10),
        "the scripted standby and its child",
        || {
            children(host.pid())
                .into_iter()
                .find(|p| *p != second && *p != first && group_members(*p).len() >= 2)
        },
    );
    // The fixed binary, and `removed` leaves the config.
    restore_binary(&exe);
    std::fs::write(&host.config, config(true, "10s", &[kept], "1s")).unwrap();
    host.signal(Signal::USR1);
    host.wait_log_count("restart done (graceful)", 2, Duration::from_secs(15));
    assert_ne!(
        wait_generation_pid(&host, 3),
        standby,
        "the scripted standby was activated"
    );
    // Well before the drain deadline (shutdown_timeout 5 s): the standby is gone, its `sleep`
    // too, and once the old worker is gone nothing holds `removed`.
    wait_gone(second, Duration::from_secs(4), "the old worker");
    wait_until(
        Duration::from_secs(2),
        "the standby's processes to end",
        || group_members(standby).is_empty().then_some(()),
    );
    match std::net::TcpStream::connect(("127.0.0.1", removed)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!("port {removed} left the config but still takes connections ({other:?})"),
    }
}

/// `GET /pid` on a fresh connection, answered within `within` (connecting never waits: the
/// supervisor holds the listening socket, so a connection waits in its queue for a worker).
fn pid_within(port: u16, within: Duration) -> Result<u32, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(within))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("no answer within {within:?}: {e}"))?;
    let r = parse_response(&raw, false).map_err(|e| e.to_string())?;
    r.body_str()
        .trim()
        .parse()
        .map_err(|_| format!("status {}: {:?}", r.status, r.body_str()))
}

/// True while `pid` is stopped (by a signal).
fn stopped(pid: u32) -> bool {
    crate::harness::proc_stat(pid).is_some_and(|f| f.first().is_some_and(|s| s == "T"))
}

/// Sends SIGCONT to a process it stopped when dropped, so a failing test leaves nothing stopped.
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        signal(pid, rustix::process::Signal::STOP);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, rustix::process::Signal::CONT);
    }
}

/// The successor window (`worker::successor`): the new generation tells the serving one it
/// accepts (that one pauses its accept loops), then dies before the supervisor has acted on its
/// `ready`. The old generation must accept again at once, with no request failing; the
/// supervisor, once it runs again, must count the restart as failed and keep the old one serving
/// (not drain it for a successor that is gone); a later restart works.
///
/// Real signals set the stage: the standby is stopped while the supervisor sends it `activate`
/// (so `activate` is surely sent first), then the supervisor is stopped (so it cannot act on the
/// `ready` to come) and the standby continued.
#[test]
fn a_successor_that_dies_after_taking_over_the_accepting_leaves_the_old_generation_serving() {
    use rustix::process::Signal;
    let port = free_port();
    let host = Apphost::start(&format!(
        "graceful: true\nwarm_standby: true\ngraceful_timeout: 60s\nshutdown_timeout: 5s\nservers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/pid\": pid\n"
    ));
    let old = host.wait_serving(port);
    // Stopped only once it runs the worker (its exec done, its runtime's threads started): a
    // child stopped between fork and exec would hold up the supervisor's spawn.
    let standby = wait_until(Duration::from_secs(10), "a standby worker", || {
        children(host.pid()).into_iter().find(|p| {
            let threads = crate::harness::proc_stat(*p)
                .and_then(|f| f.get(17).and_then(|n| n.parse::<u32>().ok()));
            *p != old
                && crate::harness::cmdline(*p).contains("__worker")
                && threads.is_some_and(|n| n >= 3)
        })
    });
    let held = Stopped::stop(standby);
    wait_until(Duration::from_secs(10), "the standby to be stopped", || {
        stopped(standby).then_some(())
    });
    host.signal(Signal::USR1);
    // Logged once `activate` has been sent.
    host.wait_log(&format!("worker started generation=2 pid={standby}"));
    let supervisor = Stopped::stop(host.pid());
    wait_until(
        Duration::from_secs(10),
        "the supervisor to be stopped",
        || stopped(host.pid()).then_some(()),
    );
    assert!(
        stopped(standby),
        "the standby was continued; log:\n{}",
        host.log()
    );
    drop(held);
    // The new generation serves; once it has said so on the pipe, the old one takes nothing.
    wait_until(
        Duration::from_secs(10),
        "the new generation alone to answer",
        || {
            (0..20)
                .all(|_| pid_within(port, Duration::from_secs(5)) == Ok(standby))
                .then_some(())
        },
    );
    assert!(
        !host.log().contains("restart done"),
        "the supervisor acted while stopped; log:\n{}",
        host.log()
    );
    signal(standby, Signal::KILL);
    // A zombie (its parent, stopped, cannot reap it): its descriptors are closed.
    crate::harness::wait_gone(standby, Duration::from_secs(10), "the killed successor");
    // The old generation accepts again: every request on a fresh connection is answered by it,
    // with the supervisor still stopped.
    for i in 0..50 {
        match pid_within(port, Duration::from_secs(5)) {
            Ok(pid) => assert_eq!(pid, old, "request {i} after the successor died"),
            Err(e) => panic!("request {i} after the successor died: {e}"),
        }
    }
    drop(supervisor);
    wait_until(
        Duration::from_secs(10),
        "the supervisor to judge the restart",
        || {
            let log = host.log();
            (log.contains("restart failed") || log.contains("died unexpectedly")).then_some(())
        },
    );
    assert!(
        host.log().contains("restart failed") && host.log().contains("exited before it was ready"),
        "the restart to a successor that died counts as failed; log:\n{}",
        host.log()
    );
    // The old generation was not told to drain: it serves on, alone.
    for i in 0..20 {
        assert_eq!(
            pid_within(port, Duration::from_secs(5)),
            Ok(old),
            "request {i} once the supervisor runs again; log:\n{}",
            host.log()
        );
    }
    assert!(process_alive(old), "the old generation exited");
    // A later restart hands over as usual.
    host.signal(Signal::USR1);
    host.wait_log_count("restart done (graceful)", 1, Duration::from_secs(15));
    let new = wait_until(Duration::from_secs(10), "a new generation to serve", || {
        pid_within(port, Duration::from_secs(5))
            .ok()
            .filter(|p| *p != old)
    });
    assert_ne!(new, standby);
    crate::harness::wait_gone(old, Duration::from_secs(10), "the old generation");
}
