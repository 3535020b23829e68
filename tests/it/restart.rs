//! Restart integration tests: the real `apphost` binary, real signals, real child processes and
//! real sockets on 127.0.0.1.
//!
//! What is checked here is the supervisor's contract (see `src/supervisor/mod.rs`) and the drain
//! rules (`src/serve/mod.rs`):
//! - a graceful restart (SIGUSR1 to the supervisor or to the worker) never refuses a connection
//!   nor cuts a request in flight; the supervisor's pid never changes;
//! - a keep-alive client that reconnects when told `Connection: close` never loses a request;
//! - an HTTP/2 connection gets GOAWAY at the drain, finishes its open stream and then closes;
//! - a restart that fails (the new process exits, hangs, cannot load its config, or the
//!   executable is not a program) leaves the old worker serving, says why in the log, and the
//!   next restart after a fix succeeds;
//! - one restart at a time; listeners added and removed across a restart; HTTPS across a
//!   restart; `graceful: false` (full restart); crash respawn; shutdown signals, also in the
//!   middle of a restart; a killed supervisor takes its worker with it.
//!
//! Tests that need to change "the executable" run the supervisor from a copy of the binary in a
//! temp dir and replace that file (new file + rename, as an upgrade would), then send SIGUSR1.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::*;

const T: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// A port on 127.0.0.1 that nobody listens on, chosen *below* the kernel's ephemeral range and
/// never handed out twice in this test process.
///
/// This shadows `support::free_port` on purpose: a port from `bind(127.0.0.1:0)` is in the
/// ephemeral range, where (a) another test's `bind(0)` can be given the same number once it is
/// released, and (b) the thousands of client connections the tests here make take their local
/// ports — either one makes apphost's bind fail with EADDRINUSE, or makes a test talk to another
/// test's server. Ports outside that range and unique per process avoid both.
fn free_port() -> u16 {
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
fn config(graceful: bool, graceful_timeout: &str, ports: &[u16], sleep: &str) -> String {
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

fn graceful_config(port: u16) -> String {
    config(true, "10s", &[port], "3s")
}

// ---------------------------------------------------------------------------------------------
// Processes and logs
// ---------------------------------------------------------------------------------------------

/// The fields of `/proc/PID/stat` after the command name: `[state, ppid, pgrp, …]`.
fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The parent pid of a live process.
fn parent_of(pid: u32) -> Option<u32> {
    proc_stat(pid)?.get(1)?.parse().ok()
}

/// Live (non-zombie) processes whose process group is `pgid`. Every worker is started in its
/// own process group, so this is a worker and everything it started.
fn group_members(pgid: u32) -> Vec<u32> {
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
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Wait until `pid` is gone (exited and reaped, or a zombie).
fn wait_gone(pid: u32, timeout: Duration, what: &str) {
    wait_until(timeout, &format!("{what} (pid {pid}) to exit"), || {
        (!process_alive(pid)).then_some(())
    });
}

/// The pid of generation `n` as the supervisor logged it (`worker started generation=N pid=P`).
fn generation_pid(log: &str, n: u64) -> Option<u32> {
    let needle = format!("worker started generation={n} pid=");
    let line = log.lines().find(|l| l.contains(&needle))?;
    let rest = &line[line.find(&needle)? + needle.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn wait_generation_pid(host: &Apphost, n: u64) -> u32 {
    wait_until(T, &format!("generation {n} to be started"), || {
        generation_pid(&host.log(), n)
    })
}

/// Wait until the log contains `needle` `count` times; on a timeout, show the log.
fn wait_log_n(host: &Apphost, needle: &str, count: usize) {
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
fn lines_with(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// `GET /pid` on a fresh connection, as a number.
fn pid_at(port: u16) -> Option<u32> {
    let r = try_get(port, "/pid").ok()?;
    (r.status == 200).then_some(())?;
    r.body_str().trim().parse().ok()
}

/// Wait until `/pid` on `port` answers something other than `old`; return it.
fn wait_new_pid(host: &Apphost, port: u16, old: u32) -> u32 {
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
fn assert_supervised_by(host: &mut Apphost, worker: u32) {
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
struct Host {
    app: Apphost,
    notes: Arc<std::sync::Mutex<Vec<String>>>,
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
    fn start(config: &str) -> Host {
        Self::start_in(tempfile::tempdir().unwrap(), config, BIN.as_ref())
    }

    /// `EXE run -c DIR/server.yaml`; returns once the supervisor is ready.
    fn start_in(dir: tempfile::TempDir, config: &str, exe: &Path) -> Host {
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
        let host = Host {
            app: Apphost::spawn(cmd, dir, path),
            notes,
        };
        host.wait_notify_count("READY=1", 1);
        host
    }

    /// Wait until `count` datagrams containing `needle` have come from the supervisor.
    fn wait_notify_count(&self, needle: &str, count: usize) {
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
fn place_real_binary(to: &Path) {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(BIN, to).is_err() {
        std::fs::copy(BIN, to).unwrap();
    }
}

/// Replace the file at `path` the way an upgrade does: write a new file next to it, make it
/// executable, rename it over (the running processes keep the old file).
fn replace_with(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Put the real binary back at `path` (new file + rename).
fn restore_binary(path: &Path) {
    let tmp = path.with_extension("new");
    place_real_binary(&tmp);
    std::fs::rename(&tmp, path).unwrap();
}

/// Start `apphost run` from a copy of the binary in the temp dir; returns the host and the
/// copy's path (the executable the supervisor records and restarts).
fn start_from_copy(config: &str) -> (Host, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("apphost");
    place_real_binary(&exe);
    let host = Host::start_in(dir, config, &exe);
    (host, exe)
}

/// A script that waits `secs` and then becomes the real apphost: a new generation that is slow
/// to start but works.
fn slow_start_script(secs: u32) -> Vec<u8> {
    format!("#!/bin/sh\nsleep {secs}\nexec '{BIN}' \"$@\"\n").into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A client thread doing `GET /pid` on fresh connections in a loop until stopped, recording
/// every failure (connection refused/reset, incomplete response, status other than 200).
struct Hammer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<HammerReport>,
}

#[derive(Debug, Default)]
struct HammerReport {
    ok: usize,
    failures: Vec<String>,
    pids: BTreeSet<u32>,
}

impl Hammer {
    fn start(port: u16) -> Hammer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut rep = HammerReport::default();
            while !s.load(Ordering::Relaxed) {
                match try_get(port, "/pid") {
                    Ok(r) if r.status == 200 => match r.body_str().trim().parse::<u32>() {
                        Ok(p) => {
                            rep.ok += 1;
                            rep.pids.insert(p);
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
        Hammer { stop, handle }
    }

    fn finish(self) -> HammerReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// A raw `GET /sleep` whose response has started: the status line, headers and the first
/// `PID\n` line have arrived; the rest arrives on a thread.
struct InFlight {
    started: Instant,
    handle: JoinHandle<(std::io::Result<Resp>, Instant)>,
}

impl InFlight {
    fn start(port: u16) -> InFlight {
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
    fn finish(self) -> (Resp, Instant) {
        let (r, done) = self.handle.join().unwrap();
        (r.expect("the in-flight /sleep response is complete"), done)
    }
}

/// An HTTP/1.1 client on one keep-alive connection, reconnecting only when a response says
/// `Connection: close` (the contract the drain rules give keep-alive clients).
struct KeepAlive {
    port: u16,
    conn: Option<BufReader<TcpStream>>,
    /// Requests sent on the current connection.
    on_conn: usize,
    connects: usize,
    closes: usize,
}

impl KeepAlive {
    fn new(port: u16) -> KeepAlive {
        KeepAlive {
            port,
            conn: None,
            on_conn: 0,
            connects: 0,
            closes: 0,
        }
    }

    fn get(&mut self, path: &str) -> Result<Resp, String> {
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

    fn exchange(c: &mut BufReader<TcpStream>, port: u16, path: &str) -> Result<Resp, String> {
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

fn wait_https(port: u16, ca: &str, host: &Apphost) -> TlsResp {
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

// ---------------------------------------------------------------------------------------------
// Graceful restarts that work
// ---------------------------------------------------------------------------------------------

#[test]
fn graceful_restart_lets_an_in_flight_request_finish_on_the_old_worker() {
    let port = free_port();
    let mut host = Host::start(&graceful_config(port));
    let old = host.wait_serving(port);
    assert_supervised_by(&mut host, old);

    let sleep = InFlight::start(port);
    host.signal(Signal::USR1);
    let new = wait_new_pid(&host, port, old);
    let new_seen = Instant::now();
    assert!(
        !sleep.handle.is_finished(),
        "the new worker should serve while the old one still answers /sleep"
    );
    assert_supervised_by(&mut host, new);
    // The old worker drains, it is not killed: it is still there until its request is done.
    assert!(
        process_alive(old),
        "old worker {old} stopped before its request was done"
    );

    let started = sleep.started;
    let (resp, done) = sleep.finish();
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.body_str(),
        format!("{old}\n{old}\n"),
        "both lines come from the old worker"
    );
    assert!(done > new_seen);
    assert!(
        done - started >= Duration::from_secs(3),
        "the /sleep response ended early, after {:?}",
        done - started
    );
    assert_eq!(pid_at(port), Some(new));
    wait_gone(old, T, "the drained old worker");
    assert_supervised_by(&mut host, new);
    assert_eq!(host.log().matches("restart done (graceful)").count(), 1);
}

/// An HTTP/2 (h2c) connection with a stream in flight when the drain starts gets GOAWAY: the
/// stream finishes on the old worker with its full body, then the connection closes at once
/// rather than at `shutdown_timeout`, and the client's connection refuses new streams.
#[test]
fn graceful_restart_sends_goaway_to_http2_and_finishes_its_stream() {
    use http_body_util::BodyExt;
    let port = free_port();
    let host = Host::start(&graceful_config(port));
    let old = host.wait_serving(port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let get = |path: &str| {
        http::Request::get(format!("http://127.0.0.1:{port}{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let (mut send, conn_task) = rt.block_on(h2c_connect(port)).unwrap();
    // The /sleep stream: its headers and first line arrive, then it waits 3 s.
    let (body, started) = rt.block_on(async {
        let resp = send.send_request(get("/sleep")).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, format!("{old}\n"));
        (body, Instant::now())
    });
    host.signal(Signal::USR1);
    let new = wait_new_pid(&host, port, old);
    assert_ne!(new, old);
    let ended = rt.block_on(async {
        let rest = body.collect().await.expect("the stream was cut").to_bytes();
        assert_eq!(
            rest,
            format!("{old}\n"),
            "the second line from the old worker"
        );
        Instant::now()
    });
    assert!(
        ended - started >= Duration::from_millis(2500),
        "/sleep ended early"
    );
    // GOAWAY: the old worker closes the connection once its last stream is done. Without it the
    // connection would stay open until shutdown_timeout (5 s after the drain began).
    rt.block_on(async {
        tokio::time::timeout(Duration::from_millis(1500), conn_task)
            .await
            .expect("the HTTP/2 connection stayed open after its last stream")
            .unwrap()
            .expect("the HTTP/2 connection ended with an error");
        assert!(
            send.send_request(get("/pid")).await.is_err(),
            "a new stream was accepted after GOAWAY"
        );
    });
    wait_gone(old, T, "the drained old worker");
}

/// `restarts` graceful restarts in a row while `clients` threads do fresh-connection GETs;
/// after each restart `/pid` changes to the generation the supervisor started. Returns the
/// clients' report.
fn restarts_under_load(restarts: usize, clients: usize) -> HammerReport {
    let port = free_port();
    let mut host = Host::start(&graceful_config(port));
    let first = host.wait_serving(port);
    let hammers: Vec<Hammer> = (0..clients).map(|_| Hammer::start(port)).collect();
    let mut pids = vec![first];
    for i in 1..=restarts {
        let prev = *pids.last().unwrap();
        host.signal(Signal::USR1);
        // The supervisor takes the next restart only once it has recorded this one.
        wait_log_n(&host, "restart done (graceful)", i);
        let new = wait_new_pid(&host, port, prev);
        assert_eq!(
            Some(new),
            generation_pid(&host.log(), i as u64 + 1),
            "restart {i}: /pid answers the generation the supervisor started"
        );
        pids.push(new);
    }
    let mut rep = HammerReport::default();
    for h in hammers {
        let r = h.finish();
        rep.ok += r.ok;
        rep.failures.extend(r.failures);
        rep.pids.extend(r.pids);
    }
    assert!(
        rep.ok >= restarts,
        "the client threads made only {} requests",
        rep.ok
    );
    assert!(rep.pids.len() >= 2, "the clients saw only {:?}", rep.pids);
    let distinct: BTreeSet<u32> = pids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        restarts + 1,
        "every restart gives a new worker: {pids:?}"
    );
    assert_supervised_by(&mut host, *pids.last().unwrap());
    for &p in &pids[..restarts] {
        wait_gone(p, T, "an old worker");
    }
    assert!(
        !host.log().contains("refused"),
        "no restart was refused; log:\n{}",
        host.log()
    );
    rep
}

#[test]
fn twenty_restarts_in_a_row_keep_serving() {
    let rep = restarts_under_load(20, 1);
    assert!(
        rep.failures.is_empty(),
        "{} of {} requests failed during 20 restarts: {:?}",
        rep.failures.len(),
        rep.ok + rep.failures.len(),
        &rep.failures[..rep.failures.len().min(10)]
    );
}

/// Many restarts under load from several clients: no request fails, not even by a reset
/// (a connection accepted just as a drain starts must still be served).
#[test]
fn two_hundred_restarts_under_load_never_fail_a_request() {
    let rep = restarts_under_load(200, 3);
    assert!(
        rep.failures.is_empty(),
        "{} of {} requests failed during 200 restarts: {:?}",
        rep.failures.len(),
        rep.ok + rep.failures.len(),
        &rep.failures[..rep.failures.len().min(10)]
    );
}

/// The same, 1000 restarts (about 30 s): a soak run, `cargo test -- --ignored`.
#[test]
#[ignore = "soak: 1000 restarts, about 30 s"]
fn a_thousand_restarts_under_load_never_fail_a_request() {
    let rep = restarts_under_load(1000, 3);
    assert!(
        rep.failures.is_empty(),
        "{} of {} requests failed during 1000 restarts: {:?}",
        rep.failures.len(),
        rep.ok + rep.failures.len(),
        &rep.failures[..rep.failures.len().min(10)]
    );
}

#[test]
fn keep_alive_client_loses_no_request_across_a_restart() {
    let port = free_port();
    let mut host = Host::start(&graceful_config(port));
    let old = host.wait_serving(port);
    let mut c = KeepAlive::new(port);
    let mut failures = Vec::new();
    // (pid, whether the response said `Connection: close`), in order.
    let mut seen: Vec<(u32, bool)> = Vec::new();
    let mut signalled = false;
    let deadline = Instant::now() + T;
    loop {
        match c.get("/pid") {
            Ok(r) if r.status == 200 => {
                let close = r
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                match r.body_str().trim().parse::<u32>() {
                    Ok(p) => seen.push((p, close)),
                    Err(_) => failures.push(format!("bad body {:?}", r.body_str())),
                }
            }
            Ok(r) => failures.push(format!("status {}", r.status)),
            Err(e) => failures.push(e),
        }
        if !signalled && seen.len() == 50 {
            host.signal(Signal::USR1);
            signalled = true;
        }
        let after_new = seen.iter().skip_while(|(p, _)| *p == old).count();
        if after_new >= 50 || Instant::now() > deadline {
            break;
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed requests on a keep-alive client: {failures:?}",
        failures.len()
    );
    let new = seen.last().unwrap().0;
    assert_ne!(
        new,
        old,
        "the restart never reached the client; log:\n{}",
        host.log()
    );
    assert_supervised_by(&mut host, new);
    // The old worker told the client to reconnect: the connection was not dropped under it.
    let closes: Vec<u32> = seen.iter().filter(|(_, c)| *c).map(|(p, _)| *p).collect();
    assert!(
        !closes.is_empty() && closes.iter().all(|&p| p == old),
        "the old worker ends its keep-alive connections with `Connection: close` \
         (closes seen from {closes:?}; old {old}, new {new})"
    );
    assert_eq!(c.closes, closes.len());
    assert!(c.connects >= 2);
    // Every answer comes from the old worker, then the new one: never back.
    let first_new = seen.iter().position(|(p, _)| *p != old).unwrap();
    assert!(
        seen[first_new..].iter().all(|(p, _)| *p == new),
        "pids after the switch: {:?}",
        &seen[first_new..]
    );
}

#[test]
fn sigusr1_to_the_worker_also_restarts() {
    let port = free_port();
    let mut host = Host::start(&graceful_config(port));
    let old = host.wait_serving(port);
    signal(old, Signal::USR1);
    let new = wait_new_pid(&host, port, old);
    assert_supervised_by(&mut host, new);
    host.wait_log("restart done (graceful)");
    wait_gone(old, T, "the old worker");
    let log = host.log();
    assert!(
        lines_with(&log, "restart requested")
            .iter()
            .any(|l| l.contains(&format!("pid[{}]", host.pid())) && l.contains("signal")),
        "the supervisor logged the request from the worker's signal; log:\n{log}"
    );
}

#[test]
fn https_keeps_serving_across_a_restart() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 7);
    let cfg = format!(
        "graceful: true\nshutdown_timeout: 5s\nwatch: {{ executable: false, config: false }}\n\
         servers:\n  s1:\n    https:\n      address: \"127.0.0.1:{port}\"\n      \
         cert: server.crt\n      key: server.key\n    routes:\n      \"/pid\": pid\n"
    );
    let mut host = Host::start_in(dir, &cfg, BIN.as_ref());
    let before = wait_https(port, &pki.ca_pem, &host);
    let old: u32 = before.body.trim().parse().unwrap();
    assert_eq!(before.version, http::Version::HTTP_2);
    host.signal(Signal::USR1);
    let new = wait_until(T, "a new pid over HTTPS", || {
        let r = https_get(port, "/pid", &pki.ca_pem, true).ok()?;
        let p: u32 = r.body.trim().parse().ok()?;
        (r.status == 200 && p != old).then_some(p)
    });
    assert_supervised_by(&mut host, new);
    host.wait_log("restart done (graceful)");
    // Both protocols on the new worker, same certificate.
    for h2 in [true, false] {
        let r = https_get(port, "/pid", &pki.ca_pem, h2).expect("HTTPS after the restart");
        assert_eq!((r.status, r.body.trim()), (200, new.to_string().as_str()));
        assert_eq!(r.peer_cert, before.peer_cert);
    }
}

#[test]
fn ports_added_and_removed_across_a_restart() {
    let (kept, removed, added) = (free_port(), free_port(), free_port());
    let mut host = Host::start(&config(true, "10s", &[kept, removed], "3s"));
    let old = host.wait_serving(kept);
    assert_eq!(pid_at(removed), Some(old));
    assert!(
        TcpStream::connect(("127.0.0.1", added)).is_err(),
        "port {added} is not served yet"
    );
    let hammer = Hammer::start(kept);
    std::fs::write(&host.config, config(true, "10s", &[kept, added], "3s")).unwrap();
    host.signal(Signal::USR1);
    let new = wait_new_pid(&host, kept, old);
    host.wait_log("restart done (graceful)");
    assert_eq!(
        pid_at(added),
        Some(new),
        "the added port serves the new worker"
    );
    wait_gone(old, T, "the old worker");
    match TcpStream::connect(("127.0.0.1", removed)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!(
            "the removed port {removed} should refuse connections once the old worker is gone, \
             got {other:?}; log:\n{}",
            host.log()
        ),
    }
    let rep = hammer.finish();
    assert!(
        rep.failures.is_empty(),
        "the kept port failed {} requests: {:?}",
        rep.failures.len(),
        rep.failures
    );
    assert!(
        rep.pids.contains(&old) && rep.pids.contains(&new),
        "{:?}",
        rep.pids
    );
    assert_eq!(pid_at(kept), Some(new));
    assert_eq!(pid_at(added), Some(new));
    assert_supervised_by(&mut host, new);
    assert!(
        host.log()
            .contains(&format!("listener [127.0.0.1:{removed}] left the config"))
    );
}

// ---------------------------------------------------------------------------------------------
// Restarts that fail: the old worker keeps serving, the log says why, the next one works
// ---------------------------------------------------------------------------------------------

/// After a failed restart: the old worker still serves and is still the supervisor's child,
/// and `failure` is in the log. Then the fix is applied, and a restart must work again.
fn assert_failed_then_recovers(
    host: &mut Apphost,
    port: u16,
    old: u32,
    failure: &[&str],
    fix: impl FnOnce(),
) {
    assert_eq!(pid_at(port), Some(old), "the old worker keeps serving");
    assert_supervised_by(host, old);
    let log = host.log();
    assert!(
        failure.iter().all(|f| log.contains(f)),
        "expected {failure:?} in the log:\n{log}"
    );
    assert!(!log.contains("restart done"), "log:\n{log}");
    fix();
    host.signal(Signal::USR1);
    let new = wait_new_pid(host, port, old);
    host.wait_log("restart done (graceful)");
    assert_supervised_by(host, new);
    wait_gone(old, T, "the old worker");
}

#[test]
fn restart_to_an_executable_that_exits_1_keeps_the_old_worker() {
    let port = free_port();
    let (mut host, exe) = start_from_copy(&graceful_config(port));
    let old = host.wait_serving(port);
    replace_with(&exe, b"#!/bin/sh\necho 'new build is broken' >&2\nexit 1\n");
    host.signal(Signal::USR1);
    host.wait_log("restart failed");
    let failed = lines_with(&host.log(), "restart failed").join("\n");
    assert!(
        failed.contains("exited before it was ready") && failed.contains("exit status 1"),
        "the failure names the exit status: {failed}"
    );
    let dead = generation_pid(&host.log(), 2).unwrap();
    assert!(!process_alive(dead));
    assert_failed_then_recovers(
        &mut host,
        port,
        old,
        &[
            "new build is broken",
            "the serving generation keeps serving",
        ],
        || restore_binary(&exe),
    );
}

#[test]
fn restart_to_an_executable_that_hangs_times_out_and_kills_it() {
    let port = free_port();
    let (mut host, exe) = start_from_copy(&config(true, "2s", &[port], "3s"));
    let old = host.wait_serving(port);
    replace_with(&exe, b"#!/bin/sh\nexec sleep 30\n");
    host.signal(Signal::USR1);
    let hung = wait_generation_pid(&host, 2);
    host.wait_log("restart failed");
    let failed = lines_with(&host.log(), "restart failed").join("\n");
    assert!(
        failed.contains("not ready in time") && failed.contains("graceful_timeout (2s)"),
        "the failure gives the reason: {failed}"
    );
    wait_gone(hung, Duration::from_secs(5), "the hung new process");
    assert_failed_then_recovers(&mut host, port, old, &[], || restore_binary(&exe));
}

#[test]
fn restart_timeout_kills_everything_the_hung_process_started() {
    let (kept, removed) = (free_port(), free_port());
    let (mut host, exe) = start_from_copy(&config(true, "2s", &[kept, removed], "3s"));
    let old = host.wait_serving(kept);
    // Not `exec`: the shell waits on its child, as a wrapper script would.
    replace_with(&exe, b"#!/bin/sh\nsleep 30\n");
    host.signal(Signal::USR1);
    let hung = wait_generation_pid(&host, 2);
    wait_until(T, "the wrapper's child to start", || {
        (group_members(hung).len() >= 2).then_some(())
    });
    host.wait_log("restart failed");
    wait_gone(hung, Duration::from_secs(5), "the hung new process");
    // Fixed binary, and `removed` leaves the config: once the old worker is gone, nothing may
    // accept on it any more.
    restore_binary(&exe);
    std::fs::write(&host.config, config(true, "2s", &[kept], "3s")).unwrap();
    host.signal(Signal::USR1);
    let new = wait_new_pid(&host, kept, old);
    wait_gone(old, T, "the old worker");
    assert_supervised_by(&mut host, new);
    let mut problems = Vec::new();
    match TcpStream::connect(("127.0.0.1", removed)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => problems.push(format!(
            "port {removed} left the config but still takes connections ({other:?})"
        )),
    }
    let left: Vec<String> = group_members(hung)
        .into_iter()
        .map(|p| format!("{p}: {}", cmdline(p)))
        .collect();
    if !left.is_empty() {
        problems.push(format!(
            "processes of the timed-out generation {hung} still running: {left:?}"
        ));
    }
    for p in group_members(hung) {
        signal(p, Signal::KILL);
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn restart_with_a_broken_config_keeps_the_old_worker_and_gives_the_position() {
    let port = free_port();
    let good = graceful_config(port);
    let mut host = Host::start(&good);
    let old = host.wait_serving(port);
    let broken = format!(
        "graceful: true\nservers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \
         \"/pid\": pid: x\n"
    );
    std::fs::write(&host.config, broken).unwrap();
    host.signal(Signal::USR1);
    host.wait_log("restart failed");
    let failed = lines_with(&host.log(), "restart failed").join("\n");
    let at = format!("{}:6:18", host.config.display());
    assert!(
        failed.contains(&at) && failed.contains("invalid YAML"),
        "the failure gives file:line:col ({at}): {failed}\nlog:\n{}",
        host.log()
    );
    let config = host.config.clone();
    assert_failed_then_recovers(&mut host, port, old, &[], || {
        std::fs::write(&config, good).unwrap()
    });
}

#[test]
fn restart_to_a_file_that_is_not_a_program_is_refused() {
    let port = free_port();
    let (mut host, exe) = start_from_copy(&graceful_config(port));
    let old = host.wait_serving(port);
    replace_with(
        &exe,
        b"this is not a program, just text with the exec bit\n",
    );
    host.signal(Signal::USR1);
    host.wait_log("restart refused");
    let refused = lines_with(&host.log(), "restart refused").join("\n");
    assert!(
        refused.contains(&exe.display().to_string()) && refused.contains("no ELF header"),
        "the refusal names the file and the reason: {refused}"
    );
    assert_eq!(
        generation_pid(&host.log(), 2),
        None,
        "nothing was started from it"
    );
    assert_failed_then_recovers(&mut host, port, old, &[], || restore_binary(&exe));
}

#[test]
fn restart_during_a_restart_is_refused() {
    let port = free_port();
    let (mut host, exe) = start_from_copy(&graceful_config(port));
    let old = host.wait_serving(port);
    replace_with(&exe, &slow_start_script(2));
    host.signal(Signal::USR1);
    // Sent once the first one is under way (two signals at once would merge into one).
    wait_generation_pid(&host, 2);
    host.signal(Signal::USR1);
    host.wait_log("restart refused");
    let refused = lines_with(&host.log(), "restart refused").join("\n");
    assert!(
        refused.contains("a restart is already under way") && refused.contains("generation 2"),
        "{refused}"
    );
    let new = wait_new_pid(&host, port, old);
    host.wait_log("restart done (graceful)");
    assert_eq!(Some(new), generation_pid(&host.log(), 2));
    assert_eq!(generation_pid(&host.log(), 3), None, "log:\n{}", host.log());
    assert_eq!(host.log().matches("restart done").count(), 1);
    wait_gone(old, T, "the old worker");
    assert_eq!(pid_at(port), Some(new));
    assert_supervised_by(&mut host, new);
}

// ---------------------------------------------------------------------------------------------
// Shutdown, crashes, full restarts
// ---------------------------------------------------------------------------------------------

#[test]
fn sigterm_during_a_restart_exits_0_and_leaves_no_worker() {
    let port = free_port();
    let (mut host, exe) = start_from_copy(&graceful_config(port));
    let old = host.wait_serving(port);
    replace_with(&exe, &slow_start_script(2));
    host.signal(Signal::USR1);
    let starting = wait_generation_pid(&host, 2);
    host.signal(Signal::TERM);
    let t0 = Instant::now();
    let st = host.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit status {st:?}; log:\n{}", host.log());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert!(!host.log().contains("restart done"), "log:\n{}", host.log());
    assert!(
        !process_alive(old),
        "the serving worker {old} is left running"
    );
    assert!(
        !process_alive(starting),
        "the starting worker {starting} is left running"
    );
    // Nothing of either generation becomes an apphost later (the slow script's `exec`).
    wait_until(
        Duration::from_secs(5),
        "the starting generation's processes to end",
        || group_members(starting).is_empty().then_some(()),
    );
    assert!(group_members(old).is_empty());
}

#[test]
fn killed_worker_is_replaced_on_the_same_port() {
    let port = free_port();
    let mut host = Host::start(&graceful_config(port));
    let old = host.wait_serving(port);
    signal(old, Signal::KILL);
    let new = wait_new_pid(&host, port, old);
    assert_supervised_by(&mut host, new);
    host.wait_log("worker died unexpectedly");
    let died = lines_with(&host.log(), "worker died unexpectedly").join("\n");
    assert!(died.contains("KILL"), "the log says how it died: {died}");
    // The replacement is a working generation: it restarts like any other.
    host.signal(Signal::USR1);
    let newer = wait_new_pid(&host, port, new);
    assert_supervised_by(&mut host, newer);
}

#[test]
fn killed_supervisor_takes_its_worker_with_it() {
    let port = free_port();
    let mut host = Host::start(&graceful_config(port));
    let worker = host.wait_serving(port);
    host.signal(Signal::KILL);
    host.wait_exit(Duration::from_secs(5));
    let deadline = Instant::now() + T;
    while process_alive(worker) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let alive = process_alive(worker);
    if alive {
        signal(worker, Signal::KILL);
    }
    assert!(
        !alive,
        "worker {worker} still running {T:?} after its supervisor was killed; log:\n{}",
        host.log()
    );
}

#[test]
fn full_restart_finishes_the_request_then_switches_without_refusing() {
    let port = free_port();
    let mut host = Host::start(&config(false, "10s", &[port], "2s"));
    let old = host.wait_serving(port);
    let sleep = InFlight::start(port);
    let started = sleep.started;
    host.signal(Signal::USR1);
    host.wait_log("restart requested");
    // Connections made while the old worker drains and the new one starts wait; none is refused.
    let hammer = Hammer::start(port);
    let new = wait_new_pid(&host, port, old);
    let new_seen = Instant::now();
    host.wait_log("restart done (full)");
    let (resp, done) = sleep.finish();
    let rep = hammer.finish();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), format!("{old}\n{old}\n"));
    assert!(done - started >= Duration::from_secs(2));
    // Full restart: the new worker only starts once the old one has finished its request.
    assert!(
        new_seen - started >= Duration::from_secs(2),
        "a new worker served after {:?}, before the old one had drained",
        new_seen - started
    );
    assert!(
        rep.failures.is_empty(),
        "{} requests failed during a full restart: {:?}",
        rep.failures.len(),
        rep.failures
    );
    assert!(rep.pids.contains(&new), "{:?}", rep.pids);
    assert!(!process_alive(old));
    assert_supervised_by(&mut host, new);
    let log = host.log();
    let drained = log
        .find("drained; starting the new worker")
        .expect("full restart in the log");
    let started2 = log.find("worker started generation=2").unwrap();
    assert!(
        drained < started2,
        "old drained before the new one started; log:\n{log}"
    );
}

fn stop_signal_exits_0(sig: Signal, name: &str) {
    let port = free_port();
    let mut host = Host::start(&graceful_config(port));
    let worker = host.wait_serving(port);
    host.signal(sig);
    let st = host.wait_exit(Duration::from_secs(10));
    assert!(
        st.success(),
        "{name}: exit status {st:?}; log:\n{}",
        host.log()
    );
    let log = host.log();
    assert!(log.contains(&format!("{name} received")), "log:\n{log}");
    assert!(log.contains("all servers shutdown"), "log:\n{log}");
    assert!(!process_alive(worker), "worker {worker} left running");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn sighup_shuts_down_with_exit_0() {
    stop_signal_exits_0(Signal::HUP, "SIGHUP");
}

#[test]
fn sigquit_shuts_down_with_exit_0() {
    stop_signal_exits_0(Signal::QUIT, "SIGQUIT");
}
