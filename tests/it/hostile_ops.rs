//! Hostile inputs on the operations side, against the real binary (issue #10): a DNS-rebinding
//! page reaching a token-less admin, cross-site `GET` restart links, FIFOs and devices where the
//! config or token file should be, alias bombs, token files others can read, and a `403` that
//! must not tell where a path resolves, an executable whose opening would block the
//! supervisor, a ConfigMap-style symlinked config swapped under a running host, and descriptors
//! left open by whoever started `apphost run`.
//!
//! A DNS-rebinding page cannot be staged here; what it produces on the wire can: a request over
//! loopback whose `Host` (and `Origin`) name another site.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::admin::start;
use crate::support::*;

/// Server `s1` on 127.0.0.1:`port` with `/pid` and `admin` as given (a YAML flow value).
fn config(port: u16, admin: &str) -> String {
    format!(
        "graceful: true\n\
         shutdown_timeout: 5s\n\
         watch: {{ executable: false, config: false }}\n\
         servers:\n  \
           s1:\n    \
             address: \"127.0.0.1:{port}\"\n    \
             admin: {admin}\n    \
             routes:\n      \
               \"/pid\": pid\n"
    )
}

/// One HTTP/1.1 request with exactly these header lines (no `Host` added).
fn raw(port: u16, method: &str, path: &str, headers: &[&str]) -> Resp {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nAccept: application/json\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    let bytes = raw_exchange(port, req.as_bytes()).unwrap();
    parse_response(&bytes, method == "HEAD").unwrap()
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

/// `apphost check -c PATH`, which must finish within a few seconds whatever `PATH` holds.
fn check(dir: &Path, path: &Path) -> CmdOutput {
    run_cli(
        dir,
        &["check", "-c", path.to_str().unwrap()],
        &[],
        Duration::from_secs(15),
    )
}

#[test]
fn token_less_admin_refuses_a_rebound_host_name() {
    let port = free_port();
    let host = start(&config(port, "true"));
    let worker = host.wait_serving(port);
    let evil = format!("Host: evil.example:{port}");
    let origin = format!("Origin: http://evil.example:{port}");
    // What a page on a rebinding name sends: its own name as Host, a matching Origin, and the
    // browser calls it same-origin.
    let r = raw(port, "GET", "/debug/admin/status", &[&evil, &origin]);
    assert_eq!(r.status, 403, "{}", r.body_str());
    let body = r.body_str();
    assert!(
        body.contains("evil.example") && body.contains("allowed_hosts"),
        "{body}"
    );
    let r = raw(
        port,
        "POST",
        "/debug/admin/restart",
        &[&evil, &origin, "Sec-Fetch-Site: same-origin"],
    );
    assert_eq!(r.status, 403, "{}", r.body_str());
    // A page may also hide its name behind an IP-looking one.
    let r = raw(
        port,
        "GET",
        "/debug/admin/status",
        &["Host: 127.0.0.1.nip.io"],
    );
    assert_eq!(r.status, 403, "{}", r.body_str());
    assert_eq!(get(port, "/pid").body_str().trim(), worker.to_string());
    // The names this machine is reached by locally still work.
    for h in [
        format!("Host: localhost:{port}"),
        format!("Host: 127.0.0.1:{port}"),
        "Host: localhost".to_string(),
    ] {
        let r = raw(port, "GET", "/debug/admin/status", &[&h]);
        assert_eq!(r.status, 200, "{h}: {}", r.body_str());
    }
    assert!(host.log().contains("admin: refused"), "{}", host.log());
}

#[test]
fn allowed_hosts_lets_a_listed_name_in() {
    let port = free_port();
    let host = start(&config(port, "{ allowed_hosts: [admin.test] }"));
    host.wait_serving(port);
    let r = raw(
        port,
        "GET",
        "/debug/admin/status",
        &[&format!("Host: ADMIN.test:{port}")],
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    let r = raw(port, "GET", "/debug/admin/status", &["Host: other.test"]);
    assert_eq!(r.status, 403, "{}", r.body_str());
}

#[test]
fn get_restart_link_from_another_site_is_refused() {
    let port = free_port();
    let host = start(&config(port, "true"));
    let worker = host.wait_serving(port);
    let h = format!("Host: 127.0.0.1:{port}");
    // An <img src=…/restart> on another page, in a browser without Sec-Fetch-Site: only the
    // Referer tells where it came from.
    for foreign in [
        "Referer: http://evil.example/page.html",
        "Origin: http://evil.example",
    ] {
        let r = raw(port, "GET", "/debug/admin/restart", &[&h, foreign]);
        assert_eq!(r.status, 403, "{foreign}: {}", r.body_str());
        assert!(r.body_str().contains("cross-site"), "{}", r.body_str());
    }
    assert_eq!(get(port, "/pid").body_str().trim(), worker.to_string());
    // The admin page's own link passes.
    let own = format!("Referer: http://127.0.0.1:{port}/debug/admin");
    let r = raw(port, "GET", "/debug/admin/restart", &[&h, &own]);
    assert_eq!(r.status, 200, "{}", r.body_str());
}

#[test]
fn forbidden_executable_answer_does_not_show_where_it_resolves() {
    let port = free_port();
    let probe = tempfile::tempdir().unwrap();
    let allowed = probe.path().join("releases");
    std::fs::create_dir(&allowed).unwrap();
    let link = allowed.join("app");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let host = start(&config(
        port,
        &format!("{{ allowed_exe_dirs: [\"{}\"] }}", allowed.display()),
    ));
    host.wait_serving(port);
    let r = raw(
        port,
        "POST",
        &format!("/debug/admin/restart?newExeFilePath={}", link.display()),
        &[&format!("Host: 127.0.0.1:{port}")],
    );
    assert_eq!(r.status, 403, "{}", r.body_str());
    let target = std::fs::canonicalize(BIN).unwrap();
    let body = r.body_str();
    assert!(body.contains("allowed_exe_dirs"), "{body}");
    assert!(!body.contains(target.to_str().unwrap()), "{body}");
}

#[test]
fn fifo_or_device_as_config_or_token_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The config itself a FIFO: `check` used to wait forever for a writer.
    let fifo = d.join("server.yaml");
    mkfifo(&fifo);
    let out = check(d, &fifo);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains(fifo.to_str().unwrap()) && out.stderr.contains("it is a FIFO"),
        "{}",
        out.stderr
    );
    // A token file that is a FIFO, or endless.
    let token_fifo = d.join("admin.token");
    mkfifo(&token_fifo);
    for (token, what) in [
        (token_fifo.clone(), "it is a FIFO"),
        (PathBuf::from("/dev/zero"), "it is a character device"),
    ] {
        let cfg = d.join("token.yaml");
        let admin = format!("{{ token_file: \"{}\" }}", token.display());
        std::fs::write(&cfg, config(free_port(), &admin)).unwrap();
        let out = check(d, &cfg);
        assert_eq!(out.code(), Some(2), "{out:?}");
        let want = format!(
            "{}:7:26: servers.s1.admin.token_file: cannot read",
            cfg.display()
        );
        assert!(
            out.stderr.contains(&want) && out.stderr.contains(what),
            "{}",
            out.stderr
        );
    }
    // A config far larger than any real one (sparse: no disk used).
    let big = d.join("big.yaml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 * 1024 * 1024)
        .unwrap();
    let out = check(d, &big);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("larger than the limit"),
        "{}",
        out.stderr
    );
}

#[test]
fn yaml_alias_bomb_with_mapping_keys_is_refused_at_once() {
    // 810 bytes that used to expand to 3 GB: every other level hides its copies in a mapping key.
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..=20 {
        let prev = format!("*l{}", i - 1);
        if i % 2 == 1 {
            text.push_str(&format!("l{i}: &l{i} {{ ? {prev} : 1 }}\n"));
        } else {
            text.push_str(&format!("l{i}: &l{i} [{}]\n", vec![prev; 9].join(", ")));
        }
    }
    assert!(text.len() < 1000);
    let path = dir.path().join("bomb.yaml");
    std::fs::write(&path, &text).unwrap();
    let out = check(dir.path(), &path);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains(&format!("{}:", path.display()))
            && out.stderr.contains("YAML aliases expand to more than"),
        "{}",
        out.stderr
    );
}

#[test]
fn token_file_readable_by_others_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = d.join("admin.token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let cfg = d.join("server.yaml");
    let admin = format!("{{ token_file: \"{}\" }}", token.display());
    std::fs::write(&cfg, config(free_port(), &admin)).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check(d, &cfg);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let want = format!(
        "warning: {}:7:26: servers.s1.admin.token_file: \"{}\" is readable by group or others (mode 644)",
        cfg.display(),
        token.display()
    );
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = check(d, &cfg);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    // `run` logs it too.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).unwrap();
    let port = free_port();
    let text = config(port, &admin);
    let host = start(&text);
    host.wait_serving(port);
    host.wait_log("is readable by group or others (mode 640)");
}

/// Holds a write lease on a file: while it is held, a blocking `open` of the file by anyone else
/// waits (up to `/proc/sys/fs/lease-break-time`, 45 s by default). It is the one way to make
/// opening a file that `stat` calls regular block, which a FIFO swapped in between the
/// supervisor's `stat` and `open` did by chance.
struct Lease {
    _held: std::fs::File,
}

impl Lease {
    #[allow(unsafe_code)]
    fn take(path: &Path) -> Lease {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        // Not exported by the libc crate; the same number on every Linux architecture.
        const F_SETSIG: libc::c_int = 10;
        let fd = f.as_raw_fd();
        // SAFETY: plain fcntl calls on a descriptor this function owns; no memory is passed.
        // The break notice comes as SIGWINCH (ignored by default) rather than SIGIO, whose
        // default action would end the test process.
        let set_sig = unsafe { libc::fcntl(fd, F_SETSIG, libc::SIGWINCH) };
        assert_eq!(set_sig, 0, "F_SETSIG: {}", std::io::Error::last_os_error());
        wait_until(Duration::from_secs(10), "a write lease", || {
            // SAFETY: as above.
            let r = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_WRLCK) };
            (r == 0).then_some(())
        });
        Lease { _held: f }
    }
}

#[test]
fn an_executable_that_would_block_on_open_does_not_stop_the_supervisor() {
    let port = free_port();
    let host = start(&config(port, "true"));
    let worker = host.wait_serving(port);
    let exe = host.dir.path().join("leased-app");
    std::fs::write(&exe, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let lease = Lease::take(&exe);
    let restart = std::thread::spawn(move || {
        raw(
            port,
            "POST",
            &format!("/debug/admin/restart?newExeFilePath={}", exe.display()),
            &[&format!("Host: 127.0.0.1:{port}")],
        )
    });
    // The supervisor answers its control socket meanwhile (it used to sit in open(2) until the
    // lease was broken, 45 s).
    let run = host.dir.path().join("run");
    let out = run_cli(
        host.dir.path(),
        &["status", "-c", host.config.to_str().unwrap()],
        &[("XDG_RUNTIME_DIR", run.to_str().unwrap())],
        Duration::from_secs(5),
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    let r = restart.join().unwrap();
    assert_eq!(r.status, 400, "{}", r.body_str());
    assert!(r.body_str().contains("lease"), "{}", r.body_str());
    drop(lease);
    assert_eq!(get(port, "/pid").body_str().trim(), worker.to_string());
    // A FIFO named as the executable is refused at once too.
    let fifo = host.dir.path().join("fifo-app");
    mkfifo(&fifo);
    let r = raw(
        port,
        "POST",
        &format!("/debug/admin/restart?newExeFilePath={}", fifo.display()),
        &[&format!("Host: 127.0.0.1:{port}")],
    );
    assert_eq!(r.status, 400, "{}", r.body_str());
    assert!(r.body_str().contains("it is a FIFO"), "{}", r.body_str());
}

/// The layout Kubernetes gives a ConfigMap volume: `server.yaml -> ..data/server.yaml`,
/// `..data -> ..<timestamp>/`, the real files in the timestamped directory. `publish` writes a
/// new timestamped directory and swaps `..data` to it the way the kubelet does (a new link
/// renamed over the old one), then removes the old directory.
struct ConfigMapVolume {
    dir: PathBuf,
    current: Option<PathBuf>,
    n: u32,
}

impl ConfigMapVolume {
    fn new(dir: &Path, text: &str) -> ConfigMapVolume {
        let mut v = ConfigMapVolume {
            dir: dir.to_path_buf(),
            current: None,
            n: 0,
        };
        v.publish(text);
        std::os::unix::fs::symlink("..data/server.yaml", dir.join("server.yaml")).unwrap();
        v
    }

    fn publish(&mut self, text: &str) {
        self.n += 1;
        let name = format!("..2026_11_29_15_00_0{}", self.n);
        let real = self.dir.join(&name);
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("server.yaml"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if let Some(old) = self.current.replace(real) {
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

#[test]
fn a_symlinked_config_follows_a_configmap_style_swap() {
    let port = free_port();
    let text = |v: &str| {
        format!(
            "graceful: true\n\
             shutdown_timeout: 5s\n\
             watch: {{ executable: false, config: true, settle: 100ms }}\n\
             servers:\n  \
               s1:\n    \
                 address: \"127.0.0.1:{port}\"\n    \
                 routes:\n      \
                   \"/pid\": pid\n      \
                   \"/v\": {{ handler: hello, text: {v} }}\n"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("config");
    std::fs::create_dir(&volume).unwrap();
    let mut cm = ConfigMapVolume::new(&volume, &text("one"));
    let path = volume.join("server.yaml");
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .arg("-c")
        .arg(&path)
        .current_dir(dir.path())
        .env("XDG_RUNTIME_DIR", &run);
    let host = Apphost::spawn(cmd, dir, path.clone());
    host.wait_serving(port);
    assert_eq!(get(port, "/v").body_str().trim(), "one");
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["-c", path.to_str().unwrap()]);
        run_cli(
            host.dir.path(),
            &all,
            &[("XDG_RUNTIME_DIR", run.to_str().unwrap())],
            Duration::from_secs(30),
        )
    };
    for (i, v) in ["two", "three"].iter().enumerate() {
        cm.publish(&text(v));
        // The watcher sees the swap and restarts on the new target.
        wait_until(
            Duration::from_secs(20),
            &format!("/v answering {v}"),
            || (try_get(port, "/v").ok()?.body_str().trim() == *v).then_some(()),
        );
        host.wait_log_count(
            "restarted after the config change",
            i + 1,
            Duration::from_secs(10),
        );
        // The CLI, given the same path, still finds the host's control socket.
        let out = cli(&["status"]);
        assert_eq!(out.code(), Some(0), "{out:?}");
    }
    // A restart asked by hand also reads the current target.
    cm.publish(&text("four"));
    let out = cli(&["restart"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    wait_until(Duration::from_secs(20), "/v answering four", || {
        (try_get(port, "/v").ok()?.body_str().trim() == "four").then_some(())
    });
}

#[test]
fn workers_do_not_inherit_descriptors_of_whoever_started_the_host() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("stray-descriptor");
    std::fs::write(&marker, "x").unwrap();
    let path = dir.path().join("server.yaml");
    std::fs::write(&path, config(port, "true")).unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A shell that opens descriptor 7 (not close-on-exec) and becomes `apphost run`.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("exec 7<\"$1\"; exec \"$0\" run -c \"$2\"")
        .arg(BIN)
        .arg(&marker)
        .arg(&path)
        .current_dir(dir.path())
        .env("XDG_RUNTIME_DIR", &run);
    let host = Apphost::spawn(cmd, dir, path);
    let worker = host.wait_serving(port);
    let holds_marker = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .any(|t| t == marker)
    };
    assert!(
        holds_marker(host.pid()),
        "the supervisor was started with the stray descriptor"
    );
    assert!(!holds_marker(worker), "worker {worker} inherited it");
}
