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
