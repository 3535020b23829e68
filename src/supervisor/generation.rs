//! Starting one generation (a worker process) and the tasks that follow it: its channel, its
//! stderr (copied to ours, the last lines kept to explain a failure).
//!
//! The worker is started as `EXE __worker [--config FILE]` (or, for a program that nests
//! apphost's command line in its own, with the program's own arguments: see `crate::launch`)
//! with:
//! - every listening socket the supervisor holds, inherited under the same descriptor numbers and
//!   listed in `APPHOST_LISTEN_FDS=KEY=FD,…`;
//! - its end of a fresh channel in `APPHOST_CHANNEL_FD`, and `APPHOST_GENERATION` (a standby
//!   gets `APPHOST_STANDBY` instead, and its number with `activate`);
//! - `APPHOST_HOST_SERVING=1` when another generation serves (its `ready` answers 200 from the
//!   start: the host is ready, whichever worker a probe reaches);
//! - its own process group (so a terminal's Ctrl-C reaches only the supervisor, which decides),
//!   and `SIGTERM` as parent-death signal (so it never outlives a killed supervisor);
//! - no systemd variables (`NOTIFY_SOCKET`, `LISTEN_*`): the supervisor speaks for it.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use rustix::process::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use super::events::Event;
use super::machine::WorkerId;
use crate::channel::{self, Channel};
use crate::launch::{Launch, Role};

/// Lines of a worker's stderr kept for failure reports.
const TAIL_LINES: usize = 12;

/// One started worker process (a generation, or a standby waiting to become one).
#[derive(Debug)]
pub(crate) struct Generation {
    /// Its process id.
    pub(crate) pid: Pid,
    /// The supervisor's end of its channel.
    pub(crate) chan: Arc<Channel>,
    /// The last lines it wrote to stderr.
    pub(crate) tail: Arc<Mutex<VecDeque<String>>>,
    /// Sockets it bound and handed over, kept aside until it is ready.
    pub(crate) bound: Vec<(String, OwnedFd)>,
    /// True once reaped: its pid may belong to another process now, so it is never signalled.
    pub(crate) exited: bool,
    /// Once reaped: how it ended (`exit status 1`, …), until that is judged.
    pub(crate) exit_status: Option<String>,
    /// The tasks copying its stderr and reading its channel; waited for when it exits, so its
    /// last words are in hand before its exit is judged.
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
    /// A second descriptor of its stderr pipe's read end, handed to a re-executed supervisor.
    pub(crate) stderr_fd: Option<OwnedFd>,
    /// A standby's: the read end of its `accepting` pipe, for the serving worker to watch
    /// (`watch_successor`); taken by the driver.
    pub(crate) accepting_rx: Option<OwnedFd>,
}

impl Generation {
    /// True once the process has ended, reaped or not (a zombie still counts: its exit may not
    /// have been seen yet). Looked at without reaping it: the `SIGCHLD` task reaps.
    ///
    /// A `ready` report read only after its sender ended (the supervisor was held up) is not
    /// acted on: that worker serves nobody, so the old generation is not drained for it. Its
    /// exit, judged next, fails the restart; the old generation, which it may have told it was
    /// accepting (`worker::successor`), took up accepting again when it ended.
    pub(crate) fn has_ended(&self) -> bool {
        use rustix::process::{WaitId, WaitIdOptions, waitid};
        self.exited
            || !matches!(
                waitid(
                    WaitId::Pid(self.pid),
                    WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
                ),
                // Running: nothing to report. Any other answer is an end (ECHILD: reaped by
                // now, its exit on its way to the driver).
                Ok(None)
            )
    }

    /// The last lines of its stderr.
    pub(crate) fn tail_lines(&self) -> Vec<String> {
        let t = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        t.iter().cloned().collect()
    }

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

/// Which worker a spawn starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    /// Its id in the supervisor.
    pub(crate) worker: WorkerId,
    /// Its generation number; `None` for a standby, which learns its number when activated.
    pub(crate) generation: Option<u64>,
    /// Another generation serves while it starts.
    pub(crate) host_serving: bool,
}

/// Start the worker `slot` names from `exe`, handing it `listeners`. Must be called on the
/// supervisor's event-loop thread, which also reaps children: the caller registers the pid
/// before the loop can see the child's exit.
pub(crate) fn spawn(
    slot: Slot,
    exe: &Path,
    launch: &Launch,
    config: Option<&Path>,
    listeners: &[(String, &OwnedFd)],
    events: mpsc::UnboundedSender<Event>,
) -> std::io::Result<Generation> {
    let Slot {
        worker,
        generation,
        host_serving,
    } = slot;
    let (ours, theirs) = channel::pair()?;
    let mut cmd = launch.command(exe, Role::Worker, config);
    let mut fds = vec![theirs.as_raw_fd()];
    // A standby's word to the serving generation that it accepts (see `worker::successor`).
    let accepting = match generation {
        None => Some(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?),
        Some(_) => None,
    };
    if let Some((_, w)) = &accepting {
        fds.push(w.as_raw_fd());
    }
    let mut list = String::new();
    for (key, fd) in listeners {
        if !list.is_empty() {
            list.push(',');
        }
        list.push_str(&format!("{key}={}", fd.as_raw_fd()));
        fds.push(fd.as_raw_fd());
    }
    cmd.env(channel::ENV_CHANNEL_FD, theirs.as_raw_fd().to_string())
        .env(channel::ENV_LISTEN_FDS, list)
        .env(channel::ENV_SUPERVISOR_METRICS, "1")
        .env_remove(channel::ENV_GENERATION)
        .env_remove(channel::ENV_STANDBY)
        .env_remove(channel::ENV_ACCEPTING_FD)
        .env_remove(channel::ENV_HOST_SERVING)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    match generation {
        Some(g) => cmd.env(channel::ENV_GENERATION, g.to_string()),
        None => cmd.env(channel::ENV_STANDBY, "1"),
    };
    if host_serving {
        cmd.env(channel::ENV_HOST_SERVING, "1");
    }
    if let Some((_, w)) = &accepting {
        cmd.env(channel::ENV_ACCEPTING_FD, w.as_raw_fd().to_string());
    }
    for v in super::handover::ALL_ENV {
        cmd.env_remove(v);
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    crate::sys::prepare_child(&mut cmd, fds);
    let mut child = cmd.spawn()?;
    drop(theirs);
    let accepting_rx = accepting.map(|(r, _w)| r);
    let pid =
        Pid::from_raw(child.id() as i32).ok_or_else(|| std::io::Error::other("child pid 0"))?;
    let stderr: Option<OwnedFd> = child.stderr.take().map(Into::into);
    // The std Child is not waited on: the supervisor reaps every child itself (it may be PID 1).
    drop(child);
    let mut g = follow(worker, pid, ours, stderr, Vec::new(), events)?;
    g.accepting_rx = accepting_rx;
    Ok(g)
}

/// Take over a worker a previous supervisor image started (a re-executed supervisor): its
/// channel and stderr pipe were handed over as descriptors, with the last lines of its stderr.
pub(crate) fn adopt(
    worker: WorkerId,
    pid: Pid,
    chan: OwnedFd,
    stderr: Option<OwnedFd>,
    tail: Vec<String>,
    events: mpsc::UnboundedSender<Event>,
) -> std::io::Result<Generation> {
    follow(worker, pid, chan, stderr, tail, events)
}

/// Start following a worker: read its channel and copy its stderr.
fn follow(
    worker: WorkerId,
    pid: Pid,
    ours: OwnedFd,
    stderr: Option<OwnedFd>,
    tail: Vec<String>,
    events: mpsc::UnboundedSender<Event>,
) -> std::io::Result<Generation> {
    let chan = Arc::new(Channel::new(ours)?);
    let tail = Arc::new(Mutex::new(VecDeque::from(tail)));
    let mut tasks = Vec::new();
    let mut stderr_fd = None;
    if let Some(fd) = stderr {
        stderr_fd = fd.try_clone().ok();
        let tail = tail.clone();
        match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
            Ok(rx) => {
                tasks.push(tokio::spawn(copy_stderr(rx, tail)));
            }
            Err(e) => tracing::warn!("cannot read the worker's stderr: {e}"),
        }
    }
    {
        let chan = chan.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match chan.recv().await {
                    Ok(Some((msg, fds))) => {
                        if events.send(Event::FromWorker(worker, msg, fds)).is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => {
                        let _ = events.send(Event::ChannelClosed(worker));
                        return;
                    }
                }
            }
        }));
    }
    Ok(Generation {
        pid,
        chan,
        tail,
        bound: Vec::new(),
        exited: false,
        exit_status: None,
        tasks,
        stderr_fd,
        accepting_rx: None,
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
