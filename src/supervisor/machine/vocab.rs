//! The restart machine's vocabulary: what goes in ([`Event`]), what comes out ([`Action`],
//! [`Timer`], [`Notify`]), where it is ([`Phase`]) and what asked ([`Trigger`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::channel::{OpResult, WorkerSettings};

/// A worker process's id inside the supervisor (not its generation number).
pub(crate) type WorkerId = u64;

/// First delay before a crashed worker is replaced.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay before a crashed worker is replaced.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A generation that served this long resets the backoff when it dies.
pub(crate) const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
/// How much longer than `shutdown_timeout` a draining worker gets before it is killed.
pub(crate) const DRAIN_KILL_MARGIN: Duration = Duration::from_secs(2);
/// After a failed recycle, the least time before the next try (doubling to
/// [`RECYCLE_RETRY_MAX`] while they keep failing).
pub(crate) const RECYCLE_RETRY_MIN: Duration = Duration::from_secs(10);
/// The longest wait between tries of a recycle that keeps failing.
pub(crate) const RECYCLE_RETRY_MAX: Duration = Duration::from_secs(600);
/// How much longer than `shutdown_timeout` the whole shutdown may take.
pub(crate) const SHUTDOWN_EXIT_MARGIN: Duration = Duration::from_secs(5);

/// What asked for a restart (recorded in the status, logged as `via`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The first start.
    Start,
    /// Replacing a worker that died.
    Recovery,
    /// SIGUSR1 (to the supervisor or a worker).
    Signal,
    /// The admin routes.
    Admin,
    /// The control socket (`apphost restart`).
    Cli,
    /// The executable or config watch.
    Watch,
    /// `ops::restart` in a handler.
    Library,
    /// A request that did not say.
    Request,
    /// `recycle`: the serving worker passed one of its limits.
    Recycle,
    /// A name this version does not know (a newer worker's).
    Other(String),
}

impl Trigger {
    /// The trigger an operation's `via` names (`None`: [`Trigger::Request`]).
    pub(crate) fn from_via(via: Option<&str>) -> Trigger {
        match via {
            None | Some("request") => Trigger::Request,
            Some("start") => Trigger::Start,
            Some("recovery") => Trigger::Recovery,
            Some("signal") => Trigger::Signal,
            Some("admin") => Trigger::Admin,
            Some("cli") => Trigger::Cli,
            Some("watch") => Trigger::Watch,
            Some("library") => Trigger::Library,
            Some("recycle") => Trigger::Recycle,
            Some(other) => Trigger::Other(other.to_string()),
        }
    }

    /// Its name, as in `via`.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Trigger::Start => "start",
            Trigger::Recovery => "recovery",
            Trigger::Signal => "signal",
            Trigger::Admin => "admin",
            Trigger::Cli => "cli",
            Trigger::Watch => "watch",
            Trigger::Library => "library",
            Trigger::Request => "request",
            Trigger::Recycle => "recycle",
            Trigger::Other(s) => s,
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A restart under way: who waits for it and what it starts.
#[derive(Debug)]
pub(crate) struct Pending<R> {
    /// When it was asked for.
    pub(crate) asked_at: Instant,
    /// Who waits for the outcome.
    pub(crate) waiters: Vec<R>,
    /// What asked.
    pub(crate) trigger: Trigger,
    /// The executable it starts.
    pub(crate) exe: PathBuf,
    /// The pid of the generation it replaces, when one served as it was asked for (a full
    /// restart reports it after that generation has exited).
    pub(crate) old_pid: Option<u32>,
}

/// Where the machine is. Each variant carries the workers and the restart it is about.
#[derive(Debug)]
pub(crate) enum Phase<R> {
    /// `current` serves; nothing under way.
    Serving {
        /// The serving worker.
        current: WorkerId,
    },
    /// Graceful restart: `new` is starting while `current` serves.
    Starting {
        /// The serving worker.
        current: WorkerId,
        /// The starting one.
        new: WorkerId,
        /// The restart.
        pending: Pending<R>,
    },
    /// Full restart: `old` drains; then `pending.exe` starts.
    Stopping {
        /// The draining worker.
        old: WorkerId,
        /// The restart.
        pending: Pending<R>,
    },
    /// `new` starts with nothing serving (first start, full restart, recovery).
    Recovering {
        /// The starting worker.
        new: WorkerId,
        /// The restart.
        pending: Pending<R>,
        /// The host's first start: failing it ends the host.
        first: bool,
    },
    /// A restart to another executable: first the supervisor re-executes itself from it
    /// (preflight, then `execve`), while `current` serves; then the restart goes on as
    /// `Starting` or `Stopping` (see `upgrade`).
    Upgrading {
        /// The serving worker.
        current: WorkerId,
        /// The restart.
        pending: Pending<R>,
    },
    /// Nothing serves; a replacement is due after the backoff.
    Down,
    /// Shutting down: first, for `shutdown_delay` (`delaying`), every worker keeps serving while
    /// its `ready` answers 503; then every worker drains, and the supervisor exits.
    ShuttingDown {
        /// The worker that was serving, until it exits.
        current: Option<WorkerId>,
        /// Still in `shutdown_delay`: nothing drains yet.
        delaying: bool,
    },
}

impl<R> Phase<R> {
    /// The name `status` shows.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Phase::Serving { .. } | Phase::Down => "serving",
            Phase::Starting { .. } | Phase::Stopping { .. } | Phase::Upgrading { .. } => {
                "restarting"
            }
            Phase::Recovering { .. } => "recovering",
            Phase::ShuttingDown { delaying: true, .. } => "going_away",
            Phase::ShuttingDown { .. } => "shutting_down",
        }
    }

    /// The worker whose generation serves (or drains for a full restart).
    pub(crate) fn current(&self) -> Option<WorkerId> {
        match self {
            Phase::Serving { current }
            | Phase::Starting { current, .. }
            | Phase::Upgrading { current, .. } => Some(*current),
            Phase::Stopping { old, .. } => Some(*old),
            Phase::ShuttingDown { current, .. } => *current,
            Phase::Recovering { .. } | Phase::Down => None,
        }
    }
}

/// A timer the driver arms; it comes back as the event of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// `graceful_timeout` for a starting worker.
    ReadyDeadline(WorkerId),
    /// `shutdown_timeout` (and a margin) for a draining worker.
    DrainDeadline(WorkerId),
    /// The backoff before replacing a dead worker.
    Respawn,
    /// The whole shutdown's deadline.
    ForceExit,
    /// The end of `shutdown_delay`: the drain begins.
    ShutdownDelay,
    /// The pause after a handoff before the next standby starts.
    Standby,
}

/// A systemd state change to announce (`sd_notify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notify {
    /// The first generation is ready (`READY=1`, `MAINPID=`).
    FirstReady,
    /// A restart ended (`READY=1`).
    Ready,
    /// A restart began (`RELOADING=1`).
    Reloading,
    /// Shutdown began (`STOPPING=1`).
    Stopping,
}

/// Why a worker is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillReason {
    /// Not ready within `graceful_timeout`.
    NotReady,
    /// Still running past `shutdown_timeout`.
    DrainTimeout,
    /// A warm standby that is not needed (it does not fit the restart, or the host stops or no
    /// longer wants one). It has served nothing, so nothing is lost; and it may not be an
    /// apphost worker at all (the executable was replaced by something else just before it
    /// started), which would ignore a drain and keep every listener until the drain deadline.
    UnusedStandby,
}

/// Something for the driver to do.
#[derive(Debug, PartialEq)]
pub(crate) enum Action<R> {
    /// Start a worker process from `exe`: generation `generation`, or a standby (`None`). If it
    /// cannot be started, feed back [`Event::SpawnFailed`].
    Spawn {
        /// Its id.
        worker: WorkerId,
        /// Its generation number; `None` for a standby.
        generation: Option<u64>,
        /// The executable.
        exe: PathBuf,
    },
    /// Tell the standby `worker` to become generation `generation`.
    Activate {
        /// The standby.
        worker: WorkerId,
        /// The number it takes.
        generation: u64,
    },
    /// Log that a restart was asked for (after the actions that start it: a standby's
    /// `activate` goes out first).
    Requested {
        /// Who asked (`signal`, `control`, …).
        via: String,
        /// The executable the restart runs.
        exe: PathBuf,
        /// Whether the restart is graceful.
        graceful: bool,
    },
    /// Tell `worker` to stop accepting and drain.
    Drain {
        /// The worker.
        worker: WorkerId,
        /// The whole host is shutting down (the worker's log wording).
        shutdown: bool,
    },
    /// Tell `worker` the host is going away: its `ready` answers 503 from now on, while it
    /// keeps accepting and serving until it is told to drain.
    GoingAway {
        /// The worker.
        worker: WorkerId,
    },
    /// SIGKILL `worker` (its process group).
    Kill {
        /// The worker.
        worker: WorkerId,
        /// Why (for the log).
        why: KillReason,
    },
    /// SIGKILL every worker.
    KillAll,
    /// Feed back the timer's event after `after`.
    Arm {
        /// The delay.
        after: Duration,
        /// Which.
        timer: Timer,
    },
    /// Answer an operation.
    Reply {
        /// Who waits.
        to: R,
        /// The answer.
        result: OpResult,
    },
    /// Close every listener whose key is not in the list (the new generation does not serve it).
    KeepListeners(Vec<String>),
    /// The host has stopped serving for good (a shutdown's drain began): close every listener,
    /// so that, with the draining workers' copies dropped too, a new connection is refused at
    /// once (a balancer fails over) instead of waiting in a queue nobody accepts from.
    CloseListeners,
    /// The serving generation's settings changed (the file watch may need to follow).
    SettingsChanged,
    /// Check that the supervisor can re-execute itself from `exe` (a preflight that reads the
    /// state it would hand over); feed back [`Event::UpgradeChecked`].
    CheckUpgrade {
        /// The new executable.
        exe: PathBuf,
    },
    /// Re-execute the supervisor from `exe`, handing its state over (the machine's included,
    /// in [`Phase::Upgrading`]). Returns only if `execve` failed: feed back
    /// [`Event::ReexecFailed`].
    Reexec {
        /// The new executable.
        exe: PathBuf,
    },
    /// Announce to systemd.
    Notify(Notify),
    /// Exit the supervisor with this code.
    Exit(u8),
}

/// Something that happened, for the machine to decide on.
#[derive(Debug)]
pub(crate) enum Event<R> {
    /// The supervisor has started: start the first generation.
    Start {
        /// Now.
        now: Instant,
    },
    /// A restart was asked for.
    Restart {
        /// Who asked.
        trigger: Trigger,
        /// The executable to run, checked by the driver (or why it cannot be used).
        exe: Result<PathBuf, String>,
        /// Whether the warm standby runs that very executable (the recorded one, unchanged on
        /// disk since the standby started, and no other executable was asked for).
        standby_fits: bool,
        /// The executable is not the file the supervisor runs: re-execute the supervisor from
        /// it first (when something serves meanwhile).
        upgrade: bool,
        /// Where the answer goes.
        reply: R,
        /// Now.
        now: Instant,
    },
    /// A shutdown was asked for (not by a signal).
    Shutdown {
        /// Where the answer goes.
        reply: R,
    },
    /// A stop signal (SIGINT, SIGTERM, SIGQUIT, SIGHUP) reached the supervisor.
    StopSignal {
        /// Its name.
        name: &'static str,
    },
    /// `worker` reported ready.
    Ready {
        /// The worker.
        worker: WorkerId,
        /// Its pid.
        pid: u32,
        /// Its settings.
        settings: WorkerSettings,
        /// Now.
        now: Instant,
    },
    /// `worker` has exited and its last words are in.
    Exited {
        /// The worker.
        worker: WorkerId,
        /// `exit status 2`, `killed by signal KILL`, ….
        status: String,
        /// Why, for a failure report: what it reported, else its status and last output.
        reason: String,
        /// Its pid (for the log).
        pid: u32,
        /// Now.
        now: Instant,
    },
    /// [`Action::Spawn`] of `worker` failed.
    SpawnFailed {
        /// The worker.
        worker: WorkerId,
        /// Why.
        reason: String,
    },
    /// [`Timer::ReadyDeadline`] fired.
    ReadyDeadline {
        /// The worker.
        worker: WorkerId,
        /// The end of its output, for the report.
        tail: String,
    },
    /// [`Timer::DrainDeadline`] fired.
    DrainDeadline {
        /// The worker.
        worker: WorkerId,
    },
    /// [`Timer::Standby`] fired.
    StandbyDue,
    /// [`Timer::Respawn`] fired.
    Respawn {
        /// Now.
        now: Instant,
    },
    /// The serving worker `worker` passed a `recycle` limit (`reason`): a restart with trigger
    /// [`Trigger::Recycle`] if nothing else is under way and no failed recycle is too recent;
    /// otherwise nothing (the driver asks again on its next look).
    Recycle {
        /// The worker that passed it.
        worker: WorkerId,
        /// Which limit, for the log.
        reason: String,
        /// As for [`Event::Restart`].
        exe: Result<PathBuf, String>,
        /// As for [`Event::Restart`].
        standby_fits: bool,
        /// As for [`Event::Restart`].
        upgrade: bool,
        /// Where the restart's answer goes (the driver's log).
        reply: R,
        /// Now.
        now: Instant,
    },
    /// [`Timer::ForceExit`] fired.
    ForceExit,
    /// [`Timer::ShutdownDelay`] fired.
    ShutdownDelayOver,
    /// The preflight of [`Action::CheckUpgrade`] ended: `Err` says why the new executable cannot
    /// take over the supervisor (the restart then goes on with this supervisor).
    UpgradeChecked {
        /// The outcome.
        result: Result<(), String>,
    },
    /// [`Action::Reexec`]'s `execve` failed (the restart goes on with this supervisor).
    ReexecFailed {
        /// Why.
        reason: String,
    },
    /// The supervisor was re-executed with a handover and resumes (a machine from
    /// [`Machine::restore`](super::Machine::restore)): `None` when the new image has taken over; `Some(why)` when it
    /// could not and this is the previous image again (the restart fails, the old code serves).
    Resumed {
        /// Why the new image could not take over.
        takeover_failed: Option<String>,
        /// Now.
        now: Instant,
    },
}

/// The restart settings in force (the first config's, then each ready generation's).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    /// `graceful`.
    pub(crate) graceful: bool,
    /// `graceful_timeout`.
    pub(crate) graceful_timeout: Duration,
    /// `shutdown_timeout`.
    pub(crate) shutdown_timeout: Duration,
    /// `shutdown_delay`.
    pub(crate) shutdown_delay: Duration,
    /// `warm_standby` (known once a generation has reported it).
    pub(crate) warm_standby: bool,
}
