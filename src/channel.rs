//! The supervisor ↔ worker channel: a `SOCK_SEQPACKET` Unix socket pair, one JSON message per
//! packet, optionally carrying file descriptors (SCM_RIGHTS).
//!
//! Every message has `"v": 1` (the protocol version) and a `"type"`. Unknown fields are ignored
//! and an unknown `type` is logged and skipped, so an old supervisor and a new worker keep
//! understanding each other (the supervisor upgrades itself only when the new executable can
//! take over its state; otherwise it stays the old code while workers run the new one).
//!
//! Worker → supervisor: `bound` (with the listening socket it had to bind, so later generations
//! inherit it), `ready` (with the settings the supervisor needs from the worker's config),
//! `failed` (it cannot start, and why), `request` (restart/shutdown/status asked for inside the
//! worker: a signal, the admin page, the library call), `recycle` (it passed its `max_requests`),
//! `logs_reopened` (the answer to `reopen_logs`).
//! Supervisor → worker: `going_away` (a shutdown began: `ready` answers 503 while serving goes
//! on), `drain` (stop accepting, finish, exit), `reply` (the answer to a request), `activate`,
//! `reopen_logs` (reopen the access log files).
//!
//! Also the protocol's vocabulary shared by every side: the operations ([`Op`]) and their
//! results ([`OpResult`], [`Status`]), which the control socket speaks too, and the environment
//! variables a supervisor starts a worker with (`ENV_*`).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

/// Protocol version carried in every message.
pub(crate) const VERSION: u32 = 1;
/// Largest message accepted.
const MAX_MSG: usize = 64 * 1024;
/// Most descriptors in one message.
const MAX_FDS: usize = 8;

/// Environment variable naming a worker's channel descriptor.
pub(crate) const ENV_CHANNEL_FD: &str = "APPHOST_CHANNEL_FD";
/// Environment variable listing a worker's inherited listeners: `KEY=FD,KEY=FD`.
pub(crate) const ENV_LISTEN_FDS: &str = "APPHOST_LISTEN_FDS";
/// Environment variable with a worker's generation number.
pub(crate) const ENV_GENERATION: &str = "APPHOST_GENERATION";
/// Set (to `1`) when a worker starts while another generation serves: its `ready` answers 200
/// from the start.
pub(crate) const ENV_HOST_SERVING: &str = "APPHOST_HOST_SERVING";
/// Set for a standby worker: it starts up to its runtime, then waits for `activate`.
pub(crate) const ENV_STANDBY: &str = "APPHOST_STANDBY";
/// Given to a standby: the write end of a pipe whose read end the serving worker holds
/// (`watch_successor`). Once activated and ready, the worker writes one byte to it, and keeps it
/// open for its whole life.
pub(crate) const ENV_ACCEPTING_FD: &str = "APPHOST_ACCEPTING_FD";
/// Set (to `1`) by a supervisor that keeps the host's metrics (it understands `counts` and
/// answers `metrics_request`). A worker under an older supervisor, after a binary upgrade,
/// sends neither and answers scrapes from its own counts.
pub(crate) const ENV_SUPERVISOR_METRICS: &str = "APPHOST_SUPERVISOR_METRICS";

/// Settings a worker reports with `ready`, taken from the config it loaded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct WorkerSettings {
    /// `graceful`.
    pub graceful: bool,
    /// `graceful_timeout` in milliseconds.
    pub graceful_timeout_ms: u64,
    /// `shutdown_timeout` in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// The listener keys the worker serves (see `ListenAddr::key`).
    pub listeners: Vec<String>,
    /// `watch.executable`.
    #[serde(default)]
    pub watch_executable: bool,
    /// `watch.config`.
    #[serde(default)]
    pub watch_config: bool,
    /// `watch.settle` in milliseconds.
    #[serde(default)]
    pub watch_settle_ms: u64,
    /// Certificate and key files in use (watched for renewal).
    #[serde(default)]
    pub tls_files: Vec<String>,
    /// `warm_standby`.
    #[serde(default)]
    pub warm_standby: bool,
    /// `shutdown_delay` in milliseconds.
    #[serde(default)]
    pub shutdown_delay_ms: u64,
    /// `recycle`, as this worker applies it (its jitter drawn), for the supervisor's side of it:
    /// the age and memory it watches. `None`: no recycling.
    #[serde(default)]
    pub recycle: Option<RecycleSettings>,
}

/// What a worker's `recycle` asks of the supervisor (the worker counts its own requests).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub(crate) struct RecycleSettings {
    /// `max_age` with this worker's jitter, in milliseconds.
    #[serde(default)]
    pub max_age_ms: Option<u64>,
    /// `max_memory` in bytes (resident).
    #[serde(default)]
    pub max_memory: Option<u64>,
    /// `max_requests` with this worker's jitter (for the log: the worker reports passing it).
    #[serde(default)]
    pub max_requests: Option<u64>,
}

/// An operation a worker (or the control socket) asks the supervisor for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Op {
    /// Restart, optionally with another executable.
    Restart {
        /// The new executable; `None` = the one recorded at start.
        #[serde(default)]
        exe: Option<String>,
        /// What asked (`signal`, `admin`, `cli`, `watch`, `library`), for the record.
        #[serde(default)]
        via: Option<String>,
    },
    /// Drain everything and exit.
    Shutdown,
    /// Report the supervisor's state.
    Status,
    /// Have every live worker reopen its access log files.
    ReopenLogs,
}

/// What a successful operation returns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OpReply {
    /// A restart finished: a new generation serves.
    Restarted(RestartOutcome),
    /// Shutdown has begun.
    ShuttingDown,
    /// The supervisor's state.
    Status(Status),
    /// `reopen_logs` was passed to this many workers, and so many answered that they had
    /// written what they held to the files open and reopened them (see
    /// `supervisor::driver::reopen`).
    LogsReopened {
        /// Workers told (the serving one, draining ones).
        workers: u32,
        /// Workers that answered: done (their renamed files are complete).
        #[serde(default)]
        confirmed: u32,
        /// Files reopened, summed over the workers (two workers writing one file count 2).
        #[serde(default)]
        files: u32,
        /// Why a file could not be reopened, or a worker did not answer in time (each naming
        /// the worker and the file): a reopen that failed.
        #[serde(default)]
        failed: Vec<String>,
    },
}

impl OpReply {
    /// Why the operation, answered, did not fully succeed: the files `reopen-logs` could not
    /// reopen (empty for every other answer).
    pub fn failures(&self) -> &[String] {
        match self {
            OpReply::LogsReopened { failed, .. } => failed,
            _ => &[],
        }
    }
}

/// A finished restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestartOutcome {
    /// The new generation's number.
    pub generation: u64,
    /// The new worker's pid.
    pub pid: u32,
    /// The worker it replaced.
    pub old_pid: Option<u32>,
    /// The executable the new worker runs.
    pub exe: String,
    /// From the request to the new worker's ready report, in milliseconds.
    pub handoff_ms: f64,
    /// `graceful` (new ready before old drains) or `full` (old drained first).
    pub mode: String,
}

/// Why an operation failed. The old generation keeps serving in every case.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, thiserror::Error)]
#[serde(tag = "error", content = "reason", rename_all = "snake_case")]
pub enum OpError {
    /// Another restart is under way (requests are refused, not queued).
    #[error("a restart is already under way: {0}")]
    Busy(String),
    /// The host is shutting down.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// The executable asked for cannot be used.
    #[error("unusable executable: {0}")]
    BadExecutable(String),
    /// The new generation failed (its exit status and the end of its stderr).
    #[error("the new process failed: {0}")]
    Failed(String),
    /// The new generation was not ready within `graceful_timeout`.
    #[error("the new process was not ready in time: {0}")]
    Timeout(String),
    /// Not allowed (admin restrictions).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Not running under a supervisor, or it could not be reached.
    #[error("no supervisor: {0}")]
    Unavailable(String),
}

/// The result of an operation.
pub type OpResult = Result<OpReply, OpError>;

/// The supervisor's state, for `status`, the admin page and the CLI.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Status {
    /// The supervisor's pid (stable for the host's life).
    pub supervisor_pid: u32,
    /// The serving worker's pid.
    pub worker_pid: Option<u32>,
    /// The serving generation's number.
    pub generation: u64,
    /// The executable recorded at start (restarts use it unless told otherwise).
    pub exe: String,
    /// The config file, or `<embedded default>`.
    pub config: String,
    /// Seconds since the supervisor started.
    pub uptime_s: f64,
    /// Seconds since the serving generation became ready.
    pub generation_uptime_s: f64,
    /// `graceful` from the serving generation's config.
    pub graceful: bool,
    /// Listener keys held by the supervisor.
    pub listeners: Vec<String>,
    /// What is under way: `serving`, `restarting`, `shutting_down`, `recovering`.
    pub phase: String,
    /// Number of restarts done since start.
    pub restarts: u64,
    /// The last restart's outcome.
    pub last_restart: Option<LastRestart>,
}

/// How the last restart ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastRestart {
    /// Unix time (seconds) it ended.
    pub at_unix: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// What asked for it (`signal`, `admin`, `cli`, `watch`, `library`).
    pub trigger: String,
    /// The outcome or the reason it failed.
    pub detail: String,
}

/// A message on the channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Msg {
    /// Worker → supervisor: here is a socket I bound for `key` (one fd attached).
    Bound {
        /// The listener key.
        key: String,
    },
    /// Worker → supervisor: serving; these are my settings.
    Ready {
        /// The worker's pid.
        pid: u32,
        /// Settings from its config.
        settings: WorkerSettings,
    },
    /// Worker → supervisor: I cannot start.
    Failed {
        /// Why.
        reason: String,
    },
    /// Worker → supervisor: I have passed a `recycle` limit I watch myself (`max_requests`):
    /// replace me when you can (sent once).
    Recycle {
        /// Which limit, for the log and the restart's record.
        reason: String,
    },
    /// Worker → supervisor: please do this, answer with `reply` and the same id.
    Request {
        /// Correlation id.
        id: u64,
        /// What.
        #[serde(flatten)]
        op: Op,
    },
    /// Supervisor → a standby worker: become generation `generation` now (load the config, adopt
    /// the sockets, serve, report `ready`).
    Activate {
        /// The generation number it becomes.
        generation: u64,
    },
    /// Supervisor → the serving worker, when a standby has started: the read end of a pipe (one
    /// fd attached) on which that standby, once activated, says it is ready and accepting (one
    /// byte): stop accepting then, the `drain` follows. If the pipe closes first (the standby or
    /// the generation it became is gone), accept again.
    WatchSuccessor,
    /// Supervisor → worker: the host is shutting down; keep serving, but answer `ready` with
    /// 503 (`shutdown_delay`). A `drain` follows.
    GoingAway,
    /// Supervisor → worker: stop accepting, drain, exit.
    Drain {
        /// True when the whole host is shutting down (log wording differs).
        shutdown: bool,
    },
    /// Supervisor → worker (every live one, draining ones too): reopen your access log files
    /// (`apphost reopen-logs`, after logrotate renamed them), and answer `logs_reopened` with
    /// `id` once done. (A worker of an older version reopens without answering; a supervisor of
    /// an older version sends no `id` and waits for no answer.)
    ReopenLogs {
        /// Correlation id (none: answer nothing).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Worker → supervisor: the answer to `reopen_logs` `id`: every access log file reopened,
    /// except those in `failed` (why, each naming its file), which the worker keeps writing to.
    LogsReopened {
        /// Correlation id.
        id: u64,
        /// Files reopened.
        files: u32,
        /// Why others were not.
        #[serde(default)]
        failed: Vec<String>,
    },
    /// Supervisor → worker: the answer to `request` `id`, as JSON (see `supervisor::OpResult`).
    Reply {
        /// Correlation id.
        id: u64,
        /// The result.
        result: serde_json::Value,
    },
    /// Worker → supervisor: my request counters since I started (cumulative: each report
    /// replaces the previous one), sent before each `metrics_request`, every second while
    /// draining, and a last time when the drain is over. See `observe` for the whole design.
    Counts {
        /// The counters and gauges.
        counts: crate::tally::Counts,
    },
    /// Worker → supervisor: answer with `metrics` and the same id (a scrape).
    MetricsRequest {
        /// Correlation id.
        id: u64,
    },
    /// Supervisor → worker: the host's metrics, the answer to `metrics_request` `id`.
    Metrics {
        /// Correlation id.
        id: u64,
        /// The host's counters and the supervisor's facts.
        metrics: Box<crate::tally::HostMetrics>,
    },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u32,
    #[serde(flatten)]
    msg: serde_json::Value,
}

/// Make a connected pair of channel sockets (both close-on-exec; the spawner clears the flag on
/// the child's end in the child only).
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    Ok((a, b))
}

fn encode(msg: &Msg) -> io::Result<Vec<u8>> {
    let value = serde_json::to_value(msg).map_err(io::Error::other)?;
    let bytes = serde_json::to_vec(&Envelope {
        v: VERSION,
        msg: value,
    })
    .map_err(io::Error::other)?;
    // The receiver would get it cut: refused here, so the channel itself stays usable.
    if bytes.len() > MAX_MSG {
        return Err(io::Error::other(format!(
            "channel message of {} bytes is over the {MAX_MSG}-byte limit",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Decode a packet. `Ok(None)`: a message of a type or version this code does not know.
fn decode(bytes: &[u8]) -> io::Result<Option<Msg>> {
    let env: Envelope =
        serde_json::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if env.v != VERSION {
        tracing::warn!(
            version = env.v,
            "channel message of unknown protocol version ignored"
        );
        return Ok(None);
    }
    match serde_json::from_value::<Msg>(env.msg) {
        Ok(m) => Ok(Some(m)),
        Err(e) => {
            tracing::warn!(error = %e, "channel message not understood, ignored");
            Ok(None)
        }
    }
}

fn send_raw(fd: impl AsFd, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    let n = rustix::net::sendmsg(
        fd,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )?;
    if n != bytes.len() {
        return Err(io::Error::other("short write on channel"));
    }
    Ok(())
}

/// Receive one packet. `Ok(None)` = the other end closed.
fn recv_raw(fd: impl AsFd, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let r = rustix::net::recvmsg(
        fd,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    if r.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    if r.flags.contains(rustix::net::ReturnFlags::TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "channel message too large",
        ));
    }
    Ok(Some((r.bytes, fds)))
}

/// Blocking send, for a worker before its runtime starts and for tests.
pub(crate) fn send_blocking(
    fd: impl AsFd,
    msg: &Msg,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<()> {
    let bytes = encode(msg)?;
    loop {
        match send_raw(fd.as_fd(), &bytes, fds) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                rustix::event::poll(
                    &mut [rustix::event::PollFd::new(
                        &fd.as_fd(),
                        rustix::event::PollFlags::OUT,
                    )],
                    None,
                )?;
            }
            other => return other,
        }
    }
}

/// One end of the channel, driven by tokio.
///
/// Registered with the reactor for readability only: a message read by the other end makes
/// this end writable again, and with that interest registered too every message sent would
/// wake this process's reactor thread for nothing (three such wake-ups on a handoff's path:
/// `activate`, `ready`, `drain`). A send that finds the socket full, rare with messages this
/// small, waits for room through a registration of its own ([`Channel::send`]).
#[derive(Debug)]
pub(crate) struct Channel {
    fd: AsyncFd<OwnedFd>,
}

impl Channel {
    /// Wrap a channel end (must be called inside a tokio runtime).
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Channel> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        Ok(Channel {
            fd: crate::sys::async_fd_for(fd, tokio::io::Interest::READABLE)?,
        })
    }

    /// The descriptor, for a blocking send ([`send_blocking`]) when the runtime cannot be used.
    pub(crate) fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }

    /// Send a message with optional descriptors.
    pub(crate) async fn send(
        &self,
        msg: &Msg,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> io::Result<()> {
        let bytes = encode(msg)?;
        // Straight away when the socket takes it (the usual case): waiting first for the
        // runtime to report it writable can cost a turn of its event loop.
        match send_raw(self.fd.get_ref(), &bytes, fds) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return other,
        }
        // Full: wait for room through a duplicate registered for writability only, for as long
        // as this send waits.
        let room = crate::sys::async_fd_for(
            self.fd.get_ref().try_clone()?,
            tokio::io::Interest::WRITABLE,
        )?;
        loop {
            let mut guard = room.writable().await?;
            match guard.try_io(|fd| send_raw(fd, &bytes, fds)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Send a message now if the socket takes it without waiting (`Ok(true)`); `Ok(false)` when
    /// it would block (the caller then uses [`Channel::send`]).
    pub(crate) fn try_send_now(&self, msg: &Msg) -> io::Result<bool> {
        let bytes = encode(msg)?;
        match send_raw(self.fd.get_ref(), &bytes, &[]) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Receive the next message this code understands, with the descriptors it carried.
    /// `Ok(None)` = the other end closed.
    pub(crate) async fn recv(&self) -> io::Result<Option<(Msg, Vec<OwnedFd>)>> {
        // Made once a message is there: a `recv` dropped before (a `select!` that took another
        // branch, as a worker's loop does every second) costs no allocation.
        let mut buf = Vec::new();
        loop {
            let mut guard = self.fd.readable().await?;
            if buf.is_empty() {
                buf = vec![0u8; MAX_MSG];
            }
            let got = match guard.try_io(|fd| recv_raw(fd, &mut buf)) {
                Ok(r) => r?,
                Err(_would_block) => continue,
            };
            let Some((n, fds)) = got else { return Ok(None) };
            if let Some(msg) = decode(&buf[..n])? {
                return Ok(Some((msg, fds)));
            }
        }
    }
}

#[cfg(test)]
mod tests;
