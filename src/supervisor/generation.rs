//! Starting one generation (a worker process) and the tasks that follow it: its channel, its
//! stderr (copied to ours, the last lines kept to explain a failure).
//!
//! The worker is started as `EXE __worker [--config FILE]` with:
//! - every listening socket the supervisor holds, inherited under the same descriptor numbers and
//!   listed in `APPHOST_LISTEN_FDS=KEY=FD,…`;
//! - its end of a fresh channel in `APPHOST_CHANNEL_FD`, and `APPHOST_GENERATION`;
//! - its own process group (so a terminal's Ctrl-C reaches only the supervisor, which decides),
//!   and `SIGTERM` as parent-death signal (so it never outlives a killed supervisor);
//! - no systemd variables (`NOTIFY_SOCKET`, `LISTEN_*`): the supervisor speaks for it.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustix::process::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use super::events::Event;
use crate::channel::{self, Channel};

/// Lines of a worker's stderr kept for failure reports.
const TAIL_LINES: usize = 12;

/// One started worker.
#[derive(Debug)]
pub(crate) struct Generation {
    /// Its number (1 for the first).
    pub id: u64,
    /// Its process id.
    pub pid: Pid,
    /// The supervisor's end of its channel.
    pub chan: Arc<Channel>,
    /// The last lines it wrote to stderr.
    pub tail: Arc<Mutex<VecDeque<String>>>,
    /// When it was started.
    pub started: Instant,
    /// When it reported ready.
    pub ready_at: Option<Instant>,
    /// Sockets it bound and handed over, kept aside until it is ready.
    pub bound: Vec<(String, OwnedFd)>,
    /// Listener keys it serves (from its ready report).
    pub listeners: Vec<String>,
    /// True once told to drain.
    pub draining: bool,
    /// A warm standby waiting for `activate` (not serving, not a generation yet).
    pub standby: bool,
    /// The id its channel events carry; changed when a standby is activated under a new id.
    pub id_cell: Arc<std::sync::atomic::AtomicU64>,
    /// True once reaped: its pid may belong to another process now, so it is never signalled.
    pub exited: bool,
    /// The tasks copying its stderr and reading its channel; waited for when it exits, so its
    /// last words are in hand before its exit is judged.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Generation {
    /// The end of its stderr, one line per entry, for error reports.
    pub(crate) fn stderr_tail(&self) -> String {
        let t = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Send a signal to its process group (it leads one: a wrapper script's children go too),
    /// unless it has already been reaped.
    pub(crate) fn kill(&self, sig: rustix::process::Signal) {
        if !self.exited {
            let _ = rustix::process::kill_process_group(self.pid, sig);
        }
    }

    /// Its pid as a number.
    pub(crate) fn pid_u32(&self) -> u32 {
        self.pid.as_raw_nonzero().get() as u32
    }
}

/// Start generation `id` from `exe`, handing it `listeners`. Must be called on the supervisor's
/// event-loop thread, which also reaps children: the caller registers the pid before the loop
/// can see the child's exit.
pub(crate) fn spawn(
    id: u64,
    exe: &Path,
    config: Option<&Path>,
    listeners: &[(String, &OwnedFd)],
    standby: bool,
    events: mpsc::UnboundedSender<Event>,
) -> std::io::Result<Generation> {
    let (ours, theirs) = channel::pair()?;
    let mut cmd = Command::new(exe);
    cmd.arg("__worker");
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut fds = vec![theirs.as_raw_fd()];
    let mut list = String::new();
    for (key, fd) in listeners {
        if !list.is_empty() {
            list.push(',');
        }
        list.push_str(&format!("{key}={}", fd.as_raw_fd()));
        fds.push(fd.as_raw_fd());
    }
    cmd.env(
        crate::channel::ENV_CHANNEL_FD,
        theirs.as_raw_fd().to_string(),
    )
    .env(crate::channel::ENV_LISTEN_FDS, list)
    .env(crate::channel::ENV_GENERATION, id.to_string())
    .env_remove(crate::channel::ENV_STANDBY)
    .env_remove("NOTIFY_SOCKET")
    .env_remove("LISTEN_FDS")
    .env_remove("LISTEN_PID")
    .env_remove("LISTEN_FDNAMES")
    .stdin(Stdio::null())
    .stdout(Stdio::inherit())
    .stderr(Stdio::piped());
    if standby {
        cmd.env(crate::channel::ENV_STANDBY, "1");
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    crate::sys::prepare_child(&mut cmd, fds);
    let mut child = cmd.spawn()?;
    drop(theirs);
    let pid =
        Pid::from_raw(child.id() as i32).ok_or_else(|| std::io::Error::other("child pid 0"))?;
    let chan = Arc::new(Channel::new(ours)?);
    let tail = Arc::new(Mutex::new(VecDeque::new()));

    let mut tasks = Vec::new();
    let id_cell = Arc::new(std::sync::atomic::AtomicU64::new(id));
    if let Some(err) = child.stderr.take() {
        let tail = tail.clone();
        let fd: OwnedFd = err.into();
        match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
            Ok(rx) => {
                tasks.push(tokio::spawn(copy_stderr(rx, tail)));
            }
            Err(e) => tracing::warn!("cannot read the worker's stderr: {e}"),
        }
    }
    {
        let chan = chan.clone();
        let cell = id_cell.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match chan.recv().await {
                    Ok(Some((msg, fds))) => {
                        let id = cell.load(std::sync::atomic::Ordering::Relaxed);
                        if events.send(Event::FromWorker(id, msg, fds)).is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => {
                        let id = cell.load(std::sync::atomic::Ordering::Relaxed);
                        let _ = events.send(Event::ChannelClosed(id));
                        return;
                    }
                }
            }
        }));
    }
    // The std Child is not waited on: the supervisor reaps every child itself (it may be PID 1).
    drop(child);
    Ok(Generation {
        id,
        pid,
        chan,
        tail,
        started: Instant::now(),
        ready_at: None,
        bound: Vec::new(),
        listeners: Vec::new(),
        draining: false,
        standby,
        id_cell,
        exited: false,
        tasks,
    })
}

async fn copy_stderr(rx: tokio::net::unix::pipe::Receiver, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut lines = tokio::io::BufReader::new(rx).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "{line}");
        }
        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }
}
