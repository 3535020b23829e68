//! systemd integration: `Type=notify` messages on a real `NOTIFY_SOCKET`, and socket activation
//! through systemd's own `systemd-socket-activate` (from the systemd package).

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn recv_until(sock: &UnixDatagram, wanted: &str) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = m.lines().any(|l| l == wanted);
                got.push(m);
                if done {
                    return got;
                }
            }
            Err(e) => panic!("no {wanted:?} from apphost ({e}); got so far: {got:?}"),
        }
    }
}

#[test]
fn notify_ready_reloading_and_stopping() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let cfg = dir.path().join("server.yaml");
    std::fs::write(
        &cfg,
        format!("graceful: true\nshutdown_timeout: 5s\nservers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes: {{ \"/pid\": pid }}\n"),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .arg("-c")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path);
    let mut host = Apphost::spawn(cmd, dir, cfg);

    let ready = recv_until(&sock, "READY=1");
    assert!(
        ready
            .iter()
            .any(|m| m.contains(&format!("MAINPID={}", host.pid()))),
        "MAINPID is the supervisor: {ready:?}"
    );
    let first = host.wait_serving(port);

    host.signal(rustix::process::Signal::USR1);
    let reload = recv_until(&sock, "READY=1");
    assert!(
        reload.iter().any(|m| m.contains("RELOADING=1")),
        "{reload:?}"
    );
    wait_until(Duration::from_secs(10), "a new worker", || {
        (get(port, "/pid").body_str().trim() != first.to_string()).then_some(())
    });

    host.signal(rustix::process::Signal::TERM);
    recv_until(&sock, "STOPPING=1");
    assert!(host.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn socket_activation_adopts_the_passed_socket() {
    if Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_err()
    {
        // CI (`.ci/run`) installs it: there a missing tool is a failure, not a skip.
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !in_ci,
            "systemd-socket-activate is not installed (Debian package systemd); CI needs it"
        );
        eprintln!("skipped: systemd-socket-activate is not installed (Debian package systemd)");
        return;
    }
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.yaml");
    std::fs::write(
        &cfg,
        format!("graceful: true\nshutdown_timeout: 5s\nservers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes: {{ \"/pid\": pid }}\n"),
    )
    .unwrap();
    // systemd-socket-activate binds the port, then on the first connection execs apphost with
    // the listening socket as fd 3 (LISTEN_FDS=1, LISTEN_PID = its own pid, which apphost keeps).
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg(BIN)
        .arg("run")
        .arg("-c")
        .arg(&cfg);
    let host = Apphost::spawn(cmd, dir, cfg);
    // This first request is queued on the activated socket and answered once apphost runs.
    let first = wait_until(
        Duration::from_secs(15),
        "apphost serving on the activated socket",
        || try_get(port, "/pid").ok().filter(|r| r.status == 200),
    );
    host.wait_log(&format!(
        "adopted socket-activated listener [127.0.0.1:{port}]"
    ));
    host.wait_log("worker ready");
    // The supervisor did not bind the port itself: the worker inherited the adopted socket.
    assert!(
        !host.log().contains("cannot listen"),
        "log:\n{}",
        host.log()
    );
    // It survives a restart like any other listener.
    let first_pid = first.body_str().trim().to_string();
    host.signal(rustix::process::Signal::USR1);
    wait_until(
        Duration::from_secs(10),
        "a new worker on the activated socket",
        || (get(port, "/pid").body_str().trim() != first_pid).then_some(()),
    );
}
