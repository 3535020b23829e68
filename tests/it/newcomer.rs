//! What a new user trips over (issue 18), on the real binary: `check` catches what `run` would
//! hit (a bad log level, an admin path over a route, a directory for `-c`, an address in use),
//! fatal errors reach stderr whatever the log level, a full restart reports its whole time and
//! the pid it replaced, control commands hint where the socket is and answer `--json` in one
//! schema, and `curl -d` to an admin route reads text.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const T: Duration = Duration::from_secs(30);

/// Write `config` as `server.yaml` in a new temp dir and run `apphost check -c` on it.
fn check(config: &str) -> CmdOutput {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.yaml"), config).unwrap();
    run_cli(dir.path(), &["check", "-c", "server.yaml"], &[], T)
}

#[test]
fn check_finds_what_run_would_trip_over() {
    // A log level tracing would take for a target name, silencing every line.
    let out = check("log: { level: verbose }\nservers:\n  a:\n    address: \"127.0.0.1:0\"\n");
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("server.yaml:1:15: log.level: unknown log level \"verbose\""),
        "{}",
        out.stderr
    );

    // The admin routes would answer every request for a route.
    let out = check(
        "servers:\n  a:\n    address: \"127.0.0.1:0\"\n    admin: { path: /health }\n    \
         routes:\n      /health: hello\n",
    );
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains(
            "server.yaml:6:16: servers.a.routes./health: the admin routes at \"/health\""
        ),
        "{}",
        out.stderr
    );

    // A directory where the config file should be.
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(dir.path(), &["check", "-c", "."], &[], T);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("is a directory"), "{}", out.stderr);

    // An address another program holds: fine as a config, a warning for what `run` will meet.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = check(&format!(
        "servers:\n  a:\n    address: \"127.0.0.1:{port}\"\n"
    ));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.contains("warning: servers.a: http://127.0.0.1:")
            && out.stderr.contains("cannot be bound now"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.ends_with("ok\n"), "{}", out.stdout);
}

#[test]
fn fatal_errors_reach_stderr_whatever_the_log_level() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("server.yaml"),
        format!("log: {{ level: \"off\" }}\nservers:\n  a:\n    address: \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    // APPHOST_LOG overrides the config's level; both say off.
    let out = run_cli(
        dir.path(),
        &["run", "-c", "server.yaml"],
        &[("APPHOST_LOG", "off")],
        T,
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("Address already in use"),
        "the reason the host stopped: {}",
        out.stderr
    );
    // An APPHOST_LOG tracing would take for a target name is ignored, and says so.
    let out = run_cli(
        dir.path(),
        &["run", "-c", "server.yaml"],
        &[("APPHOST_LOG", "verbose")],
        T,
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("Address already in use")
            && out
                .stderr
                .contains("APPHOST_LOG ignored: unknown log level \"verbose\""),
        "{}",
        out.stderr
    );
}

#[test]
fn a_full_restart_reports_its_whole_time_and_the_old_pid() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let config = format!(
        "graceful: false\ncontrol: {{ socket: {} }}\nservers:\n  a:\n    address: \
         \"127.0.0.1:{port}\"\n    routes:\n      /pid: pid\n      /sleep: {{ handler: sleep, \
         duration: 2s }}\n",
        sock.display()
    );
    let host = Apphost::start_in(dir, &config, "server.yaml", BIN.as_ref());
    let old = host.wait_serving(port);

    // A slow request in flight: the old worker drains it before the new one starts.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "GET /sleep HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while line.trim() != old.to_string() {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "the first line of /sleep"
        );
    }
    let rest = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        Instant::now()
    });

    let asked = Instant::now();
    let out = run_cli(
        host.dir.path(),
        &["restart", "--socket", sock.to_str().unwrap()],
        &[],
        T,
    );
    let took = asked.elapsed();
    let drained = rest.join().unwrap() - asked;
    assert_eq!(out.code(), Some(0), "{out:?}");
    let line = out.stdout.trim();
    assert!(line.contains(&format!("(was {old})")), "{line}");
    assert!(line.contains("full restart"), "{line}");
    // `serving 1.93 s after the request`: at least the drain, at most the command's own time.
    let secs = seconds_after_serving(line).unwrap_or_else(|| panic!("a time in s: {line}"));
    assert!(
        secs >= drained.as_secs_f64() - 0.05 && secs <= took.as_secs_f64(),
        "reported {secs} s; the drain took {drained:?}, the command {took:?}"
    );
}

/// `… serving 1.93 s after …` → 1.93.
fn seconds_after_serving(line: &str) -> Option<f64> {
    let (n, rest) = line.split("serving ").nth(1)?.split_once(' ')?;
    rest.starts_with("s ").then(|| n.parse().ok())?
}

#[test]
fn control_commands_hint_and_answer_json_in_one_schema() {
    // From a directory without the host's config: where to look.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let xdg = [("XDG_RUNTIME_DIR", run.to_str().unwrap())];
    let out = run_cli(dir.path(), &["status"], &xdg, T);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("--socket PATH") && out.stderr.contains("control: { socket: PATH }"),
        "{}",
        out.stderr
    );
    // --json: an error object on stdout, exit 1.
    let out = run_cli(dir.path(), &["status", "--json"], &xdg, T);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["error"], "not_running", "{v}");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("no apphost is running")
    );
}

#[test]
fn a_form_post_from_curl_reads_text() {
    let port = free_port();
    let host = Apphost::start(&format!(
        "servers:\n  a:\n    address: \"127.0.0.1:{port}\"\n    admin: true\n    routes:\n      \
         /pid: pid\n"
    ));
    host.wait_serving(port);
    // What `curl -d newExeFilePath=… URL` sends.
    let r = request(
        port,
        "POST",
        "/debug/admin/restart",
        &[
            ("Accept", "*/*"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        b"newExeFilePath=relative/app",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.header("content-type").unwrap().starts_with("text/plain"),
        "{:?}",
        r.header("content-type")
    );
    assert!(r.body_str().contains("absolute"), "{}", r.body_str());
}

#[test]
fn a_wrong_pem_file_is_named_as_written_with_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    std::fs::write(dir.path().join("certs/cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("server.yaml"),
        "servers:\n  a:\n    https: { address: \"127.0.0.1:0\", cert: certs/cert.pem, key: \
         certs/cert.pem }\n",
    )
    .unwrap();
    let out = run_cli(dir.path(), &["check", "-c", "server.yaml"], &[], T);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains(
            "servers.a.https: private key certs/cert.pem: no private key block found (expected \
             BEGIN PRIVATE KEY, BEGIN RSA PRIVATE KEY or BEGIN EC PRIVATE KEY; found BEGIN \
             CERTIFICATE)"
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn a_program_on_apphost_prints_its_own_version_and_apphosts() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(dir.path(), &["--version"], &[], T);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(
        out.stdout,
        format!("apphost {}\n", env!("CARGO_PKG_VERSION"))
    );
    // examples/basic.rs names itself with Host::program.
    let basic = std::path::Path::new(BIN)
        .parent()
        .unwrap()
        .join("examples/basic");
    let out = std::process::Command::new(&basic)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (`cargo test` builds it)", basic.display()));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("basic 1.0.0 (apphost {})\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_programs_own_handler_params_are_checked_at_check() {
    // examples/basic.rs declares its sleep handler's `duration` with Host::handler_with_params.
    let basic = std::path::Path::new(BIN)
        .parent()
        .unwrap()
        .join("examples/basic");
    let dir = tempfile::tempdir().unwrap();
    let check = |route: &str| {
        std::fs::write(
            dir.path().join("server.yaml"),
            format!("servers:\n  a:\n    address: \"127.0.0.1:0\"\n    routes:\n      {route}\n"),
        )
        .unwrap();
        let out = std::process::Command::new(&basic)
            .args(["check", "-c", "server.yaml"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check("/sleep: { handler: sleep, duratoin: 1s }");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "server.yaml:5:43: servers.a.routes./sleep.duratoin: unknown key \"duratoin\" (did \
             you mean \"duration\"?)"
        ),
        "{err}"
    );
    let (code, err) = check("/sleep: { handler: sleep, duration: 42 }");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("servers.a.routes./sleep.duration"), "{err}");
    let (code, err) = check("/sleep: { handler: sleep, duration: 1s, methods: [PSOT] }");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("(did you mean \"POST\"?)"), "{err}");
    let (code, err) = check("/sleep: { handler: sleep, duration: 1s }");
    assert_eq!(code, Some(0), "{err}");
}

/// The `listen` lines `check` prints for `config`, as ports.
fn listen_ports(dir: &std::path::Path, config: &str) -> Vec<u16> {
    let out = run_cli(dir, &["check", "-c", config], &[], T);
    assert_eq!(out.code(), Some(0), "{config}: {out:?}");
    out.stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("listen "))
        .map(|l| {
            let addr = l.split_whitespace().next().unwrap();
            addr.rsplit(':').next().unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn the_example_configs_run_side_by_side() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // https.yaml as shipped, beside the certificate its header tells the reader to make.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root.join("examples/https.yaml"),
        dir.path().join("https.yaml"),
    )
    .unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("server.crt"), cert.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("server.key"),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    let https = listen_ports(dir.path(), "https.yaml");
    let mut seen = https.clone();
    for name in ["basic.yaml", "multi.yaml"] {
        for p in listen_ports(root, &format!("examples/{name}")) {
            assert!(
                !seen.contains(&p),
                "port {p} of {name} is taken by another example"
            );
            seen.push(p);
        }
    }
    assert_eq!(https, vec![8443]);
    // The command in https.yaml's header writes the files its `cert` and `key` name.
    let header = std::fs::read_to_string(root.join("examples/https.yaml")).unwrap();
    assert!(
        header.contains("-keyout examples/server.key -out examples/server.crt")
            && header.contains("cert: server.crt, key: server.key"),
        "{header}"
    );
}

#[test]
fn after_a_stop_new_connections_are_refused_at_once_while_requests_finish() {
    let port = free_port();
    // graceful: a warm standby holds the listening socket too, and must let go of it.
    let mut host = Apphost::start(&format!(
        "graceful: true\nservers:\n  a:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \
         /pid: pid\n      /sleep: {{ handler: sleep, duration: 3s }}\n"
    ));
    let worker = host.wait_serving(port);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "GET /sleep HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while line.trim() != worker.to_string() {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "the first line of /sleep"
        );
    }
    let sleep = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = r.read_to_string(&mut rest);
        rest
    });

    host.signal(rustix::process::Signal::TERM);
    // Refused, not queued: a connection the kernel would accept into a queue nobody reads from
    // waits until the host exits, then is reset.
    wait_until(
        Duration::from_secs(5),
        "a new connection to be refused",
        || match TcpStream::connect(("127.0.0.1", port)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    );
    assert!(
        !sleep.is_finished(),
        "refused while the request in flight still runs"
    );
    let rest = sleep.join().unwrap();
    assert!(
        rest.contains(&worker.to_string()),
        "the request in flight finished: {rest:?}"
    );
    let st = host.wait_exit(T);
    assert!(st.success(), "{st:?}; log:\n{}", host.log());
}
