//! The supervisor upgrading itself in place (issue 15, part 1): when a restart's executable is
//! another file (the watched executable replaced, `restart --exe OTHER`), the supervisor
//! re-executes itself from it (same PID) with its state, then hands over to a new worker, with
//! no request failing; a new image that cannot take over sends it back to the previous one, and
//! the host serves on with the old code.
//!
//! The copies here are real copies (new inodes) of the test binary, not hard links: a hard link
//! is the same file, which is no upgrade.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{Hammer, Host, T, assert_supervised_by, low_port, pid_at, wait_new_pid};
use crate::support::*;

/// A graceful config on `port`, the executable watched when `watch_exe`, a control socket in
/// the temp dir.
fn cfg(port: u16, watch_exe: bool) -> String {
    format!(
        "graceful: true\n\
         shutdown_timeout: 5s\n\
         watch: {{ executable: {watch_exe}, config: false, settle: 100ms }}\n\
         control: {{ socket: ./ctl.sock }}\n\
         servers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/pid\": pid\n"
    )
}

/// A copy of the test binary at `to` (a new file, renamed into place).
fn copy_binary(to: &Path) {
    let tmp = to.with_extension("copying");
    std::fs::copy(BIN, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// The file the process runs: device and inode.
fn running_file(pid: u32) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap();
    (m.dev(), m.ino())
}

fn file(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.dev(), m.ino())
}

/// `apphost status` over the host's control socket: it answers, with the supervisor's pid.
fn status(host: &Host) -> String {
    let dir = host.dir.path();
    let out = run_cli(
        dir,
        &[
            "status",
            "--socket",
            &dir.join("ctl.sock").display().to_string(),
        ],
        &[],
        T,
    );
    assert_eq!(out.code(), Some(0), "status: {out:?}");
    assert!(
        out.stdout
            .contains(&format!("supervisor pid {}", host.pid())),
        "{}",
        out.stdout
    );
    out.stdout
}

fn restart_exe(host: &Host, exe: &Path) -> CmdOutput {
    let dir = host.dir.path();
    run_cli(
        dir,
        &[
            "restart",
            "--socket",
            &dir.join("ctl.sock").display().to_string(),
            "--exe",
            &exe.display().to_string(),
        ],
        &[],
        Duration::from_secs(30),
    )
}

fn assert_no_failures(load: Hammer, old: u32, new: Option<u32>) {
    let rep = load.finish();
    assert!(
        rep.failures.is_empty(),
        "requests failed: {:?}",
        rep.failures
    );
    assert!(rep.ok > 0 && rep.pids.contains(&old), "{rep:?}");
    if let Some(new) = new {
        assert!(
            rep.pids.contains(&new),
            "the load reached the new worker: {rep:?}"
        );
    }
}

#[test]
fn a_replaced_executable_upgrades_the_supervisor_in_place_under_load() {
    let port = low_port();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("apphost");
    copy_binary(&exe);
    let mut host = Host::start_in(dir, &cfg(port, true), &exe);
    let sup = host.pid();
    let old = host.wait_serving(port);
    assert_eq!(running_file(sup), file(&exe));
    let load = Hammer::start(port);
    // The upgrade: a new file renamed over the watched one.
    copy_binary(&exe);
    let new = wait_new_pid(&host, port, old);
    host.wait_log("restart done (graceful)");
    assert_no_failures(load, old, Some(new));
    let log = host.log();
    assert!(
        log.contains("supervisor re-executed in place"),
        "the supervisor re-executed itself:\n{log}"
    );
    assert_eq!(host.pid(), sup);
    assert_eq!(
        running_file(sup),
        file(&exe),
        "the supervisor runs the new file"
    );
    assert_supervised_by(&mut host, new);
    let st = status(&host);
    assert!(
        st.contains(&format!("worker pid {new}, generation 2")),
        "{st}"
    );
}

#[test]
fn restart_exe_to_another_file_upgrades_the_supervisor_and_answers_the_asker() {
    let port = low_port();
    let mut host = Host::start(&cfg(port, false));
    let sup = host.pid();
    let old = host.wait_serving(port);
    let v2 = host.dir.path().join("apphost-v2");
    copy_binary(&v2);
    let load = Hammer::start(port);
    let out = restart_exe(&host, &v2);
    assert_eq!(out.code(), Some(0), "{out:?}\nlog:\n{}", host.log());
    // The old worker may accept for a moment after the answer (it reads its drain a few ms
    // late under load), so wait for the new one to answer a fresh connection.
    let new = wait_until(T, "the new worker answers /pid", || {
        pid_at(port).filter(|p| *p != old)
    });
    assert!(
        out.stdout.contains(&format!("pid {new} (was {old})")),
        "the asker hears the outcome from the new image: {}",
        out.stdout
    );
    assert_no_failures(load, old, Some(new));
    assert_eq!(host.pid(), sup);
    assert_eq!(running_file(sup), file(&v2));
    assert_eq!(std::fs::read_link(format!("/proc/{sup}/exe")).unwrap(), v2);
    assert_supervised_by(&mut host, new);
    let st = status(&host);
    assert!(st.contains(&v2.display().to_string()), "{st}");
    // The upgraded supervisor restarts as before (the same file: no re-exec this time).
    let out = restart_exe(&host, &v2);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(
        host.log()
            .matches("supervisor re-executed in place")
            .count(),
        1
    );
}

/// A new image that passes its preflight and then cannot take over (here: a failure injected
/// into the takeover of debug builds) executes the previous program again through the
/// descriptor kept of it; that one fails the restart and tells the asker why.
#[test]
fn a_new_image_that_cannot_take_over_goes_back_and_the_old_code_serves_on() {
    let port = low_port();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("apphost");
    copy_binary(&exe);
    let mut host = Host::start_in_with_env(
        dir,
        &cfg(port, false),
        &exe,
        &[("APPHOST_TEST_TAKEOVER_FAILS", "1")],
    );
    let sup = host.pid();
    let old = host.wait_serving(port);
    // The original file goes away, as in an upgrade: going back must not need its path.
    let v2 = host.dir.path().join("apphost-v2");
    copy_binary(&v2);
    let kept = host.dir.path().join("kept");
    std::fs::hard_link(&exe, &kept).unwrap();
    std::fs::remove_file(&exe).unwrap();
    let load = Hammer::start(port);
    let out = restart_exe(&host, &v2);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("could not take over the supervisor")
            && out.stderr.contains("APPHOST_TEST_TAKEOVER_FAILS"),
        "the asker is told why: {}",
        out.stderr
    );
    assert_no_failures(load, old, None);
    assert_eq!(pid_at(port), Some(old), "the old worker serves on");
    assert_eq!(host.pid(), sup);
    assert_ne!(running_file(sup), file(&v2), "the old code runs");
    let link = std::fs::read_link(format!("/proc/{sup}/exe")).unwrap();
    assert!(
        link.display().to_string().ends_with("(deleted)"),
        "the old, deleted file: {link:?}"
    );
    assert_supervised_by(&mut host, old);
    status(&host);
    // The previous image, back, is a whole supervisor: a plain restart (its own file back in
    // place, so no upgrade) works.
    std::fs::rename(&kept, &exe).unwrap();
    host.signal(rustix::process::Signal::USR1);
    let new = wait_new_pid(&host, port, old);
    assert_supervised_by(&mut host, new);
}

/// Files that cannot be the supervisor are not executed as one: a binary that exits at once
/// fails its preflight, a script is never a supervisor. The restart goes on with the current
/// supervisor, fails as a worker, and the host serves on.
#[test]
fn a_broken_new_executable_never_becomes_the_supervisor() {
    let port = low_port();
    let mut host = Host::start(&cfg(port, false));
    let sup = host.pid();
    let before = running_file(sup);
    let old = host.wait_serving(port);
    let dir = host.dir.path().to_path_buf();
    let exits: PathBuf = dir.join("false");
    std::fs::copy(
        ["/bin/false", "/usr/bin/false"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap(),
        &exits,
    )
    .unwrap();
    let script = dir.join("broken.sh");
    std::fs::write(&script, "#!/bin/sh\necho 'broken build' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for (bad, status) in [(&exits, "exit status 1"), (&script, "exit status 3")] {
        let out = restart_exe(&host, bad);
        assert_eq!(out.code(), Some(1), "{out:?}");
        assert!(
            out.stderr.contains("exited before it was ready") && out.stderr.contains(status),
            "{}",
            out.stderr
        );
        assert_eq!(pid_at(port), Some(old));
        assert_eq!(running_file(sup), before);
    }
    let log = host.log();
    assert_eq!(
        log.matches("the supervisor is not upgraded").count(),
        1,
        "only the binary was checked (the script is never a supervisor):\n{log}"
    );
    assert!(!log.contains("re-executing the supervisor"), "{log}");
    assert_supervised_by(&mut host, old);
    status(&host);
}

/// The admin page's restart with `newExeFilePath`: the worker that took the request asks the
/// supervisor over its channel; the supervisor re-executes itself, and the new image answers on
/// that channel with the new worker's pid.
#[test]
fn the_admin_restart_to_a_new_executable_upgrades_the_supervisor_and_answers() {
    let port = low_port();
    let config = cfg(port, false).replace("routes:\n", "admin: true\n    routes:\n");
    let mut host = Host::start(&config);
    let sup = host.pid();
    let old = host.wait_serving(port);
    let v2 = host.dir.path().join("apphost-v2");
    copy_binary(&v2);
    let r = request(
        port,
        "POST",
        "/debug/admin/restart",
        &[
            ("accept", "application/json"),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        format!("newExeFilePath={}", v2.display()).as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}\nlog:\n{}", r.body_str(), host.log());
    let v: serde_json::Value = serde_json::from_str(&r.body_str()).unwrap();
    assert_eq!(v["exe"], v2.display().to_string());
    assert_eq!(v["old_pid"], old);
    let new = v["pid"].as_u64().unwrap() as u32;
    assert_eq!(running_file(sup), file(&v2));
    assert!(host.log().contains("supervisor re-executed in place"));
    assert_supervised_by(&mut host, new);
}
