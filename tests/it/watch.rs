//! Restart by itself: the executable replaced, the config edited, a certificate renewed.
//!
//! Each test copies the real binary into its own temp dir and runs it from there, so it can
//! replace it the way a deploy does (write a new file beside it, then `mv` over it).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

/// A temp dir holding a copy of the binary; returns (dir, path of the copy).
fn dir_with_binary() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("apphost");
    // Copied by `cp`, not from this process: a file this (multi-threaded) test process had open
    // for writing could be inherited by a child another test forks meanwhile, and exec would
    // then fail with ETXTBSY.
    let st = std::process::Command::new("cp")
        .arg(BIN)
        .arg(&exe)
        .status()
        .unwrap();
    assert!(st.success());
    (dir, exe)
}

/// Replace `target` the way deploys do: write a temp file in the same dir, chmod, rename over.
fn replace_with(target: &Path, contents: &[u8]) {
    let tmp = target.with_file_name(".apphost.tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, target).unwrap();
}

/// Replace a text file by rename, as editors do.
fn edit_by_rename(target: &Path, contents: &str) {
    let tmp = target.with_file_name(".edit.tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, target).unwrap();
}

fn config(port: u16, extra_routes: &str) -> String {
    format!(
        "graceful: true\nshutdown_timeout: 10s\nwatch: {{ settle: 100ms }}\nservers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/pid\": pid\n      \"/sleep\": {{ handler: sleep, duration: 2s }}\n{extra_routes}"
    )
}

fn start_copy(port: u16, extra_routes: &str) -> (Apphost, PathBuf) {
    let (dir, exe) = dir_with_binary();
    let host = Apphost::start_in(dir, &config(port, extra_routes), "server.yaml", &exe);
    (host, exe)
}

/// Start a `/sleep` request and return once its first line has arrived (so it is certainly in
/// flight on the current worker); the handle yields the whole response.
fn sleep_request(port: u16) -> std::thread::JoinHandle<Resp> {
    use std::io::Write;
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET /sleep HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let mut signalled = false;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n");
            if !signalled && head_end.is_some_and(|e| raw[e + 4..].contains(&b'\n')) {
                signalled = true;
                let _ = tx.send(());
            }
        }
        parse_response(&raw, false).unwrap()
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the /sleep response started");
    h
}

#[test]
fn replacing_the_executable_by_mv_restarts_and_the_request_in_flight_completes() {
    let port = free_port();
    let (host, exe) = start_copy(port, "");
    let first = host.wait_serving(port);
    host.wait_log("watching for changes");
    let inflight = sleep_request(port);
    let new_binary = std::fs::read(BIN).unwrap();
    replace_with(&exe, &new_binary);
    let second = wait_until(
        Duration::from_secs(15),
        "a new worker after the binary changed",
        || {
            let p: u32 = try_get(port, "/pid").ok()?.body_str().trim().parse().ok()?;
            (p != first).then_some(p)
        },
    );
    assert_ne!(second, host.pid());
    let r = inflight.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body_str(),
        format!("{first}\n{first}\n"),
        "the old worker finished the request"
    );
    host.wait_log("restarted after the executable change");
}

#[test]
fn a_garbage_file_with_the_exec_bit_is_refused_and_the_next_good_binary_is_picked_up() {
    let port = free_port();
    let (host, exe) = start_copy(port, "");
    let first = host.wait_serving(port);
    host.wait_log("watching for changes");
    replace_with(&exe, b"\x00\x01 definitely not a program");
    host.wait_log("new executable refused");
    assert!(host.log().contains("no ELF header"), "log:\n{}", host.log());
    assert_eq!(
        get(port, "/pid").body_str().trim(),
        first.to_string(),
        "still the same worker"
    );
    assert!(!host.log().contains("restart requested"));
    // The next good file is still picked up.
    replace_with(&exe, &std::fs::read(BIN).unwrap());
    wait_until(
        Duration::from_secs(15),
        "a restart after a good binary",
        || {
            let p: u32 = try_get(port, "/pid").ok()?.body_str().trim().parse().ok()?;
            (p != first).then_some(())
        },
    );
}

#[test]
fn a_binary_whose_preflight_check_fails_is_refused() {
    let port = free_port();
    let (host, exe) = start_copy(port, "");
    let first = host.wait_serving(port);
    host.wait_log("watching for changes");
    // A real executable (a script passes the format check) whose `check` fails.
    replace_with(
        &exe,
        b"#!/bin/sh\necho 'this build is broken' >&2\nexit 3\n",
    );
    host.wait_log("change refused: preflight `check` failed");
    let log = host.log();
    assert!(
        log.contains("exit status 3") && log.contains("this build is broken"),
        "log:\n{log}"
    );
    assert_eq!(get(port, "/pid").body_str().trim(), first.to_string());
    assert!(!log.contains("restart requested"));
}

#[test]
fn a_config_edit_adding_a_route_is_served_after_one_restart() {
    let port = free_port();
    let (host, _exe) = start_copy(port, "");
    let first = host.wait_serving(port);
    host.wait_log("watching for changes");
    assert_eq!(get(port, "/hello").status, 404);
    let cfg = config(port, "      \"/hello\": { handler: hello, text: added }\n");
    // Several quick saves, the last one by rename: one restart.
    std::fs::write(&host.config, &cfg).unwrap();
    std::fs::write(&host.config, &cfg).unwrap();
    edit_by_rename(&host.config, &cfg);
    let r = wait_until(Duration::from_secs(15), "the new route", || {
        let r = try_get(port, "/hello").ok()?;
        (r.status == 200).then_some(r)
    });
    assert_eq!(r.body_str(), "added\n");
    // Old and new worker overlap for a moment (both accept until the old one drains).
    wait_until(
        Duration::from_secs(10),
        "the old worker to stop answering",
        || (get(port, "/pid").body_str().trim() != first.to_string()).then_some(()),
    );
    host.wait_log("restarted after the config change");
    // A second restart for the same burst would come after another settle period (100 ms) and
    // preflight: this waits for the absence of one, which only a fixed time can show.
    std::thread::sleep(Duration::from_millis(1500));
    let log = host.log();
    assert_eq!(
        log.matches("restart requested").count(),
        1,
        "one restart for the burst:\n{log}"
    );
    assert!(
        !log.contains("worker started generation=3"),
        "no third generation:\n{log}"
    );
    let second = get(port, "/pid").body_str().trim().to_string();
    assert!(
        log.contains(&format!("worker started generation=2 pid={second}")),
        "generation 2 serves ({second}):\n{log}"
    );
}

#[test]
fn an_invalid_config_edit_is_refused_with_its_position_and_the_old_config_serves() {
    let port = free_port();
    let (host, _exe) = start_copy(port, "");
    let first = host.wait_serving(port);
    host.wait_log("watching for changes");
    let bad = config(port, "      \"/x\": { handler: sleep, duration: soon }\n");
    edit_by_rename(&host.config, &bad);
    host.wait_log("config change refused");
    let log = host.log();
    assert!(
        log.contains("server.yaml:10:")
            && log.contains("servers.s1.routes./x.duration")
            && log.contains("invalid duration \"soon\""),
        "log:\n{log}"
    );
    assert_eq!(get(port, "/pid").body_str().trim(), first.to_string());
    assert_eq!(get(port, "/sleep").status, 200);
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_refused() {
    let port = free_port();
    let (dir, exe) = dir_with_binary();
    let old = make_pki(dir.path(), 1001);
    let cfg = format!(
        "graceful: true\nshutdown_timeout: 5s\nwatch: {{ settle: 100ms }}\nservers:\n  s1:\n    https: {{ address: \"127.0.0.1:{port}\", cert: server.crt, key: server.key }}\n    routes:\n      \"/pid\": pid\n"
    );
    let host = Apphost::start_in(dir, &cfg, "server.yaml", &exe);
    let r = wait_until(Duration::from_secs(15), "https serving", || {
        https_get(port, "/pid", &old.ca_pem, true).ok()
    });
    let pid = r.body.trim().to_string();
    assert_eq!(r.peer_cert, pem_der(&old.cert_path));

    // Renew: a new CA and leaf written into a scratch dir, then moved over the served files.
    let scratch = tempfile::tempdir_in(host.dir.path()).unwrap();
    let new = make_pki(scratch.path(), 2002);
    std::fs::rename(&new.key_path, host.dir.path().join("server.key")).unwrap();
    std::fs::rename(&new.cert_path, host.dir.path().join("server.crt")).unwrap();
    let served = wait_until(Duration::from_secs(15), "the new certificate", || {
        let r = https_get(port, "/pid", &new.ca_pem, true).ok()?;
        (r.peer_cert == pem_der(&host.dir.path().join("server.crt"))).then_some(r)
    });
    assert_eq!(served.body.trim(), pid, "no restart: same worker");
    let refusals = host.log().matches("certificate change refused").count();

    // A key that does not match: refused, the renewed pair stays.
    let other = make_pki(scratch.path(), 3003);
    std::fs::rename(&other.key_path, host.dir.path().join("server.key")).unwrap();
    host.wait_log_count(
        "certificate change refused",
        refusals + 1,
        Duration::from_secs(15),
    );
    let still = https_get(port, "/pid", &new.ca_pem, true).expect("still serving the renewed pair");
    assert_eq!(still.body.trim(), pid);
    assert!(!host.log().contains("restart requested"));
}

/// The DER of the first certificate in a PEM file.
fn pem_der(path: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut pem)
        .unwrap();
    rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// A config edit that arrives while a restart is under way is not lost: it is applied by a
/// restart after that one (README: "a change that arrives during a restart is applied by a
/// restart after it").
#[test]
fn a_config_edit_during_a_restart_is_applied_by_a_restart_after_it() {
    let port = free_port();
    let (host, exe) = start_copy(port, "");
    let first = host.wait_serving(port);
    host.wait_log("watching for changes");
    // A new executable that takes 2 s to start (and to pass its preflight `check`).
    replace_with(
        &exe,
        format!("#!/bin/sh\nsleep 2\nexec '{BIN}' \"$@\"\n").as_bytes(),
    );
    host.wait_log("worker started generation=2");
    assert!(!host.log().contains("restart done"), "still starting");
    let cfg = config(port, "      \"/hello\": { handler: hello, text: added }\n");
    edit_by_rename(&host.config, &cfg);
    assert!(
        !host.log().contains("restart done"),
        "the edit came during the restart:\n{}",
        host.log()
    );
    // The executable's restart ends; the edit, seen meanwhile, is checked (a 2 s preflight with
    // this executable) and restarts once more (another 2 s start).
    host.wait_log_count("restart done", 2, Duration::from_secs(40));
    host.wait_log("restarted after the config change");
    let log = host.log();
    let exe_done = log.find("restarted after the executable change");
    let config_done = log.find("restarted after the config change");
    assert!(
        exe_done.is_some() && exe_done < config_done,
        "the config's restart came after the executable's:\n{log}"
    );
    assert!(log.contains("worker started generation=3"), "{log}");
    let r = get(port, "/hello");
    assert_eq!((r.status, r.body_str()), (200, "added\n".to_string()));
    assert_ne!(get(port, "/pid").body_str().trim(), first.to_string());
}
