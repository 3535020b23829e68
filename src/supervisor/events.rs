//! What happens to the supervisor: every input (a worker's message, a child's exit, a signal,
//! an operation asked for, a timer) arrives as one [`Event`] in one queue, and the answer to an
//! operation goes where its [`Reply`] says.

use std::os::fd::OwnedFd;

use rustix::process::{Pid, WaitStatus};
use tokio::sync::oneshot;

use super::machine::WorkerId;
use crate::channel::{Msg, Op, OpResult};

/// The outcome of a preflight run (`EXE check [-c CONFIG]`): why it failed, if it did.
pub(crate) type PreflightResult = Result<(), String>;

/// Everything that happens to the supervisor arrives as one of these, in one queue.
#[derive(Debug)]
pub(crate) enum Event {
    /// A message from worker `id`.
    FromWorker(WorkerId, Msg, Vec<OwnedFd>),
    /// Worker `id` closed its channel.
    ChannelClosed(WorkerId),
    /// A child exited.
    Exited(Pid, WaitStatus),
    /// Worker `id` exited (how: `exit status 1`, …) and its stderr and channel have been read
    /// to the end.
    Reaped(WorkerId, String),
    /// An operation asked for from outside the workers (signal, control socket, watcher).
    Op(Op, Reply),
    /// A signal to the supervisor.
    Stop(&'static str),
    /// Worker `id` has had `graceful_timeout` to become ready.
    ReadyDeadline(WorkerId),
    /// Worker `id` has had `shutdown_timeout` to drain.
    DrainDeadline(WorkerId),
    /// Time to start a replacement for a dead worker.
    Respawn,
    /// The pause after a handoff is over: start the next standby.
    StandbyDue,
    /// The shutdown took too long.
    ForceExit,
    /// `shutdown_delay` is over: drain.
    ShutdownDelayOver,
    /// A watcher asks for a preflight run of the executable (`EXE check [-c CONFIG]`).
    Preflight(oneshot::Sender<PreflightResult>),
    /// A preflight run has had its time.
    PreflightDeadline(Pid),
    /// Time to look at the serving worker's `recycle` limits.
    RecycleTick,
    /// The resident memory of worker `id`, read for a recycle look.
    RecycleMemory(WorkerId, Option<u64>),
    /// `reopen-logs` `id` has waited long enough for the workers.
    ReopenDeadline(u64),
}

/// Where the answer to an operation goes.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Nobody waits: log it.
    Log,
    /// A task in the supervisor (a watcher, the control socket).
    Local(oneshot::Sender<OpResult>),
    /// A control socket client: the task serving it waits on `tx`; `conn` is its connection,
    /// kept so that a re-executed supervisor can answer it.
    Client {
        /// The serving task's end.
        tx: oneshot::Sender<OpResult>,
        /// The client's connection.
        conn: OwnedFd,
    },
    /// A control socket client whose request a previous supervisor image received: the answer
    /// is written to this connection.
    HandedOver(OwnedFd),
    /// The file watch, after a change of `what` (`executable`, `config`).
    Watcher {
        /// The watch task's end.
        tx: oneshot::Sender<OpResult>,
        /// What changed.
        what: &'static str,
    },
    /// The file watch of a previous supervisor image, after a change of `what`: the outcome is
    /// logged as that watch would have.
    WatcherHandedOver(String),
    /// A request from a worker: answer on its channel.
    Worker {
        /// The worker that asked.
        worker: WorkerId,
        /// Its request id.
        id: u64,
    },
}
