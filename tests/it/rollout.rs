//! `apphost rollout` across three real hosts on 127.0.0.1, each with its own config, ports and
//! control socket; some are reached through their admin routes over HTTPS (a test CA, a bearer
//! token; the bake reads the admin's `{path}/metrics`), the others through their control
//! sockets (the bake reads the `/metrics` route their config has).
//!
//! - A good executable rolls all three: each worker pid changes, each host records the new
//!   executable, and clients hammering all three see no failed request.
//! - A broken executable (a script that exits at once) stops at the first canary: the other two
//!   are untouched (same worker pids), the exit code is 1 and the reason is printed.
//! - An executable that serves 500s (`examples/bad_release`) starts and is ready, and is caught
//!   by the bake; with `--rollback` the canary runs its old executable again.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::Value;

use crate::harness::{Host, T, low_port, place_real_binary};
use crate::support::*;

/// A client doing `GET /pid` on fresh connections in a loop until stopped, recording every
/// failure and every pid that answered, which the test can look at while it runs (to know that
/// it has reached a new worker before stopping it).
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    handle: JoinHandle<()>,
}

#[derive(Debug, Default, Clone)]
struct Seen {
    ok: usize,
    failures: Vec<String>,
    pids: BTreeSet<u32>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (s, out) = (stop.clone(), seen.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let r = try_get(port, "/pid");
                let mut seen = out.lock().unwrap();
                match r {
                    Ok(r) if r.status == 200 => match r.body_str().trim().parse::<u32>() {
                        Ok(p) => {
                            seen.ok += 1;
                            seen.pids.insert(p);
                        }
                        Err(_) => seen.failures.push(format!("bad body {:?}", r.body_str())),
                    },
                    Ok(r) => seen.failures.push(format!("status {}", r.status)),
                    Err(e) => seen.failures.push(format!("{:?}: {e}", e.kind())),
                }
            }
        });
        Load { stop, seen, handle }
    }

    /// Wait until an answer from `pid` has come.
    fn wait_for(&self, pid: u32) {
        wait_until(T, &format!("the load to reach worker {pid}"), || {
            self.seen.lock().unwrap().pids.contains(&pid).then_some(())
        });
    }

    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap();
        self.seen.lock().unwrap().clone()
    }
}

/// The admin token of the hosts reached over HTTPS.
const TOKEN: &str = "rollout-test-token";

/// One host of the fleet.
struct Instance {
    host: Host,
    /// Plain HTTP: `/pid`, `/ready`.
    port: u16,
    /// HTTPS with the admin routes, when the host is reached by URL.
    tls_port: Option<u16>,
    sock: PathBuf,
}

impl Instance {
    /// A host with `/pid` and `/ready` on a plain port; with `admin_url`, also an HTTPS port
    /// (a certificate from `pki_dir`'s CA) with token-protected admin routes.
    fn start(pki: Option<&Path>) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let port = low_port();
        let sock = dir.path().join("ctl.sock");
        let mut https = String::new();
        let mut tls_port = None;
        if let Some(ca_dir) = pki {
            let p = low_port();
            tls_port = Some(p);
            // The same CA for every host: the leaf is made here, signed by it.
            let pki = make_pki(dir.path(), u64::from(p));
            std::fs::write(ca_dir.join(format!("ca-{p}.pem")), &pki.ca_pem).unwrap();
            let token = dir.path().join("admin.token");
            std::fs::write(&token, TOKEN).unwrap();
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
            https = format!(
                "    https: {{ address: \"127.0.0.1:{p}\", cert: server.crt, key: server.key }}\n    \
                 admin: {{ path: /debug/admin, token_file: admin.token }}\n"
            );
        }
        let config = format!(
            "graceful: true\nshutdown_timeout: 10s\n\
             watch: {{ executable: false, config: false }}\n\
             control: {{ socket: \"{}\" }}\n\
             servers:\n  web:\n    address: \"127.0.0.1:{port}\"\n{https}    readiness: /ready\n    \
             routes:\n      \"/pid\": pid\n      \"/ready\": ready\n      \"/metrics\": metrics\n",
            sock.display()
        );
        let host = Host::start_in(dir, &config, BIN.as_ref());
        host.wait_serving(port);
        Instance {
            host,
            port,
            tls_port,
            sock,
        }
    }

    /// How the rollout names this host: its admin URL when it has one, else its socket.
    fn target(&self) -> String {
        match self.tls_port {
            Some(p) => format!("https://127.0.0.1:{p}/debug/admin"),
            None => self.sock.display().to_string(),
        }
    }

    /// The serving worker's pid, from `/pid`.
    fn worker(&self) -> u32 {
        get(self.port, "/pid").body_str().trim().parse().unwrap()
    }

    /// `apphost status --json`'s supervisor part, over the control socket.
    fn status(&self) -> Value {
        let out = run_cli(
            self.host.dir.path(),
            &["status", "--json", "--socket", self.sock.to_str().unwrap()],
            &[],
            T,
        );
        assert_eq!(out.code(), Some(0), "{out:?}");
        serde_json::from_str::<Value>(&out.stdout).unwrap()["supervisor"].clone()
    }
}

/// A directory for the CA files and the executables, and the CA bundle of the hosts started with
/// it (their CAs concatenated).
struct Fleet {
    dir: tempfile::TempDir,
    hosts: Vec<Instance>,
}

impl Fleet {
    /// Three hosts; those whose index is in `by_url` are reached over HTTPS.
    fn start(by_url: &[usize]) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let hosts = (0..3)
            .map(|i| Instance::start(by_url.contains(&i).then_some(dir.path())))
            .collect();
        let mut bundle = String::new();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().starts_with("ca-") {
                bundle.push_str(&std::fs::read_to_string(p).unwrap());
            }
        }
        std::fs::write(dir.path().join("cas.pem"), bundle).unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        Fleet { dir, hosts }
    }

    /// `apphost rollout --cacert … --token-file … ARGS TARGETS…`.
    fn rollout(&self, args: &[&str]) -> CmdOutput {
        let cacert = self.dir.path().join("cas.pem");
        let token = self.dir.path().join("token");
        let mut all: Vec<String> = vec![
            "rollout".into(),
            "--cacert".into(),
            cacert.display().to_string(),
            "--token-file".into(),
            token.display().to_string(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        all.extend(self.hosts.iter().map(Instance::target));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run_cli(self.dir.path(), &all, &[], T * 4)
    }

    fn workers(&self) -> Vec<u32> {
        self.hosts.iter().map(Instance::worker).collect()
    }

    /// A path in the fleet's directory.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The `--json` answer of a rollout.
fn answer(out: &CmdOutput) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: not JSON:\n{}\nstderr:\n{}", out.stdout, out.stderr))
}

#[test]
fn a_good_executable_rolls_all_three_and_no_request_fails() {
    // The canary over HTTPS with the token; the other two by control socket, together.
    let fleet = Fleet::start(&[0]);
    let v2 = fleet.path("apphost-v2");
    place_real_binary(&v2);
    let before = fleet.workers();
    let loads: Vec<Load> = fleet.hosts.iter().map(|h| Load::start(h.port)).collect();
    for (l, pid) in loads.iter().zip(&before) {
        l.wait_for(*pid);
    }

    let out = fleet.rollout(&[
        "--exe",
        v2.to_str().unwrap(),
        "--canary",
        "1",
        "--bake",
        "2s",
        "--parallel",
        "2",
        "--json",
    ]);
    // The canary was baked on the load's requests, none of which failed.
    let passed = out
        .stderr
        .lines()
        .find(|l| l.contains("bake passed: "))
        .unwrap_or_else(|| panic!("no bake:\n{}", out.stderr));
    assert!(passed.contains(", 0 answered 5xx"), "{passed}");
    assert!(!passed.contains("bake passed: 0 requests"), "{passed}");
    assert_eq!(out.code(), Some(0), "{out:?}");
    let after = fleet.workers();
    for (l, pid) in loads.iter().zip(&after) {
        l.wait_for(*pid);
    }
    let reports: Vec<Seen> = loads.into_iter().map(Load::finish).collect();
    let a = answer(&out);
    assert_eq!(a["ok"], true, "{a}");
    assert!(a["halted"].is_null(), "{a}");
    for (i, h) in fleet.hosts.iter().enumerate() {
        let t = &a["targets"][i];
        assert_eq!(t["target"], h.target());
        assert_eq!(t["outcome"], "upgraded", "{t}");
        assert_eq!(t["old_pid"], before[i], "{t}");
        let new = after[i];
        assert_ne!(new, before[i], "host {i} still runs its old worker");
        assert_eq!(t["new_pid"], new, "{t}");
        assert_eq!(t["exe"], v2.to_str().unwrap(), "{t}");
        assert_eq!(h.status()["exe"], v2.to_str().unwrap());
    }
    for (i, r) in reports.iter().enumerate() {
        assert!(
            r.failures.is_empty(),
            "host {i}: {} of {} requests failed: {:?}",
            r.failures.len(),
            r.ok + r.failures.len(),
            &r.failures[..r.failures.len().min(5)]
        );
        // Both workers answered it: the load ran across the restart.
        assert!(
            r.pids.contains(&before[i]) && r.pids.contains(&after[i]),
            "host {i}: the load saw pids {:?}",
            r.pids
        );
    }
    // The table, without --json.
    let again = fleet.rollout(&["--exe", v2.to_str().unwrap(), "--bake", "0s"]);
    assert_eq!(again.code(), Some(0), "{again:?}");
    assert_eq!(again.stdout.lines().count(), 4, "{}", again.stdout);
    assert!(again.stdout.starts_with("TARGET"), "{}", again.stdout);
    assert_eq!(
        again.stdout.matches(" upgraded").count(),
        3,
        "{}",
        again.stdout
    );
    assert_eq!(again.stdout.matches(" → ").count(), 3, "{}", again.stdout);
}

#[test]
fn a_broken_executable_stops_at_the_first_canary_and_leaves_the_rest_untouched() {
    // The canary by control socket; one of the others over HTTPS.
    let fleet = Fleet::start(&[2]);
    let broken = fleet.path("broken");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'this build is broken' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = fleet.workers();

    let out = fleet.rollout(&["--exe", broken.to_str().unwrap(), "--bake", "0s"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let halt = format!("rollout halted at {}", fleet.hosts[0].target());
    assert!(out.stderr.contains(&halt), "{}", out.stderr);
    assert!(
        out.stderr.contains("this build is broken"),
        "{}",
        out.stderr
    );
    assert_eq!(fleet.workers(), before, "a host was restarted");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(
        lines[1].contains("failed (runs what it ran before)"),
        "{}",
        lines[1]
    );
    assert!(lines[2].ends_with("untouched"), "{}", lines[2]);
    assert!(lines[3].ends_with("untouched"), "{}", lines[3]);
    for h in &fleet.hosts {
        assert_eq!(h.status()["exe"], BIN, "the old executable stays recorded");
    }
}

#[test]
fn bad_arguments_and_unreachable_targets_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| run_cli(dir.path(), args, &[], T);
    // Plain HTTP beyond loopback, without --insecure.
    let out = run(&["rollout", "http://192.0.2.1:8199/debug/admin"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("--insecure"), "{}", out.stderr);
    // The same host twice.
    let out = run(&["rollout", "/a/ctl.sock", "/b.sock", "/a//ctl.sock"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("given twice"), "{}", out.stderr);
    // --rollback needs --exe.
    let out = run(&["rollout", "--rollback", "/nowhere.sock"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    // A relative --exe with a URL target.
    let out = run(&["rollout", "--exe", "v2", "https://127.0.0.1:1/debug/admin"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("absolute"), "{}", out.stderr);

    // One live host, one socket nobody answers on: nothing is restarted.
    let live = Instance::start(None);
    let pid = live.worker();
    let dead = dir.path().join("dead.sock");
    let out = run(&[
        "rollout",
        "--bake",
        "0s",
        "--json",
        live.sock.to_str().unwrap(),
        dead.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let a = answer(&out);
    assert_eq!(a["targets"][0]["outcome"], "untouched", "{a}");
    assert_eq!(a["targets"][1]["outcome"], "untouched", "{a}");
    assert!(
        a["halted"]["reason"]
            .as_str()
            .unwrap()
            .contains("nothing was touched"),
        "{a}"
    );
    assert_eq!(a["halted"]["target"], dead.to_str().unwrap());
    assert_eq!(live.worker(), pid);
}

#[test]
fn a_host_with_full_restarts_answers_202_and_the_rollout_waits_for_its_new_generation() {
    // `graceful: false`: the admin restart answers 202 before the old worker drains; the
    // rollout polls the status until a newer generation serves. Plain HTTP on loopback, no
    // token (a loopback-only admin).
    let dir = tempfile::tempdir().unwrap();
    let port = low_port();
    let config = format!(
        "graceful: false\nshutdown_timeout: 10s\n\
         servers:\n  web:\n    address: \"127.0.0.1:{port}\"\n    admin: true\n    \
         routes:\n      \"/pid\": pid\n      \"/ready\": ready\n"
    );
    let host = Host::start_in(dir, &config, BIN.as_ref());
    host.wait_serving(port);
    let before: u32 = get(port, "/pid").body_str().trim().parse().unwrap();
    let v2 = host.dir.path().join("apphost-v2");
    place_real_binary(&v2);
    let target = format!("http://127.0.0.1:{port}/debug/admin");
    let out = run_cli(
        host.dir.path(),
        &[
            "rollout",
            "--exe",
            v2.to_str().unwrap(),
            "--bake",
            "0s",
            "--json",
            &target,
        ],
        &[],
        T * 2,
    );
    assert_eq!(out.code(), Some(0), "{out:?}\n{}", host.log());
    let a = answer(&out);
    let t = &a["targets"][0];
    assert_eq!(t["outcome"], "upgraded", "{a}");
    assert_eq!(t["mode"], "full", "{a}");
    assert_eq!(t["exe"], v2.to_str().unwrap(), "{a}");
    let now: u32 = get(port, "/pid").body_str().trim().parse().unwrap();
    assert_ne!(now, before);
    assert_eq!(t["new_pid"], now, "{a}");
}

/// An example program: `cargo test` builds the examples into `target/<profile>/examples/`, next
/// to the directory of the apphost binary.
fn example_bin(name: &str) -> PathBuf {
    let p = Path::new(BIN).parent().unwrap().join("examples").join(name);
    assert!(
        p.is_file(),
        "{} is missing: `cargo test` builds it (a filtered run needs `cargo build --examples` first)",
        p.display()
    );
    p
}

#[test]
fn a_release_that_serves_500s_is_caught_by_the_bake_and_the_canary_rolled_back() {
    // The canary by control socket (its `/metrics` route found in its config); one other host
    // over HTTPS.
    let fleet = Fleet::start(&[1]);
    let bad = example_bin("bad_release");
    let before = fleet.workers();
    let canary = &fleet.hosts[0];
    // Traffic for the bake to judge.
    let load = Load::start(canary.port);
    load.wait_for(before[0]);

    // A bake far longer than the test's patience: only an early halt ends it in time.
    let out = fleet.rollout(&[
        "--exe",
        bad.to_str().unwrap(),
        "--bake",
        "10m",
        "--rollback",
        "--json",
    ]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let a = answer(&out);
    assert_eq!(a["halted"]["target"], canary.target(), "{a}");
    let reason = a["halted"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("the bake: ") && reason.contains("answered 5xx"),
        "{reason}"
    );
    assert!(out.stderr.contains(reason), "{}", out.stderr);
    let t = &a["targets"][0];
    assert_eq!(t["outcome"], "rolled_back", "{a}");
    assert_eq!(t["exe"], bad.to_str().unwrap(), "{a}");
    assert_eq!(t["rollback"]["exe"], BIN, "{a}");
    // Back on the old executable, a new worker of it serving.
    assert_eq!(canary.status()["exe"], BIN);
    let now = canary.worker();
    assert_eq!(t["rollback"]["pid"], now, "{a}");
    assert_ne!(now, before[0]);
    assert_ne!(Some(now), t["new_pid"].as_u64().map(|p| p as u32));
    load.wait_for(now);
    let seen = load.finish();
    assert!(
        seen.failures.iter().all(|f| f == "status 500"),
        "only the bad release's answers may fail: {:?}",
        &seen.failures[..seen.failures.len().min(5)]
    );
    // The others were never asked.
    assert_eq!(&fleet.workers()[1..], &before[1..]);
    for i in [1, 2] {
        assert_eq!(a["targets"][i]["outcome"], "untouched", "{a}");
    }
}
