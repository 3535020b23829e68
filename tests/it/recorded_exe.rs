//! `apphost restart --exe NEW` is an upgrade: once NEW serves, it is the recorded executable,
//! so the status shows it and later plain restarts (through the warm standby), crash recovery
//! and the executable watch run it, not the file the host was started from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::support::*;

const T: Duration = Duration::from_secs(30);

/// The executable a process runs.
fn exe_of(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

/// The pid `GET /pid` answers with, once it is not `old`.
fn wait_new_worker(port: u16, old: u32) -> u32 {
    wait_until(T, "a new worker answers /pid", || {
        let r = try_get(port, "/pid").ok()?;
        let pid: u32 = r.body_str().trim().parse().ok()?;
        (r.status == 200 && pid != old).then_some(pid)
    })
}

fn ctl(dir: &Path, sock: &Path, args: &[&str]) -> CmdOutput {
    let mut all = args.to_vec();
    all.extend(["--socket", sock.to_str().unwrap()]);
    run_cli(dir, &all, &[], T)
}

#[test]
fn restart_with_exe_makes_it_the_recorded_executable() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = dir.path().join("apphost-v2");
    std::fs::copy(BIN, &v2).unwrap();
    let v2 = std::fs::canonicalize(&v2).unwrap();
    let sock = dir.path().join("ctl.sock");
    let port = free_port();
    let config = format!(
        "graceful: true\ncontrol: {{ socket: {} }}\nservers:\n  s:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      /pid: pid\n",
        sock.display()
    );
    let mut host = Apphost::start_in(dir, &config, "server.yaml", BIN.as_ref());
    let first = host.wait_serving(port);
    let cwd = host.dir.path().to_path_buf();

    let out = ctl(&cwd, &sock, &["restart", "--exe", v2.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stderr, host.log());
    let second = wait_new_worker(port, first);
    assert_eq!(exe_of(second), v2);
    let status = ctl(&cwd, &sock, &["status", "--json"]);
    assert!(
        status
            .stdout
            .contains(&format!("\"exe\":\"{}\"", v2.display())),
        "{}",
        status.stdout
    );

    // A plain restart (the warm standby was started from v2 after that restart).
    let out = ctl(&cwd, &sock, &["restart"]);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stderr, host.log());
    let third = wait_new_worker(port, second);
    assert_eq!(
        exe_of(third),
        v2,
        "a plain restart went back to the old file"
    );

    // Crash recovery.
    signal(third, rustix::process::Signal::KILL);
    let fourth = wait_new_worker(port, third);
    assert_eq!(
        exe_of(fourth),
        v2,
        "crash recovery went back to the old file"
    );

    host.signal(rustix::process::Signal::TERM);
    assert!(host.wait_exit(T).success(), "{}", host.log());
}
