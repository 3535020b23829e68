//! Admin routes and the control CLI against the real binary: every admin endpoint, its auth
//! (token, loopback), restart outcomes and their status codes, shutdown, and `apphost status`,
//! `apphost restart`, `apphost shutdown` over the control socket.
//!
//! Every host here gets `XDG_RUNTIME_DIR` pointing into its own temp dir, so the derived
//! control socket (`$XDG_RUNTIME_DIR/apphost/<hash>.sock`) never collides with another test.
//! Non-loopback clients cannot be made on this machine: the loopback predicate is unit-tested in
//! `src/admin/auth.rs`, and here 127.0.0.1 is shown to be let in.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const T: Duration = Duration::from_secs(20);

/// A config with server `s1` on 127.0.0.1:`port` (with `/pid`), `admin` as given (a YAML flow
/// value, or `None` for no admin), the file watchers off and `graceful_timeout` as given.
fn config(port: u16, admin: Option<&str>, graceful_timeout: &str) -> String {
    let admin = admin
        .map(|a| format!("    admin: {a}\n"))
        .unwrap_or_default();
    format!(
        "graceful: true\n\
         graceful_timeout: {graceful_timeout}\n\
         shutdown_timeout: 5s\n\
         watch: {{ executable: false, config: false }}\n\
         servers:\n  \
           s1:\n    \
             address: \"127.0.0.1:{port}\"\n\
         {admin}    \
             routes:\n      \
               \"/pid\": pid\n"
    )
}

/// Start `apphost run -c DIR/server.yaml` with `XDG_RUNTIME_DIR=DIR/run` (its own control
/// socket directory). Also used by `hostile_ops`.
pub(crate) fn start(config_text: &str) -> Apphost {
    start_with_env(config_text, &[])
}

/// [`start`], with `env` added to the supervisor's environment.
pub(crate) fn start_with_env(config_text: &str, env: &[(&str, &str)]) -> Apphost {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.yaml");
    std::fs::write(&path, config_text).unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .arg("-c")
        .arg(&path)
        .current_dir(dir.path())
        .env("XDG_RUNTIME_DIR", &run)
        .envs(env.iter().copied());
    Apphost::spawn(cmd, dir, path)
}

fn runtime_dir(host: &Apphost) -> PathBuf {
    host.dir.path().join("run")
}

/// `apphost ARGS` with the host's config and `XDG_RUNTIME_DIR`.
fn cli(host: &Apphost, args: &[&str]) -> CmdOutput {
    let config = host.config.to_str().unwrap().to_string();
    let run = runtime_dir(host);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-c", &config]);
    run_cli(
        host.dir.path(),
        &all,
        &[("XDG_RUNTIME_DIR", run.to_str().unwrap())],
        T,
    )
}

/// The control socket the host created (the only file in `$XDG_RUNTIME_DIR/apphost`).
fn control_socket(host: &Apphost) -> PathBuf {
    let dir = runtime_dir(host).join("apphost");
    wait_until(T, "the control socket", || {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        (files.len() == 1).then(|| files.remove(0))
    })
}

fn send(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    request(port, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} on port {port}: {e}"))
}

/// A restart asked through an admin route just after another restart: asked again while the
/// answer is the documented 503 "this worker is draining" (a connection the old worker accepted
/// before its drain began is answered by it, and a draining worker refuses new restarts). Any
/// other answer is returned, and a transport error fails the test: a connection is never dropped
/// unserved, not even as a drain starts.
fn restart_again(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    wait_until(
        T,
        &format!("{method} {path} answered by a serving worker"),
        || {
            let r = send(port, method, path, headers, body);
            (r.status != 503 || !r.body_str().contains("draining")).then_some(r)
        },
    )
}

fn json(r: &Resp) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", r.status, r.body_str()))
}

const JSON: (&str, &str) = ("accept", "application/json");

fn pid_now(port: u16) -> u32 {
    get(port, "/pid").body_str().trim().parse().unwrap()
}

/// Wait until fresh connections are answered by `pid` (the old worker may still accept for a
/// moment after a restart has answered).
fn wait_pid(port: u16, pid: u32) {
    wait_until(T, &format!("/pid to answer {pid}"), || {
        (pid_now(port) == pid).then_some(())
    });
}

/// An executable shell script in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn page_status_methods_and_paths() {
    let port = free_port();
    let port2 = free_port();
    let mut text = config(port, Some("{ path: /ops }"), "10s");
    text.push_str(&format!(
        "  s2:\n    address: \"127.0.0.1:{port2}\"\n    routes:\n      \"/pid\": pid\n"
    ));
    let host = start(&text);
    let worker = host.wait_serving(port);
    host.wait_serving(port2);

    // The page: live pids, forms posting to restart and shutdown with a confirm().
    let r = get(port, "/ops");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let html = r.body_str();
    for needle in [
        format!("id=\"worker-pid\"><span class=\"big\">{worker}</span>"),
        format!(
            "id=\"supervisor-pid\"><span class=\"big\">{}</span>",
            host.pid()
        ),
        format!("id=\"page-pid\">{worker}<"),
        "<form method=\"post\" action=\"/ops/restart\"".to_string(),
        "<form method=\"post\" action=\"/ops/shutdown\"".to_string(),
        "name=\"newExeFilePath\"".to_string(),
        "confirm(".to_string(),
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port2}"),
        BIN.to_string(),
    ] {
        assert!(html.contains(&needle), "page lacks {needle:?}:\n{html}");
    }
    assert!(
        !html.contains("src=") && !html.contains("<link"),
        "no external assets"
    );
    assert_eq!(get(port, "/ops/").status, 200);
    let r = send(port, "HEAD", "/ops", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());

    // Status: the same facts as JSON.
    let r = get(port, "/ops/status");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = json(&r);
    // The schema `apphost status --json` shares, with apphost's version.
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["supervisor"]["supervisor_pid"], host.pid());
    assert_eq!(v["supervisor"]["worker_pid"], worker);
    assert_eq!(v["supervisor"]["phase"], "serving");
    assert_eq!(v["worker"]["pid"], worker);
    assert_eq!(v["worker"]["generation"], 1);
    assert!(v["worker"]["connections"].as_u64().unwrap() >= 1);
    assert_eq!(v["servers"][0]["name"], "s1");
    assert_eq!(
        v["servers"][0]["listeners"][0],
        format!("http://127.0.0.1:{port}")
    );
    assert_eq!(v["servers"][0]["admin"], "/ops");
    assert_eq!(v["servers"][1]["admin"], Value::Null);
    assert_eq!(v["admin"]["auth"], "loopback_only");
    // The page asked for as JSON is the status.
    let v = json(&send(port, "GET", "/ops", &[JSON], b""));
    assert_eq!(v["worker"]["pid"], worker);
    let v = json(&get(port, "/ops?format=json"));
    assert_eq!(v["worker"]["pid"], worker);

    // Wrong methods, unknown paths.
    for (method, path, allow) in [
        ("DELETE", "/ops", "GET, HEAD"),
        ("POST", "/ops/status", "GET, HEAD"),
        ("GET", "/ops/shutdown", "POST"),
        ("PUT", "/ops/restart", "POST, GET"),
        ("DELETE", "/ops/reload", "POST, GET"),
    ] {
        let r = send(port, method, path, &[], b"");
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
    assert_eq!(get(port, "/ops/nope").status, 404);
    // No `admin:`, no admin routes; and the default path is not served when another is set.
    assert_eq!(get(port2, "/debug/admin").status, 404);
    assert_eq!(get(port2, "/ops").status, 404);
    assert_eq!(get(port, "/debug/admin").status, 404);
    // Every admin request is logged with the client address.
    host.wait_log("client=127.0.0.1:");
    assert_eq!(pid_now(port), worker, "nothing restarted");
}

#[test]
fn bearer_token_is_required_when_configured() {
    let port = free_port();
    let host = start(&config(port, Some("{ token: s3cret-token }"), "10s"));
    host.wait_serving(port);
    let r = get(port, "/debug/admin/status");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"apphost admin\"")
    );
    for bad in [
        "Bearer s3cret",
        "Bearer s3cret-tokenx",
        "Basic czNjcmV0LXRva2Vu",
    ] {
        let r = send(port, "GET", "/debug/admin", &[("authorization", bad)], b"");
        assert_eq!(r.status, 401, "{bad}");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .starts_with("Bearer realm=\"apphost admin\""),
            "{bad}"
        );
    }
    let ok = [("authorization", "Bearer s3cret-token")];
    let r = send(port, "GET", "/debug/admin/status", &ok, b"");
    assert_eq!(r.status, 200);
    assert_eq!(json(&r)["admin"]["auth"], "bearer_token");
    assert_eq!(send(port, "GET", "/debug/admin", &ok, b"").status, 200);
    // Unauthenticated actions do nothing.
    let before = pid_now(port);
    assert_eq!(
        send(port, "POST", "/debug/admin/restart", &[], b"").status,
        401
    );
    assert_eq!(
        send(port, "POST", "/debug/admin/shutdown", &[], b"").status,
        401
    );
    assert_eq!(pid_now(port), before);
    host.wait_log("admin: refused: missing bearer token");
}

#[test]
fn loopback_client_is_served_without_token() {
    let port = free_port();
    let host = start(&config(port, Some("{}"), "10s"));
    host.wait_serving(port);
    let r = get(port, "/debug/admin/status");
    assert_eq!(r.status, 200, "127.0.0.1 is loopback: {}", r.body_str());
}

#[test]
fn restart_answers_with_the_new_pid_in_every_format() {
    let port = free_port();
    let host = start(&config(port, Some("{}"), "10s"));
    let first = host.wait_serving(port);

    // JSON.
    let r = restart_again(port, "POST", "/debug/admin/restart", &[JSON], b"");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let v = json(&r);
    assert_eq!(v["ok"], true);
    assert_eq!(v["kind"], "restarted");
    assert_eq!(v["old_pid"], first);
    assert_eq!(v["generation"], 2);
    assert_eq!(v["mode"], "graceful");
    assert!(v["handoff_ms"].as_f64().unwrap() > 0.0);
    let second = v["pid"].as_u64().unwrap() as u32;
    assert_ne!(second, first);
    assert_eq!(r.header("connection"), Some("close"));
    wait_pid(port, second);

    // Plain text, via GET (as the seed's links do).
    let r = restart_again(port, "GET", "/debug/admin/restart", &[], b"");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let body = r.body_str();
    assert!(body.starts_with("restarted: generation 3, pid "), "{body}");
    assert!(body.contains(&format!("(was {second})")), "{body}");
    assert!(body.contains("handoff "), "{body}");
    let third: u32 = body["restarted: generation 3, pid ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    wait_pid(port, third);

    // The `reload` alias, with `?format=json`.
    let r = restart_again(port, "POST", "/debug/admin/reload?format=json", &[], b"");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let fourth = json(&r)["pid"].as_u64().unwrap() as u32;
    wait_pid(port, fourth);

    // A browser form: an HTML result page with the new pid and a way back.
    let r = restart_again(
        port,
        "POST",
        "/debug/admin/restart",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("accept", "text/html,application/xhtml+xml"),
            ("origin", &format!("http://127.0.0.1:{port}")),
            ("sec-fetch-site", "same-origin"),
        ],
        b"newExeFilePath=",
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let html = r.body_str();
    let fifth: u32 = html
        .split("id=\"new-pid\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in:\n{html}"));
    assert_ne!(fifth, fourth);
    assert!(html.contains("href=\"/debug/admin\""), "{html}");
    wait_pid(port, fifth);
    // The page now shows it (whichever worker serves the page: a draining one asks the
    // supervisor too).
    let want = format!("id=\"worker-pid\"><span class=\"big\">{fifth}<");
    let page = get(port, "/debug/admin");
    assert_eq!(page.status, 200);
    assert!(page.body_str().contains(&want), "{}", page.body_str());

    // With the executable named explicitly (the same binary).
    let r = restart_again(
        port,
        "POST",
        "/debug/admin/restart",
        &[JSON, ("content-type", "application/x-www-form-urlencoded")],
        format!("newExeFilePath={}", BIN.replace('/', "%2F")).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    let v = json(&r);
    assert_eq!(v["exe"], BIN);
    wait_pid(port, v["pid"].as_u64().unwrap() as u32);

    // The supervisor recorded who asked.
    let v = json(&send(port, "GET", "/debug/admin/status", &[], b""));
    assert_eq!(v["supervisor"]["restarts"], 5);
    assert_eq!(v["supervisor"]["last_restart"]["ok"], true);
    assert_eq!(v["supervisor"]["last_restart"]["trigger"], "admin");
    assert_eq!(v["supervisor"]["supervisor_pid"], host.pid());
    host.wait_log("admin: restart done");
}

#[test]
fn unusable_executables_are_400_and_the_worker_stays() {
    let port = free_port();
    let host = start(&config(port, Some("{}"), "10s"));
    let worker = host.wait_serving(port);
    let dir = host.dir.path();
    let plain = dir.join("not-executable");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    let missing = dir.join("missing");
    let cases: Vec<(PathBuf, &str)> = vec![
        (missing, "No such file"),
        (plain, "not executable"),
        (dir.to_path_buf(), "not a regular file"),
    ];
    for (exe, why) in &cases {
        let q = format!(
            "/debug/admin/restart?newExeFilePath={}",
            exe.display().to_string().replace('/', "%2F")
        );
        let r = send(port, "POST", &q, &[JSON], b"");
        assert_eq!(r.status, 400, "{}: {}", exe.display(), r.body_str());
        let v = json(&r);
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "bad_executable");
        assert!(v["message"].as_str().unwrap().contains(why), "{v}");
        // Also as a form body, answered in text.
        let r = send(
            port,
            "POST",
            "/debug/admin/restart?format=text",
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("newExeFilePath={}", exe.display()).as_bytes(),
        );
        assert_eq!(r.status, 400, "{}", r.body_str());
        assert!(
            r.body_str()
                .starts_with("400 Bad Request: unusable executable")
        );
    }
    let r = send(
        port,
        "POST",
        "/debug/admin/restart?newExeFilePath=relative/apphost",
        &[],
        b"",
    );
    assert_eq!(r.status, 400);
    assert_eq!(pid_now(port), worker, "the worker is unchanged");
    let v = json(&get(port, "/debug/admin/status"));
    assert_eq!(v["supervisor"]["worker_pid"], worker);
    assert_eq!(v["supervisor"]["last_restart"]["ok"], false);
}

#[test]
fn allowed_exe_dirs_refuse_others_with_403() {
    let port = free_port();
    let probe = tempfile::tempdir().unwrap();
    let allowed = probe.path().join("releases");
    std::fs::create_dir(&allowed).unwrap();
    let admin_cfg = format!("{{ allowed_exe_dirs: [\"{}\"] }}", allowed.display());
    let host = start(&config(port, Some(&admin_cfg), "10s"));
    let worker = host.wait_serving(port);
    // A real executable, outside the allowed dir; and a symlink inside pointing out.
    let link = allowed.join("apphost");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    for exe in [BIN.to_string(), link.display().to_string()] {
        let r = send(
            port,
            "POST",
            &format!("/debug/admin/restart?newExeFilePath={exe}"),
            &[JSON],
            b"",
        );
        assert_eq!(r.status, 403, "{exe}: {}", r.body_str());
        assert_eq!(json(&r)["error"], "forbidden");
        assert!(r.body_str().contains("allowed_exe_dirs"));
    }
    // Inside, but not a program: the supervisor's checks still apply.
    let junk = script(&allowed, "junk", "");
    std::fs::write(&junk, "no shebang, no ELF").unwrap();
    let r = send(
        port,
        "POST",
        &format!("/debug/admin/restart?newExeFilePath={}", junk.display()),
        &[JSON],
        b"",
    );
    assert_eq!(r.status, 400, "{}", r.body_str());
    // No newExeFilePath: the recorded executable, allowed whatever the list says.
    let r = restart_again(port, "POST", "/debug/admin/restart", &[JSON], b"");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_ne!(json(&r)["pid"], worker);
}

#[test]
fn failed_slow_and_concurrent_restarts_are_502_504_409() {
    let port = free_port();
    let host = start(&config(port, Some("{}"), "2s"));
    let worker = host.wait_serving(port);
    let dir = host.dir.path();
    let failing = script(dir, "failing", "echo 'cannot start: boom' >&2\nexit 3");
    let hanging = script(dir, "hanging", "exec sleep 30");

    let r = send(
        port,
        "POST",
        &format!("/debug/admin/restart?newExeFilePath={}", failing.display()),
        &[JSON],
        b"",
    );
    assert_eq!(r.status, 502, "{}", r.body_str());
    let v = json(&r);
    assert_eq!(v["error"], "failed");
    assert!(
        v["message"].as_str().unwrap().contains("exit status 3"),
        "{v}"
    );

    // A restart that never becomes ready; a second one meanwhile is refused.
    let slow = std::thread::spawn(move || {
        send(
            port,
            "POST",
            &format!("/debug/admin/restart?newExeFilePath={}", hanging.display()),
            &[JSON],
            b"",
        )
    });
    wait_until(T, "the restart to be under way", || {
        let v = json(&get(port, "/debug/admin/status"));
        (v["supervisor"]["phase"] == "restarting").then_some(())
    });
    let r = send(port, "POST", "/debug/admin/restart", &[JSON], b"");
    assert_eq!(r.status, 409, "{}", r.body_str());
    assert_eq!(json(&r)["error"], "busy");
    let r = slow.join().unwrap();
    assert_eq!(r.status, 504, "{}", r.body_str());
    assert_eq!(json(&r)["error"], "timeout");
    assert_eq!(pid_now(port), worker, "the old worker serves on");
}

#[test]
fn shutdown_answers_then_the_host_exits_0() {
    let port = free_port();
    let mut host = start(&config(port, Some("{}"), "10s"));
    host.wait_serving(port);
    let socket = control_socket(&host);
    let r = send(port, "POST", "/debug/admin/shutdown", &[JSON], b"");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let v = json(&r);
    assert_eq!(v["ok"], true);
    assert_eq!(v["kind"], "shutting_down");
    let st = host.wait_exit(T);
    assert!(st.success(), "exit status {st:?}; log:\n{}", host.log());
    assert!(!socket.exists(), "the control socket is removed at exit");
}

#[test]
fn cross_site_browser_posts_are_refused() {
    let port = free_port();
    let host = start(&config(port, Some("{}"), "10s"));
    let worker = host.wait_serving(port);
    for headers in [
        vec![("origin", "http://evil.example")],
        vec![("sec-fetch-site", "cross-site")],
    ] {
        let r = send(port, "POST", "/debug/admin/shutdown", &headers, b"");
        assert_eq!(r.status, 403, "{headers:?}");
        let r = send(port, "GET", "/debug/admin/restart", &headers, b"");
        assert_eq!(r.status, 403, "{headers:?}");
    }
    assert_eq!(pid_now(port), worker);
}

#[test]
fn cli_status_restart_shutdown_over_the_control_socket() {
    let port = free_port();
    // No admin routes at all: the CLI does not need them.
    let mut host = start(&config(port, None, "10s"));
    let first = host.wait_serving(port);
    assert_eq!(get(port, "/debug/admin").status, 404);

    let socket = control_socket(&host);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600, "{}", socket.display());
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    let name = socket.file_name().unwrap().to_str().unwrap();
    assert!(
        name.len() == 21 && name.ends_with(".sock"),
        "<16 hex>.sock: {name}"
    );

    let out = cli(&host, &["status"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("supervisor pid {}", host.pid())),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("worker pid {first}")),
        "{}",
        out.stdout
    );
    let out = cli(&host, &["status", "--json"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["supervisor"]["worker_pid"], first);

    // Restart: waits, prints the new pid and the handoff time.
    let out = cli(&host, &["restart"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let line = out.stdout.trim();
    assert!(line.starts_with("restarted: generation 2, pid "), "{line}");
    assert!(line.contains(&format!("(was {first})")), "{line}");
    assert!(line.contains(" ms "), "{line}");
    let second: u32 = line["restarted: generation 2, pid ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    wait_pid(port, second);

    // A bad executable: exit 1, the reason on stderr, nothing changed.
    let out = cli(&host, &["restart", "--exe", "/nonexistent"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("restart failed: unusable executable")
            && out.stderr.contains("/nonexistent"),
        "{}",
        out.stderr
    );
    assert_eq!(pid_now(port), second);

    // --socket names the socket directly; --json prints the raw answer.
    let sock = socket.to_str().unwrap().to_string();
    let out = run_cli(
        host.dir.path(),
        &["restart", "--socket", &sock, "--json", "--exe", BIN],
        &[],
        T,
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["kind"], "restarted");
    assert_eq!(v["exe"], BIN);
    wait_pid(port, v["pid"].as_u64().unwrap() as u32);
    let out = cli(&host, &["status", "--json"]);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["supervisor"]["last_restart"]["trigger"], "cli");
    assert_eq!(v["supervisor"]["restarts"], 2);

    let out = cli(&host, &["shutdown"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("shutting down"), "{}", out.stdout);
    let st = host.wait_exit(T);
    assert!(st.success(), "exit status {st:?}; log:\n{}", host.log());
    assert!(!socket.exists(), "the control socket is removed at exit");
    host.wait_log("control: shutdown requested");

    // Nobody there any more.
    let out = cli(&host, &["status"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("no apphost is running"),
        "{}",
        out.stderr
    );
}

#[test]
fn configured_socket_replaces_a_stale_file_and_shutdown_waits() {
    let port = free_port();
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("ctl.sock");
    // Left behind by a host that died: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let mut text = config(port, None, "10s");
    text.push_str(&format!("control: {{ socket: \"{}\" }}\n", sock.display()));
    let mut host = start(&text);
    let worker = host.wait_serving(port);
    let s = sock.to_str().unwrap();
    let out = run_cli(host.dir.path(), &["status", "--socket", s], &[], T);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains(&format!("worker pid {worker}")));
    // `-c` finds the configured socket too.
    let out = cli(&host, &["status"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let out = run_cli(
        host.dir.path(),
        &["shutdown", "--wait", "--socket", s],
        &[],
        T,
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("stopped"), "{}", out.stdout);
    assert!(!sock.exists());
    assert!(host.wait_exit(T).success());
}

#[test]
fn full_restart_is_accepted_with_202() {
    let port = free_port();
    let text = config(port, Some("{}"), "10s").replace("graceful: true", "graceful: false");
    let host = start(&text);
    let first = host.wait_serving(port);
    // The answering worker must drain before the new one starts: it cannot wait for the outcome.
    let r = send(port, "POST", "/debug/admin/restart", &[JSON], b"");
    assert_eq!(r.status, 202, "{}", r.body_str());
    let v = json(&r);
    assert_eq!(v["kind"], "restart_accepted");
    assert_eq!(v["mode"], "full");
    let second = wait_until(T, "the new worker", || {
        let p = try_get(port, "/pid")
            .ok()?
            .body_str()
            .trim()
            .parse::<u32>()
            .ok()?;
        (p != first).then_some(p)
    });
    let v = json(&send(port, "GET", "/debug/admin/status", &[], b""));
    assert_eq!(v["supervisor"]["worker_pid"], second);
    assert_eq!(v["supervisor"]["last_restart"]["ok"], true);
    assert_eq!(v["supervisor"]["last_restart"]["trigger"], "admin");
}

/// Status requests on fresh connections all through several restarts: every one is answered
/// 200 with the supervisor's status, including those a draining old worker took (it relays
/// them), and no connection is dropped unserved.
#[test]
fn status_is_answered_all_through_restarts() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let port = free_port();
    let host = start(&config(port, Some("{}"), "10s"));
    let mut worker = host.wait_serving(port);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let client = {
        let (stop, answered) = (stop.clone(), answered.clone());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match request(port, "GET", "/debug/admin/status", &[], b"") {
                    Ok(r) if r.status == 200 => {
                        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                        if v["supervisor"]["supervisor_pid"].is_null() {
                            failures.push(format!("no supervisor status: {}", r.body_str()));
                        }
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("{} {}", r.status, r.body_str())),
                    Err(e) => failures.push(format!("{:?}: {e}", e.kind())),
                }
            }
            failures
        })
    };
    for round in 1..=5u64 {
        let before = answered.load(Ordering::Relaxed);
        wait_until(T, "status answers before the restart", || {
            (answered.load(Ordering::Relaxed) >= before + 3).then_some(())
        });
        host.signal(rustix::process::Signal::USR1);
        host.wait_log_count("restart done (graceful)", round as usize, T);
        worker = wait_until(T, "the new worker", || {
            let p = pid_now(port);
            (p != worker).then_some(p)
        });
    }
    let before = answered.load(Ordering::Relaxed);
    wait_until(T, "status answers after the restarts", || {
        (answered.load(Ordering::Relaxed) >= before + 3).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let failures = client.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} status requests failed across 5 restarts: {failures:?}",
        failures.len(),
        answered.load(Ordering::Relaxed) + failures.len()
    );
}

/// A status request a worker accepted before its drain and reads after it began is answered
/// with the supervisor's status (relayed), not failed with 503; a restart asked the same way is
/// refused with the documented 503 "draining", and asked again it works.
#[test]
fn a_draining_worker_relays_status_and_refuses_only_restarts() {
    use std::io::Write;
    let port = free_port();
    let host = start(&config(port, Some("{}"), "10s"));
    let old = host.wait_serving(port);
    let started = |path: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        // Everything but the blank line that ends the head: the request waits for it.
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n"
        )
        .unwrap();
        s
    };
    let mut status = started("/debug/admin/status");
    let mut restart = started("/debug/admin/restart");
    // Both connections are the old worker's (it is the only one).
    assert_eq!(
        json(&get(port, "/debug/admin/status"))["worker"]["pid"],
        old
    );
    host.signal(rustix::process::Signal::USR1);
    host.wait_log(&format!("pid[{old}]: server reloading"));
    let finish = |s: &mut std::net::TcpStream| {
        use std::io::Read;
        s.write_all(b"Connection: close\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        parse_response(&raw, false).unwrap()
    };
    let r = finish(&mut status);
    assert_eq!(r.status, 200, "{}", r.body_str());
    let v = json(&r);
    assert_eq!(v["worker"]["pid"], old, "answered by the draining worker");
    assert_eq!(v["worker"]["draining"], true);
    assert_ne!(
        v["supervisor"]["worker_pid"], old,
        "the supervisor's status: the new worker serves"
    );
    let r = finish(&mut restart);
    assert_eq!(r.status, 503, "{}", r.body_str());
    assert!(r.body_str().contains("draining"), "{}", r.body_str());
    let r = restart_again(port, "POST", "/debug/admin/restart", &[JSON], b"");
    assert_eq!(r.status, 200, "{}", r.body_str());
}

/// `apphost restart` exits 1 with the reason when the new worker fails at start (not only for a
/// file that cannot be used), and the old worker serves on.
#[test]
fn cli_restart_exits_1_when_the_new_worker_fails_to_start() {
    let port = free_port();
    let host = start(&config(port, None, "10s"));
    let worker = host.wait_serving(port);
    let failing = script(
        host.dir.path(),
        "failing",
        "echo 'cannot start: boom' >&2\nexit 3",
    );
    let out = cli(&host, &["restart", "--exe", failing.to_str().unwrap()]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("restart failed")
            && out.stderr.contains("exit status 3")
            && out.stderr.contains("cannot start: boom"),
        "the reason: {}",
        out.stderr
    );
    assert_eq!(pid_now(port), worker, "the old worker serves on");
    let out = cli(&host, &["status", "--json"]);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["supervisor"]["last_restart"]["ok"], false);
    assert_eq!(v["supervisor"]["worker_pid"], worker);
}

/// The start-up warning on the real binary: an admin without a token on a server that listens
/// beyond loopback. The address is 192.0.2.1 (TEST-NET-1, on no interface here), so the worker
/// logs the warning while building its routes, then cannot bind it: no socket beyond loopback is
/// ever opened, and `run` exits 1. A loopback-only server gets no warning.
#[test]
fn an_admin_without_token_beyond_loopback_is_warned_about_at_start() {
    let port = free_port();
    let warning = "have no token and the server listens beyond loopback";
    let exposed = config(port, Some("{}"), "10s").replace(
        &format!("address: \"127.0.0.1:{port}\""),
        &format!("address: [\"127.0.0.1:{port}\", \"192.0.2.1:{port}\"]"),
    );
    let mut host = start(&exposed);
    let st = host.wait_exit(T);
    assert_eq!(st.code(), Some(1), "log:\n{}", host.log());
    let log = host.log();
    let warned = log
        .lines()
        .find(|l| l.contains(warning))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(
        warned.contains("WARN") && warned.contains(&format!("http://192.0.2.1:{port}")),
        "{warned}"
    );
    assert!(log.contains("cannot listen on 192.0.2.1"), "{log}");
    // Loopback only: no warning.
    let host = start(&config(port, Some("{}"), "10s"));
    host.wait_serving(port);
    assert!(!host.log().contains(warning), "{}", host.log());
}
