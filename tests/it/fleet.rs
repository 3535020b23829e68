//! A fleet behind a real HAProxy: two apphost instances on 127.0.0.1, HAProxy health-checking
//! their `ready` route with `retries 0` (as kube-proxy, it never resends a failed request), and
//! both instances replaced one at a time under load: first stopped (SIGTERM) and started again
//! (a new process on the same port), then restarted in place (`apphost restart`). Two clients
//! run through it all, one on fresh connections and one on a keep-alive connection, and not one
//! request may fail.
//!
//! What makes it work is `shutdown_delay`: a stopped instance keeps accepting with `ready`
//! answering 503 until HAProxy has taken it out (one failed check, every 300 ms), and only then
//! drains. Without it (`shutdown_delay: 0`) HAProxy sends to a port that no longer accepts.
//!
//! Needs `haproxy` (Debian package; `.ci/run` installs it): without it the test prints why and
//! passes, except in CI (`CI=true`).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use rustix::process::Signal;

use crate::harness::*;
use crate::support::*;

/// Keeps one connection alive and sends `GET /pid` on it in a loop, reconnecting only when a
/// response says `Connection: close`; every failure is recorded.
pub(crate) struct KeepAliveHammer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<HammerReport>,
}

impl KeepAliveHammer {
    pub(crate) fn start(port: u16) -> KeepAliveHammer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut rep = HammerReport::default();
            let mut ka = KeepAlive::new(port);
            while !s.load(Ordering::Relaxed) {
                match ka.get("/pid") {
                    Ok(r) if r.status == 200 => {
                        rep.ok += 1;
                        if let Ok(p) = r.body_str().trim().parse() {
                            rep.pids.insert(p);
                        }
                    }
                    Ok(r) => rep.failures.push(format!("status {}", r.status)),
                    Err(e) => rep.failures.push(e.to_string()),
                }
            }
            rep
        });
        KeepAliveHammer { stop, handle }
    }

    pub(crate) fn finish(self) -> HammerReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// Whether `haproxy` can be run; without it: false and why is printed, or a panic in CI.
fn haproxy_here() -> bool {
    match Command::new("haproxy").arg("-v").output() {
        Ok(o) if o.status.success() => true,
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true and no haproxy: {why}");
            }
            eprintln!("SKIPPED: no haproxy here ({why}); apt-get install haproxy");
            false
        }
    }
}

/// An instance's config: `/pid` and `/ready` on `port`, its control socket in `dir`.
fn instance_config(port: u16, dir: &Path) -> String {
    format!(
        "graceful: true\nshutdown_delay: 1s\nshutdown_timeout: 10s\n\
         watch: {{ executable: false, config: false }}\n\
         control: {{ socket: \"{}\" }}\n\
         servers:\n  web:\n    address: \"127.0.0.1:{port}\"\n    readiness: /ready\n    routes:\n      \
         \"/pid\": pid\n      \"/ready\": ready\n",
        dir.join("ctl.sock").display()
    )
}

fn start_instance(port: u16) -> Apphost {
    let dir = tempfile::tempdir().unwrap();
    let text = instance_config(port, dir.path());
    let host = Apphost::start_in(dir, &text, "server.yaml", BIN.as_ref());
    host.wait_serving(port);
    host
}

/// HAProxy in front of `backends`, checking `GET /ready` every 300 ms (down after one failure,
/// up after one success), `retries 0`; stopped when dropped.
struct Haproxy {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Haproxy {
    fn start(backends: &[u16]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let port = low_port();
        let mut cfg = format!(
            "global\n  stats socket {sock} mode 600 level admin\n  maxconn 4000\n\
             defaults\n  mode http\n  retries 0\n  timeout connect 2s\n  timeout client 30s\n  \
             timeout server 30s\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend apphost\n\
             backend apphost\n  balance roundrobin\n  option httpchk GET /ready\n  \
             http-check expect status 200\n  default-server inter 300ms fall 1 rise 1\n",
            sock = dir.path().join("admin.sock").display()
        );
        for (i, p) in backends.iter().enumerate() {
            cfg.push_str(&format!("  server s{i} 127.0.0.1:{p} check\n"));
        }
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start haproxy");
        let h = Haproxy { child, dir, port };
        for i in 0..backends.len() {
            h.wait_state(i, "UP");
        }
        h
    }

    /// `show stat` over the admin socket: the status column of server `s{i}`.
    fn state(&self, i: usize) -> Option<String> {
        let mut s =
            std::os::unix::net::UnixStream::connect(self.dir.path().join("admin.sock")).ok()?;
        s.write_all(b"show stat\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let name = format!("s{i}");
        out.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.len() > 17 && f[0] == "apphost" && f[1] == name)
            .map(|f| f[17].to_string())
    }

    fn wait_state(&self, i: usize, want: &str) {
        wait_until(T, &format!("HAProxy to see server s{i} {want}"), || {
            self.state(i).filter(|s| s.starts_with(want))
        });
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_rolling_replacement_behind_haproxy_fails_no_request() {
    if !haproxy_here() {
        return;
    }
    let ports = [low_port(), low_port()];
    let mut instances: Vec<Option<Apphost>> =
        ports.iter().map(|p| Some(start_instance(*p))).collect();
    let lb = Haproxy::start(&ports);
    let fresh = Hammer::start(lb.port);
    let kept = KeepAliveHammer::start(lb.port);

    // Stop and start, one at a time: HAProxy must see each one go down (its `ready` is 503
    // while it still serves), and the new process come up, before the next is touched.
    for (i, port) in ports.iter().enumerate() {
        let mut old = instances[i].take().unwrap();
        old.signal(Signal::TERM);
        lb.wait_state(i, "DOWN");
        assert_eq!(old.wait_exit(T).code(), Some(0), "log:\n{}", old.log());
        instances[i] = Some(start_instance(*port));
        lb.wait_state(i, "UP");
    }
    // In place: `apphost restart`, one at a time (the port never stops accepting).
    for (i, host) in instances.iter().flatten().enumerate() {
        let sock = host.dir.path().join("ctl.sock");
        let out = run_cli(
            host.dir.path(),
            &["restart", "--socket", sock.to_str().unwrap()],
            &[],
            T,
        );
        assert_eq!(out.code(), Some(0), "{out:?}");
        lb.wait_state(i, "UP");
    }

    let fresh = fresh.finish();
    let kept = kept.finish();
    let total = fresh.ok + kept.ok;
    eprintln!(
        "fleet: {} new-connection and {} keep-alive requests, {} pids seen",
        fresh.ok,
        kept.ok,
        fresh.pids.len()
    );
    for (what, rep) in [("new-connection", &fresh), ("keep-alive", &kept)] {
        assert!(
            rep.failures.is_empty(),
            "{what}: {} of {} failed: {:?}",
            rep.failures.len(),
            rep.ok + rep.failures.len(),
            &rep.failures[..rep.failures.len().min(10)]
        );
    }
    assert!(total > 200, "only {total} requests went through");
    // Two instances, each stopped and started once and restarted once: six workers served.
    assert!(fresh.pids.len() >= 5, "pids seen: {:?}", fresh.pids);
}
