//! The control socket: a Unix stream socket owned by the supervisor, through which
//! `apphost status`, `apphost restart` and `apphost shutdown` reach a running host without any
//! HTTP route.
//!
//! # Where it is
//! [`socket_path`], used by both sides: `control.socket` from the config when set; otherwise
//! `$XDG_RUNTIME_DIR/apphost/<hash>.sock` when `XDG_RUNTIME_DIR` is set (and absolute), else
//! `/tmp/apphost-<uid>/<hash>.sock`, where `<hash>` is a 64-bit FNV-1a hash (16 hex digits) of
//! the canonical config file path, or of the canonical working directory for the embedded
//! default. So the CLI finds the host given the same `-c FILE` (or, for the embedded default,
//! from the same directory and with the same `XDG_RUNTIME_DIR`); `--socket PATH` names the socket
//! directly. The derived directory is created with mode 0700 (an existing one must be ours and is
//! tightened to 0700); the socket is created with mode 0600, and connections from another user
//! (other than root) are refused.
//!
//! At start the supervisor removes a socket file left behind by a host that died, but only if
//! nothing answers on it: when another live host answers, this one runs without a control
//! socket (and says so). The file is removed when the supervisor exits.
//!
//! # Protocol
//! One request per connection: the client writes one JSON line, a [`crate::channel::Op`]
//! (`{"op":"status"}`, `{"op":"shutdown"}`, `{"op":"restart","exe":"/path"}`; `via` defaults to
//! `cli`), and reads one JSON line back, the [`OpResult`] in serde's `Result` form:
//! `{"Ok":{"kind":"restarted","generation":2,"pid":4242,…}}` or
//! `{"Err":{"error":"busy","reason":"…"}}` (a line that is not an `Op` gets
//! `{"Err":{"error":"bad_request","reason":"…"}}`). The supervisor turns each request into an
//! operation of its one state machine, exactly like a signal or the admin page.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::channel::Op;
use crate::config::{Config, ConfigSource};
use crate::ops::{OpError, OpReply, OpResult, Status};
use crate::supervisor::{Event, Reply};

/// Longest request line accepted.
const MAX_LINE: u64 = 64 * 1024;
/// How long a client may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// At exit, how long answers still being written may take.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Errors of the control socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens at the path (no file, or a stale one).
    #[error("no apphost is running with the control socket {path} ({source})")]
    NotRunning {
        /// The socket path.
        path: PathBuf,
        /// What connect said.
        source: std::io::Error,
    },
    /// Another live host already answers on the path.
    #[error("{0} is in use by another running apphost")]
    InUse(PathBuf),
    /// The path or its directory cannot be used.
    #[error("{path}: {reason}")]
    Unusable {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading or writing the socket failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The answer was not an `OpResult` line.
    #[error("unexpected answer from {path}: {answer:?}")]
    BadAnswer {
        /// The socket path.
        path: PathBuf,
        /// What came back.
        answer: String,
    },
}

/// 64-bit FNV-1a: small, and stable across builds and versions (unlike `DefaultHasher`), which
/// matters since the CLI and the supervisor may be different binaries after an upgrade.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The directory derived socket paths live in (see the module doc).
fn derived_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d).join("apphost"),
        _ => PathBuf::from(format!("/tmp/apphost-{}", effective_uid())),
    }
}

/// The control socket path of the host running `config` (see the module doc).
pub fn socket_path(config: &Config) -> PathBuf {
    if let Some(p) = &config.control.socket {
        return p.clone();
    }
    let key = match &config.source {
        ConfigSource::File(p) => std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()),
        ConfigSource::Embedded => std::env::current_dir()
            .and_then(std::fs::canonicalize)
            .unwrap_or_else(|_| PathBuf::from("/")),
    };
    derived_dir().join(format!("{:016x}.sock", fnv1a64(key.as_os_str().as_bytes())))
}

fn unusable(path: &Path, reason: impl Into<String>) -> ControlError {
    ControlError::Unusable {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Make sure the socket's directory exists. A derived directory must be a real directory owned
/// by us with no access for others (tightened to 0700 if needed); a configured one is only
/// created when missing.
fn prepare_dir(dir: &Path, derived: bool) -> Result<(), ControlError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| unusable(dir, format!("cannot create the directory: {e}")))?;
    if !derived {
        return Ok(());
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| unusable(dir, e.to_string()))?;
    if !meta.is_dir() {
        return Err(unusable(dir, "not a directory"));
    }
    if meta.uid() != effective_uid() {
        return Err(unusable(
            dir,
            format!("owned by uid {}, not by us", meta.uid()),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| unusable(dir, format!("cannot make it private: {e}")))?;
    }
    Ok(())
}

/// What is at a socket path.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    Absent,
    /// A socket file nobody listens on.
    Stale,
    /// Someone answers.
    Alive,
}

/// Look at `path` without blocking: a non-blocking connect tells a live listener (connected, or
/// `EAGAIN` when its backlog is full) from a stale file (`ECONNREFUSED`).
fn probe(path: &Path) -> Result<Probe, ControlError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Probe::Absent),
        Err(e) => return Err(unusable(path, e.to_string())),
    };
    if !meta.file_type().is_socket() {
        return Err(unusable(
            path,
            "exists and is not a socket; not touching it",
        ));
    }
    let addr = rustix::net::SocketAddrUnix::new(path).map_err(|e| unusable(path, e.to_string()))?;
    let fd = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| unusable(path, e.to_string()))?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => Ok(Probe::Alive),
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INPROGRESS) => Ok(Probe::Alive),
        Err(rustix::io::Errno::CONNREFUSED) => Ok(Probe::Stale),
        Err(rustix::io::Errno::NOENT) => Ok(Probe::Absent),
        Err(e) => Err(unusable(
            path,
            format!("cannot tell whether it is in use: {e}"),
        )),
    }
}

/// The supervisor's end of the control socket. Dropping it stops accepting and removes the
/// socket file (if it is still the one this server created).
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    /// (device, inode) of the socket file created.
    id: (u64, u64),
    accept: tokio::task::JoinHandle<()>,
    tasks: TaskTracker,
}

impl ControlServer {
    /// Create the control socket for `config` and serve it: each request becomes
    /// `Event::Op(op, Reply::Local(_))` on `events`, and its answer is written back. Must be
    /// called inside the supervisor's runtime. On failure, logs why and returns `None`: the host
    /// runs on without a control socket.
    pub fn start(config: &Config, events: mpsc::UnboundedSender<Event>) -> Option<ControlServer> {
        let path = socket_path(config);
        let derived = config.control.socket.is_none();
        match bind(&path, derived) {
            Ok((listener, id)) => {
                tracing::info!("control socket at {}", path.display());
                let tasks = TaskTracker::new();
                let accept = tokio::spawn(accept_loop(listener, events, tasks.clone()));
                Some(ControlServer {
                    path,
                    id,
                    accept,
                    tasks,
                })
            }
            Err(e) => {
                tracing::warn!(
                    "no control socket: {e}; `apphost status|restart|shutdown` cannot reach \
                     this host"
                );
                None
            }
        }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop accepting, give answers being written a moment to go out, remove the socket file.
    pub async fn close(self) {
        self.accept.abort();
        self.tasks.close();
        let _ = tokio::time::timeout(CLOSE_GRACE, self.tasks.wait()).await;
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && (m.dev(), m.ino()) == self.id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn bind(
    path: &Path,
    derived: bool,
) -> Result<(tokio::net::UnixListener, (u64, u64)), ControlError> {
    if path.as_os_str().len() >= 108 {
        return Err(unusable(
            path,
            "path too long for a Unix socket (108 bytes at most); set control.socket",
        ));
    }
    if let Some(dir) = path.parent() {
        prepare_dir(dir, derived)?;
    }
    match probe(path)? {
        Probe::Alive => return Err(ControlError::InUse(path.to_path_buf())),
        Probe::Stale => {
            tracing::info!("removing the stale control socket {}", path.display());
            std::fs::remove_file(path).map_err(|e| unusable(path, e.to_string()))?;
        }
        Probe::Absent => {}
    }
    // Created 0600 from the start: no moment where others could connect.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    rustix::process::umask(old);
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let l = bound.map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    let m = std::fs::symlink_metadata(path).map_err(io)?;
    l.set_nonblocking(true).map_err(io)?;
    let l = tokio::net::UnixListener::from_std(l).map_err(io)?;
    Ok((l, (m.dev(), m.ino())))
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    events: mpsc::UnboundedSender<Event>,
    tasks: TaskTracker,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tasks.spawn(serve_conn(stream, events.clone()));
            }
            Err(e) => {
                tracing::warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_conn(stream: tokio::net::UnixStream, events: mpsc::UnboundedSender<Event>) {
    let cred = stream.peer_cred().ok();
    if let Some(c) = &cred
        && c.uid() != effective_uid()
        && c.uid() != 0
    {
        tracing::warn!(
            uid = c.uid(),
            "control socket: connection from another user refused"
        );
        return;
    }
    let peer = cred
        .and_then(|c| c.pid())
        .map_or_else(|| "?".to_string(), |p| p.to_string());
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(r.take(MAX_LINE));
    let answer = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(0)) | Err(_) => return,
        Ok(Ok(_)) => match serde_json::from_str::<Op>(line.trim()) {
            Ok(op) => {
                let r = ask(op, &events, &peer).await;
                serde_json::to_string(&r).unwrap_or_else(|e| bad_request(&e.to_string()))
            }
            Err(e) => bad_request(&format!("not an operation: {e}")),
        },
        Ok(Err(e)) => bad_request(&e.to_string()),
    };
    let _ = w.write_all(answer.as_bytes()).await;
    let _ = w.write_all(b"\n").await;
    let _ = w.shutdown().await;
}

fn bad_request(reason: &str) -> String {
    serde_json::json!({ "Err": { "error": "bad_request", "reason": reason } }).to_string()
}

/// Hand `op` to the supervisor's state machine and wait for its answer.
async fn ask(mut op: Op, events: &mpsc::UnboundedSender<Event>, peer: &str) -> OpResult {
    if let Op::Restart { via, .. } = &mut op {
        via.get_or_insert_with(|| "cli".into());
    }
    match &op {
        Op::Restart { exe, .. } => tracing::info!(
            peer_pid = %peer,
            exe = exe.as_deref().unwrap_or("(recorded)"),
            "control: restart requested"
        ),
        Op::Shutdown => tracing::info!(peer_pid = %peer, "control: shutdown requested"),
        Op::Status => tracing::debug!(peer_pid = %peer, "control: status requested"),
    }
    let (tx, rx) = oneshot::channel();
    if events.send(Event::Op(op, Reply::Local(tx))).is_err() {
        return Err(OpError::Unavailable("the supervisor is exiting".into()));
    }
    rx.await.unwrap_or_else(|_| {
        Err(OpError::Unavailable(
            "the supervisor exited before answering".into(),
        ))
    })
}

// ---- client side ----

/// Send `op` to the control socket at `path` and return the answer line as it came (JSON).
/// Blocks until the supervisor answers (a restart answers once the new worker serves or fails).
pub fn request_raw(path: &Path, op: &Op) -> Result<String, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|source| {
        use std::io::ErrorKind::*;
        match source.kind() {
            NotFound | ConnectionRefused => ControlError::NotRunning {
                path: path.to_path_buf(),
                source,
            },
            _ => ControlError::Io {
                path: path.to_path_buf(),
                source,
            },
        }
    })?;
    let mut line = serde_json::to_string(op).map_err(|e| io(std::io::Error::other(e)))?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(io)?;
    if answer.trim().is_empty() {
        return Err(ControlError::BadAnswer {
            path: path.to_path_buf(),
            answer: "(nothing: the host closed the connection)".into(),
        });
    }
    Ok(answer.trim_end().to_string())
}

/// Send `op` to the control socket at `path` and wait for the result.
pub fn request(path: &Path, op: &Op) -> Result<OpResult, ControlError> {
    let answer = request_raw(path, op)?;
    serde_json::from_str(&answer).map_err(|_| ControlError::BadAnswer {
        path: path.to_path_buf(),
        answer,
    })
}

/// Which host a control command talks to, and how it prints (the shared options of
/// `apphost status|restart|shutdown`).
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Config file of the host (same lookup as `run`); its control socket is used.
    #[arg(short, long, value_name = "FILE", conflicts_with = "socket")]
    pub config: Option<PathBuf>,
    /// The control socket itself (instead of deriving it from the config).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the raw JSON answer instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// A control command of the CLI.
#[derive(Debug, Clone)]
pub enum Command {
    /// `apphost status`.
    Status,
    /// `apphost restart [--exe PATH]`.
    Restart {
        /// The executable for the new workers.
        exe: Option<PathBuf>,
    },
    /// `apphost shutdown [--wait]`.
    Shutdown {
        /// Wait until the host has exited.
        wait: bool,
    },
}

/// Run a control command: exit 0 when it succeeded, 1 when it failed or the host cannot be
/// reached (the reason on stderr), 2 when the config cannot be read.
pub fn run_command(cmd: Command, target: &Target) -> ExitCode {
    let path = match &target.socket {
        Some(p) => p.clone(),
        None => match crate::cli::load_config(target.config.as_deref()) {
            Ok(c) => socket_path(&c),
            Err(e) => {
                eprintln!("apphost: {e}\n(use --socket PATH to name the control socket directly)");
                return ExitCode::from(2);
            }
        },
    };
    let op = match &cmd {
        Command::Status => Op::Status,
        Command::Shutdown { .. } => Op::Shutdown,
        Command::Restart { exe } => {
            // Relative to where the command runs, not to the supervisor's directory.
            let exe = match exe.as_deref().map(std::path::absolute).transpose() {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("apphost: --exe: {e}");
                    return ExitCode::from(2);
                }
            };
            Op::Restart {
                exe: exe.map(|p| p.to_string_lossy().into_owned()),
                via: Some("cli".into()),
            }
        }
    };
    let answer = match request_raw(&path, &op) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("apphost: {e}");
            return ExitCode::from(1);
        }
    };
    let result: OpResult = match serde_json::from_str(&answer) {
        Ok(r) => r,
        Err(_) => {
            eprintln!(
                "apphost: unexpected answer from {}: {answer}",
                path.display()
            );
            return ExitCode::from(1);
        }
    };
    if target.json {
        println!("{answer}");
    }
    let code = match &result {
        Ok(reply) => {
            if !target.json {
                println!("{}", describe_reply(reply));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let what = match cmd {
                Command::Status => "status",
                Command::Restart { .. } => "restart",
                Command::Shutdown { .. } => "shutdown",
            };
            eprintln!("apphost: {what} failed: {e}");
            ExitCode::from(1)
        }
    };
    if let (Command::Shutdown { wait: true }, Ok(_)) = (&cmd, &result) {
        // The supervisor removes its socket when it exits.
        while !matches!(probe(&path), Ok(Probe::Absent | Probe::Stale)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !target.json {
            println!("stopped");
        }
    }
    code
}

/// A human summary of an operation's success.
pub fn describe_reply(reply: &OpReply) -> String {
    match reply {
        OpReply::Restarted(o) => format!(
            "restarted: generation {}, pid {} (was {}), handoff {:.1} ms ({})",
            o.generation,
            o.pid,
            o.old_pid
                .map_or_else(|| "none".to_string(), |p| p.to_string()),
            o.handoff_ms,
            o.mode
        ),
        OpReply::ShuttingDown => {
            "shutting down: every worker drains, then the supervisor exits".into()
        }
        OpReply::Status(s) => describe_status(s),
    }
}

/// A human summary of the supervisor's state, several lines.
pub fn describe_status(s: &Status) -> String {
    use crate::admin::{human_duration, utc};
    let mut out = format!(
        "apphost: {}\n  supervisor pid {}, up {}\n",
        s.phase,
        s.supervisor_pid,
        human_duration(s.uptime_s)
    );
    match s.worker_pid {
        Some(p) => out.push_str(&format!(
            "  worker pid {p}, generation {} (serving for {})\n",
            s.generation,
            human_duration(s.generation_uptime_s)
        )),
        None => out.push_str("  no worker serving\n"),
    }
    out.push_str(&format!("  executable {}\n  config {}\n", s.exe, s.config));
    out.push_str(&format!(
        "  restart mode {}, {} restarts since start\n  listeners {}\n",
        if s.graceful { "graceful" } else { "full" },
        s.restarts,
        if s.listeners.is_empty() {
            "none".to_string()
        } else {
            s.listeners.join(", ")
        }
    ));
    match &s.last_restart {
        None => out.push_str("  last restart: none"),
        Some(l) => out.push_str(&format!(
            "  last restart: {} (asked by {}, {}): {}",
            if l.ok { "ok" } else { "failed" },
            l.trigger,
            utc(l.at_unix),
            l.detail
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_fnv1a() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn socket_path_is_configured_or_derived() {
        let mut c = Config::embedded().unwrap();
        c.control.socket = Some(PathBuf::from("/run/x.sock"));
        assert_eq!(socket_path(&c), PathBuf::from("/run/x.sock"));
        c.control.socket = None;
        let p = socket_path(&c);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(name.len(), 16 + ".sock".len(), "{name}");
        assert!(name.ends_with(".sock"));
        assert_eq!(p.parent().unwrap(), derived_dir());
        // Same config file, same path; another file, another path.
        let d = tempfile::tempdir().unwrap();
        let mut f = Config::embedded().unwrap();
        f.source = ConfigSource::File(d.path().join("a.yaml"));
        let mut g = f.clone();
        assert_eq!(socket_path(&f), socket_path(&g));
        g.source = ConfigSource::File(d.path().join("b.yaml"));
        assert_ne!(socket_path(&f), socket_path(&g));
    }

    #[test]
    fn derived_dir_must_be_ours_and_private() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("apphost");
        prepare_dir(&dir, true).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_dir(&dir, true).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let file = d.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(prepare_dir(&file, true).is_err());
    }

    #[tokio::test]
    async fn stale_sockets_are_replaced_live_ones_are_not() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("c.sock");
        assert_eq!(probe(&path).unwrap(), Probe::Absent);
        // A socket file whose listener is gone.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert_eq!(probe(&path).unwrap(), Probe::Stale);
        let (l, _) = bind(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(probe(&path).unwrap(), Probe::Alive);
        assert!(matches!(bind(&path, false), Err(ControlError::InUse(_))));
        drop(l);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "not a socket").unwrap();
        assert!(matches!(
            bind(&path, false),
            Err(ControlError::Unusable { .. })
        ));
    }

    #[tokio::test]
    async fn requests_become_ops_and_answers_come_back() {
        let d = tempfile::tempdir().unwrap();
        let mut config = Config::embedded().unwrap();
        config.control.socket = Some(d.path().join("sub/c.sock"));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let server = ControlServer::start(&config, tx).unwrap();
        let path = server.path().to_path_buf();
        // A stand-in supervisor.
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if let Event::Op(op, Reply::Local(tx)) = ev {
                    let r = match op {
                        Op::Status => Ok(OpReply::Status(Status::default())),
                        Op::Restart { exe, via } => Err(OpError::BadExecutable(format!(
                            "{} via {}",
                            exe.unwrap_or_default(),
                            via.unwrap_or_default()
                        ))),
                        Op::Shutdown => Ok(OpReply::ShuttingDown),
                    };
                    let _ = tx.send(r);
                }
            }
        });
        let p = path.clone();
        let (status, restart, raw, bad) = tokio::task::spawn_blocking(move || {
            let status = request(&p, &Op::Status).unwrap();
            let restart = request(
                &p,
                &Op::Restart {
                    exe: Some("/x".into()),
                    via: None,
                },
            )
            .unwrap();
            let raw = request_raw(&p, &Op::Shutdown).unwrap();
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            s.write_all(b"{\"op\":\"dance\"}\n").unwrap();
            let mut bad = String::new();
            BufReader::new(s).read_line(&mut bad).unwrap();
            (status, restart, raw, bad)
        })
        .await
        .unwrap();
        assert_eq!(status, Ok(OpReply::Status(Status::default())));
        assert_eq!(restart, Err(OpError::BadExecutable("/x via cli".into())));
        assert_eq!(raw, r#"{"Ok":{"kind":"shutting_down"}}"#);
        assert!(bad.contains("\"bad_request\""), "{bad}");
        server.close().await;
        assert!(!path.exists(), "socket file removed at close");
        assert!(matches!(
            request(&path, &Op::Status),
            Err(ControlError::NotRunning { .. })
        ));
    }
}
