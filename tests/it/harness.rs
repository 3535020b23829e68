//! Helpers for the restart and lifecycle tests (`restart.rs`, `drain.rs`, `recovery.rs`): ports
//! below the ephemeral range, configs, `/proc` probes, a host whose supervisor reports readiness
//! to a `NOTIFY_SOCKET` of ours, a replaceable copy of the binary, and clients that record every
//! failure (a fresh-connection loop, a request in flight, a keep-alive connection).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::*;

/// The default wait for a condition.
pub(crate) const T: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// A port on 127.0.0.1 that nobody listens on, chosen *below* the kernel's ephemeral range and
/// never handed out twice in this test process.
///
/// Unlike `support::free_port`: a port from `bind(127.0.0.1:0)` is in the ephemeral range,
/// where (a) another test's `bind(0)` can be given the same number once it is released, and (b) the thousands of client connections the tests here make take their local
/// ports — either one makes apphost's bind fail with EADDRINUSE, or makes a test talk to another
/// test's server. Ports outside that range and unique per process avoid both.
pub(crate) fn low_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u16, ephemeral_low.saturating_sub(1));
    if hi <= lo + 1000 {
        return crate::support::free_port();
    }
    let mut used = HANDED_OUT.lock().unwrap();
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(used.len() as u64);
        let port = lo + (h.finish() % u64::from(hi - lo)) as u16;
        if !used.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            used.insert(port);
            return port;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------

/// A config with one server `s1` listening on every port in `ports` (plain HTTP, 127.0.0.1),
/// with `/pid` and `/sleep` (`sleep` long). The file watcher is off: restarts happen only when
/// a test asks for one.
pub(crate) fn config(graceful: bool, graceful_timeout: &str, ports: &[u16], sleep: &str) -> String {
    let addrs: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        "graceful: {graceful}\n\
         graceful_timeout: {graceful_timeout}\n\
         shutdown_timeout: 5s\n\
         watch: {{ executable: false, config: false }}\n\
         servers:\n  \
           s1:\n    \
             address: [{}]\n    \
             routes:\n      \
               \"/pid\": pid\n      \
               \"/sleep\": {{ handler: sleep, duration: {sleep} }}\n",
        addrs.join(", ")
    )
}

pub(crate) fn graceful_config(port: u16) -> String {
    config(true, "10s", &[port], "3s")
}

// ---------------------------------------------------------------------------------------------
// Processes and logs
// ---------------------------------------------------------------------------------------------

/// The fields of `/proc/PID/stat` after the command name: `[state, ppid, pgrp, …]`.
pub(crate) fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The parent pid of a live process.
pub(crate) fn parent_of(pid: u32) -> Option<u32> {
    proc_stat(pid)?.get(1)?.parse().ok()
}

/// Live (non-zombie) processes whose process group is `pgid`. Every worker is started in its
/// own process group, so this is a worker and everything it started.
pub(crate) fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(f) = proc_stat(pid)
            && f.first().map(String::as_str) != Some("Z")
            && f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
        {
            out.push(pid);
        }
    }
    out
}

/// The command line of a process, for messages.
pub(crate) fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Wait until `pid` is gone (exited and reaped, or a zombie).
pub(crate) fn wait_gone(pid: u32, timeout: Duration, what: &str) {
    wait_until(timeout, &format!("{what} (pid {pid}) to exit"), || {
        (!process_alive(pid)).then_some(())
    });
}

/// The pid of generation `n` as the supervisor logged it (`worker started generation=N pid=P`).
pub(crate) fn generation_pid(log: &str, n: u64) -> Option<u32> {
    let needle = format!("worker started generation={n} pid=");
    let line = log.lines().find(|l| l.contains(&needle))?;
    let rest = &line[line.find(&needle)? + needle.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

pub(crate) fn wait_generation_pid(host: &Apphost, n: u64) -> u32 {
    wait_until(T, &format!("generation {n} to be started"), || {
        generation_pid(&host.log(), n)
    })
}

/// Wait until the log contains `needle` `count` times; on a timeout, show the log.
pub(crate) fn wait_log_n(host: &Apphost, needle: &str, count: usize) {
    let deadline = Instant::now() + T;
    while host.log().matches(needle).count() < count {
        if Instant::now() > deadline {
            panic!(
                "timed out after {T:?} waiting for {count}× {needle:?}; log:\n{}",
                host.log()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The log lines containing `needle`.
pub(crate) fn lines_with(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// `GET /pid` on a fresh connection, as a number.
pub(crate) fn pid_at(port: u16) -> Option<u32> {
    let r = try_get(port, "/pid").ok()?;
    (r.status == 200).then_some(())?;
    r.body_str().trim().parse().ok()
}

/// Wait until `/pid` on `port` answers something other than `old`; return it.
pub(crate) fn wait_new_pid(host: &Apphost, port: u16, old: u32) -> u32 {
    let deadline = Instant::now() + T;
    loop {
        if let Some(p) = pid_at(port)
            && p != old
        {
            return p;
        }
        if Instant::now() > deadline {
            panic!(
                "/pid on port {port} still {old} after {T:?}; log:\n{}",
                host.log()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The supervisor is still running, and `worker` is its child.
pub(crate) fn assert_supervised_by(host: &mut Apphost, worker: u32) {
    assert!(
        host.child.try_wait().unwrap().is_none(),
        "the supervisor exited; log:\n{}",
        host.log()
    );
    assert_ne!(worker, host.pid(), "the worker is not the supervisor");
    assert_eq!(
        parent_of(worker),
        Some(host.pid()),
        "worker {worker} is a child of supervisor {}",
        host.pid()
    );
}

// ---------------------------------------------------------------------------------------------
// Starting a host and knowing when the supervisor counts it as ready
// ---------------------------------------------------------------------------------------------

/// A running host whose supervisor reports to a `NOTIFY_SOCKET` of ours.
///
/// `/pid` answering is not enough to know that the supervisor is done starting: a worker accepts
/// before it reports ready, so a SIGUSR1 sent at once can be refused ("generation 1 is starting")
/// and a SIGKILL at once counts as a failed first start. The supervisor's `READY=1` is sent when
/// it has taken the worker's ready report.
///
/// The datagrams are read by a thread as they come: the supervisor sends them with a blocking
/// send from its event loop, so a reader that lets 10 of them queue up (`max_dgram_qlen`) stops
/// the supervisor dead.
pub(crate) struct Host {
    pub(crate) app: Apphost,
    pub(crate) notes: Arc<std::sync::Mutex<Vec<String>>>,
}

impl std::ops::Deref for Host {
    type Target = Apphost;
    fn deref(&self) -> &Apphost {
        &self.app
    }
}

impl std::ops::DerefMut for Host {
    fn deref_mut(&mut self) -> &mut Apphost {
        &mut self.app
    }
}

impl Host {
    /// `BIN run -c DIR/server.yaml` in a new temp dir; returns once the supervisor is ready.
    pub(crate) fn start(config: &str) -> Host {
        Self::start_in(tempfile::tempdir().unwrap(), config, BIN.as_ref())
    }

    /// `EXE run -c DIR/server.yaml`; returns once the supervisor is ready.
    pub(crate) fn start_in(dir: tempfile::TempDir, config: &str, exe: &Path) -> Host {
        Self::start_in_with_env(dir, config, exe, &[])
    }

    /// The same, with `env` added to the supervisor's environment.
    pub(crate) fn start_in_with_env(
        dir: tempfile::TempDir,
        config: &str,
        exe: &Path,
        env: &[(&str, &str)],
    ) -> Host {
        let path = dir.path().join("server.yaml");
        std::fs::write(&path, config).unwrap();
        let sock_path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
        let notes = Arc::new(std::sync::Mutex::new(Vec::new()));
        // The reader holds the list weakly and wakes up every 200 ms: it ends soon after the
        // `Host` is dropped.
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let weak = Arc::downgrade(&notes);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let got = sock.recv(&mut buf);
                let Some(notes) = weak.upgrade() else { return };
                if let Ok(n) = got {
                    notes
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("run")
            .arg("-c")
            .arg(&path)
            .current_dir(dir.path())
            .env("NOTIFY_SOCKET", &sock_path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let host = Host {
            app: Apphost::spawn(cmd, dir, path),
            notes,
        };
        host.wait_notify_count("READY=1", 1);
        host
    }

    /// Wait until `count` datagrams containing `needle` have come from the supervisor.
    pub(crate) fn wait_notify_count(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + T;
        loop {
            let notes = self.notes.lock().unwrap().clone();
            if notes.iter().filter(|m| m.contains(needle)).count() >= count {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {count}× {needle:?} on NOTIFY_SOCKET (got {notes:?}); \
                     log:\n{}",
                    self.app.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A copy of the binary that tests can replace
// ---------------------------------------------------------------------------------------------

/// Put the real binary at `to` (a hard link when possible: a new directory entry for the same
/// file, which is never written to; a copy otherwise).
pub(crate) fn place_real_binary(to: &Path) {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(BIN, to).is_err() {
        std::fs::copy(BIN, to).unwrap();
    }
}

/// Replace the file at `path` the way an upgrade does: write a new file next to it, make it
/// executable, rename it over (the running processes keep the old file).
pub(crate) fn replace_with(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Put the real binary back at `path` (new file + rename).
pub(crate) fn restore_binary(path: &Path) {
    let tmp = path.with_extension("new");
    place_real_binary(&tmp);
    std::fs::rename(&tmp, path).unwrap();
}

/// Start `apphost run` from a copy of the binary in the temp dir; returns the host and the
/// copy's path (the executable the supervisor records and restarts).
pub(crate) fn start_from_copy(config: &str) -> (Host, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("apphost");
    place_real_binary(&exe);
    let host = Host::start_in(dir, config, &exe);
    (host, exe)
}

/// A script that waits `secs` and then becomes the real apphost: a new generation that is slow
/// to start but works.
pub(crate) fn slow_start_script(secs: u32) -> Vec<u8> {
    format!("#!/bin/sh\nsleep {secs}\nexec '{BIN}' \"$@\"\n").into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A client thread doing `GET /pid` on fresh connections in a loop until stopped, recording
/// every failure (connection refused/reset, incomplete response, status other than 200).
/// `start` returns once the first answer came back (or after `T`), so a restart a test triggers
/// next cannot race the client's first request: the old worker has served it.
pub(crate) struct Hammer {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) handle: JoinHandle<HammerReport>,
}

#[derive(Debug, Default)]
pub(crate) struct HammerReport {
    pub(crate) ok: usize,
    pub(crate) failures: Vec<String>,
    pub(crate) pids: BTreeSet<u32>,
}

impl Hammer {
    pub(crate) fn start(port: u16) -> Hammer {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicBool::new(false));
        let (s, a) = (stop.clone(), answered.clone());
        let handle = std::thread::spawn(move || {
            let mut rep = HammerReport::default();
            while !s.load(Ordering::Relaxed) {
                match try_get(port, "/pid") {
                    Ok(r) if r.status == 200 => match r.body_str().trim().parse::<u32>() {
                        Ok(p) => {
                            rep.ok += 1;
                            rep.pids.insert(p);
                            a.store(true, Ordering::Relaxed);
                        }
                        Err(_) => rep
                            .failures
                            .push(format!("bad /pid body {:?}", r.body_str())),
                    },
                    Ok(r) => rep.failures.push(format!("status {}", r.status)),
                    Err(e) => rep.failures.push(format!("{:?}: {e}", e.kind())),
                }
            }
            rep
        });
        let deadline = Instant::now() + T;
        while !answered.load(Ordering::Relaxed)
            && !handle.is_finished()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        Hammer { stop, handle }
    }

    pub(crate) fn finish(self) -> HammerReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// A raw `GET /sleep` whose response has started: the status line, headers and the first
/// `PID\n` line have arrived; the rest arrives on a thread.
pub(crate) struct InFlight {
    pub(crate) started: Instant,
    pub(crate) handle: JoinHandle<(std::io::Result<Resp>, Instant)>,
}

impl InFlight {
    pub(crate) fn start(port: u16) -> InFlight {
        let started = Instant::now();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET /sleep HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        // Until the first body line is in: with chunked framing it ends "PID\n\r\n".
        loop {
            let n = s.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "connection closed before the /sleep response started"
            );
            raw.extend_from_slice(&buf[..n]);
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let body = &raw[end + 4..];
                let chunked = head.contains("transfer-encoding: chunked");
                if (chunked && body.windows(3).any(|w| w == b"\n\r\n"))
                    || (!chunked && body.contains(&b'\n'))
                {
                    break;
                }
            }
        }
        let handle = std::thread::spawn(move || {
            let r = s.read_to_end(&mut raw).map(|_| ());
            let done = Instant::now();
            (r.and_then(|()| parse_response(&raw, false)), done)
        });
        InFlight { started, handle }
    }

    /// The whole response and when it finished.
    pub(crate) fn finish(self) -> (Resp, Instant) {
        let (r, done) = self.handle.join().unwrap();
        (r.expect("the in-flight /sleep response is complete"), done)
    }
}

/// An HTTP/1.1 client on one keep-alive connection, reconnecting only when a response says
/// `Connection: close` (the contract the drain rules give keep-alive clients).
pub(crate) struct KeepAlive {
    pub(crate) port: u16,
    pub(crate) conn: Option<BufReader<TcpStream>>,
    /// Requests sent on the current connection.
    pub(crate) on_conn: usize,
    pub(crate) connects: usize,
    pub(crate) closes: usize,
}

impl KeepAlive {
    pub(crate) fn new(port: u16) -> KeepAlive {
        KeepAlive {
            port,
            conn: None,
            on_conn: 0,
            connects: 0,
            closes: 0,
        }
    }

    pub(crate) fn get(&mut self, path: &str) -> Result<Resp, String> {
        if self.conn.is_none() {
            let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.set_nodelay(true).unwrap();
            self.conn = Some(BufReader::new(s));
            self.on_conn = 0;
            self.connects += 1;
        }
        let n = self.on_conn;
        self.on_conn += 1;
        let r = Self::exchange(self.conn.as_mut().unwrap(), self.port, path)
            .map_err(|e| format!("request #{} on connection #{}: {e}", n + 1, self.connects));
        match &r {
            Ok(resp)
                if resp
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close")) =>
            {
                self.closes += 1;
                self.conn = None;
            }
            Ok(_) => {}
            Err(_) => self.conn = None,
        }
        r
    }

    pub(crate) fn exchange(
        c: &mut BufReader<TcpStream>,
        port: u16,
        path: &str,
    ) -> Result<Resp, String> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        c.get_mut()
            .write_all(req.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        let read_line = |c: &mut BufReader<TcpStream>, line: &mut String| -> Result<(), String> {
            line.clear();
            match c.read_line(line) {
                Ok(0) => Err("connection closed by the server before a full response".into()),
                Ok(_) => Ok(()),
                Err(e) => Err(format!("read: {e}")),
            }
        };
        read_line(c, &mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            read_line(c, &mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if let Some(len) = find("content-length") {
            let n: usize = len.parse().map_err(|_| format!("content-length {len:?}"))?;
            body.resize(n, 0);
            c.read_exact(&mut body)
                .map_err(|e| format!("body truncated: {e}"))?;
        } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                read_line(c, &mut line)?;
                let size = usize::from_str_radix(line.trim(), 16)
                    .map_err(|_| format!("chunk size {line:?}"))?;
                let mut chunk = vec![0; size + 2];
                c.read_exact(&mut chunk)
                    .map_err(|e| format!("chunk truncated: {e}"))?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            return Err("a keep-alive response without framing".into());
        }
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

pub(crate) fn wait_https(port: u16, ca: &str, host: &Apphost) -> TlsResp {
    let deadline = Instant::now() + T;
    loop {
        match https_get(port, "/pid", ca, true) {
            Ok(r) if r.status == 200 => return r,
            other => {
                if Instant::now() > deadline {
                    panic!("HTTPS never served: {other:?}; log:\n{}", host.log());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
