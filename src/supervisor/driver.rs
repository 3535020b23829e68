//! The supervisor's driver: the thin shell around the restart [`Machine`]. It turns what happens
//! (a worker's message, a child's exit, a signal, an operation, a timer) into the machine's
//! events, and performs the actions the machine returns: it starts and signals worker
//! processes, holds the listening sockets, arms timers, answers askers, announces to systemd,
//! and runs the preflight checks and the file watch. It decides nothing about restarts.
//!
//! `preflight`: the `check` runs of a new executable or config; `reexec`: the supervisor
//! re-executing itself in place from a new executable, and resuming from a handover; `recycle`:
//! the look at the serving worker's `recycle` limits.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::events::{Event, Reply};
use super::generation::{self, Generation};
use super::machine::{self, Action, KillReason, Machine, Notify, Timer, Trigger, WorkerId};
use super::sockets::ListenerSet;
use super::{control, exe, systemd, watchers};
use crate::channel::{Msg, Op, OpReply, OpResult, Status};
use crate::config::Config;

mod answers;
mod exits;
mod preflight;
mod recycle;
mod reexec;
mod reopen;
mod takeover;

pub(crate) use takeover::{check_handover_from_env, resume_from_env};

/// What the supervisor needs to start.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// The executable recorded at start; restarts run it unless told otherwise.
    pub(crate) exe: PathBuf,
    /// How it is started as a worker or a check.
    pub(crate) launch: crate::launch::Launch,
    /// The config file (absolute), `None` for the embedded default.
    pub(crate) config_path: Option<PathBuf>,
    /// The config as loaded at start (its settings apply until a worker reports its own).
    pub(crate) config: Config,
}

struct Driver {
    opts: Options,
    events: mpsc::UnboundedSender<Event>,
    machine: Machine<Reply>,
    listeners: ListenerSet,
    /// Worker processes by id, until reaped.
    workers: BTreeMap<WorkerId, Generation>,
    /// What a worker reported before failing, for the failure's reason.
    fail_reasons: BTreeMap<WorkerId, String>,
    /// The standby and the identity of the executable file it was started from.
    standby_file: Option<(WorkerId, Option<crate::watch::FileId>)>,
    started: Instant,
    exit: Option<ExitCode>,
    preflights: BTreeMap<i32, preflight::Preflight>,
    watch: Option<(watchers::WatchSpec, tokio::task::AbortHandle)>,
    /// The control socket's server.
    control: Option<control::ControlServer>,
    /// The supervisor's own image: the file it runs (what a restart's executable is compared
    /// with) and a descriptor of it (to come back to if a new image cannot take over).
    image: reexec::Image,
    /// An `execve` of the supervisor asked for by the machine, done once the current event is
    /// handled.
    reexec: Option<PathBuf>,
    /// The host's request counters (see `observe`).
    totals: crate::observe::host::HostTotals,
    /// Recycling's look at the serving worker (see `recycle`).
    recycle: recycle::RecycleWatch,
    /// The `reopen-logs` waiting for workers (see `reopen`).
    reopens: reopen::Reopens,
}

/// Run the supervisor until the host shuts down. Returns the process exit code.
pub(crate) fn run(opts: Options) -> ExitCode {
    // Whatever started us may have left descriptors open; workers get only what is passed.
    if let Err(e) = crate::sys::cloexec_from(3) {
        tracing::warn!("cannot mark inherited descriptors close-on-exec: {e}");
    }
    drive(move |tx| {
        let settings = machine::Settings {
            graceful: opts.config.graceful,
            graceful_timeout: opts.config.graceful_timeout,
            shutdown_timeout: opts.config.shutdown_timeout,
            shutdown_delay: opts.config.shutdown_delay,
            warm_standby: false,
        };
        let mut d = Driver::new(
            Machine::new(opts.exe.clone(), settings, crate::clock::now_unix),
            opts,
            tx,
            reexec::Image::running(),
        );
        d.listeners = ListenerSet::from_systemd();
        tracing::info!(
            exe = %d.opts.exe.display(),
            config = %d.opts.config.source,
            graceful = d.machine.settings().graceful,
            "supervisor started"
        );
        // The control socket for `apphost status|restart|shutdown`.
        d.control = control::ControlServer::start(&d.opts.config, d.events.clone());
        Some((
            d,
            machine::Event::Start {
                now: Instant::now(),
            },
        ))
    })
}

/// Build the driver with `build` (on the runtime, with the events' sender; `None`: it could not
/// be built, exit 1), feed it its first event, and run it until the host shuts down.
fn drive(
    build: impl FnOnce(mpsc::UnboundedSender<Event>) -> Option<(Driver, machine::Event<Reply>)>,
) -> ExitCode {
    // Set again after a re-exec: `execve` keeps it, but nothing is lost by saying so twice.
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        tracing::debug!("cannot become a child subreaper: {e}");
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let (tx, rx) = mpsc::unbounded_channel();
        let Some((mut d, first)) = build(tx) else {
            return ExitCode::from(1);
        };
        d.main_loop(rx, first).await
    })
}

impl Driver {
    fn new(
        machine: Machine<Reply>,
        opts: Options,
        events: mpsc::UnboundedSender<Event>,
        image: reexec::Image,
    ) -> Driver {
        Driver {
            machine,
            listeners: ListenerSet::default(),
            opts,
            events,
            workers: BTreeMap::new(),
            fail_reasons: BTreeMap::new(),
            standby_file: None,
            started: Instant::now(),
            exit: None,
            preflights: BTreeMap::new(),
            watch: None,
            control: None,
            image,
            reexec: None,
            totals: Default::default(),
            recycle: recycle::RecycleWatch::default(),
            reopens: reopen::Reopens::default(),
        }
    }

    async fn main_loop(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<Event>,
        first: machine::Event<Reply>,
    ) -> ExitCode {
        self.spawn_signal_tasks();
        // Signals held across a re-exec (or blocked by whatever started us) come through now
        // that they have handlers.
        if let Err(e) = crate::sys::unblock_stop_signals() {
            tracing::warn!("cannot unblock signals: {e}");
        }
        self.feed(first);
        self.update_watch();
        self.update_recycle_watch();
        while self.exit.is_none() {
            let Some(ev) = rx.recv().await else { break };
            self.handle(ev);
            if let Some(exe) = self.reexec.take() {
                self.settle_before_exec(&mut rx).await;
                self.reexec(&exe);
            }
        }
        if let Some(c) = self.control.take() {
            c.close().await;
        }
        self.exit.take().unwrap_or(ExitCode::SUCCESS)
    }

    fn spawn_signal_tasks(&self) {
        let tx = self.events.clone();
        tokio::spawn(async move {
            let Ok(mut chld) = signal(SignalKind::child()) else {
                tracing::error!("cannot watch SIGCHLD; child exits will go unnoticed");
                return;
            };
            loop {
                // Reap everything that has exited: our workers, and orphans when we are PID 1 or
                // a subreaper.
                while let Ok(Some((pid, st))) = rustix::process::wait(WaitOptions::NOHANG) {
                    if tx.send(Event::Exited(pid, st)).is_err() {
                        return;
                    }
                }
                if chld.recv().await.is_none() {
                    return;
                }
            }
        });
        for (kind, name) in [
            (SignalKind::interrupt(), "SIGINT"),
            (SignalKind::terminate(), "SIGTERM"),
            (SignalKind::quit(), "SIGQUIT"),
            (SignalKind::hangup(), "SIGHUP"),
            (SignalKind::user_defined1(), "SIGUSR1"),
        ] {
            let tx = self.events.clone();
            match signal(kind) {
                Ok(mut s) => {
                    tokio::spawn(async move {
                        while s.recv().await.is_some() {
                            let ev = if name == "SIGUSR1" {
                                Event::Op(
                                    Op::Restart {
                                        exe: None,
                                        via: Some("signal".into()),
                                    },
                                    Reply::Log,
                                )
                            } else {
                                Event::Stop(name)
                            };
                            if tx.send(ev).is_err() {
                                return;
                            }
                        }
                    });
                }
                Err(e) => tracing::warn!("cannot handle {name}: {e}"),
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::FromWorker(id, msg, fds) => self.on_worker_msg(id, msg, fds),
            Event::ChannelClosed(id) => tracing::debug!(worker = id, "worker channel closed"),
            Event::Exited(pid, st) => self.on_exit(pid, st),
            Event::Reaped(id, st) => self.on_reaped(id, st),
            Event::Op(op, reply) => self.on_op(op, reply),
            Event::Stop(name) => self.feed(machine::Event::StopSignal { name }),
            Event::ReadyDeadline(worker) => {
                let tail = self
                    .workers
                    .get(&worker)
                    .map(Generation::stderr_tail)
                    .unwrap_or_default();
                self.feed(machine::Event::ReadyDeadline { worker, tail });
            }
            Event::DrainDeadline(worker) => self.feed(machine::Event::DrainDeadline { worker }),
            Event::Respawn => self.feed(machine::Event::Respawn {
                now: Instant::now(),
            }),
            Event::ForceExit => self.feed(machine::Event::ForceExit),
            Event::StandbyDue => self.feed(machine::Event::StandbyDue),
            Event::ShutdownDelayOver => self.feed(machine::Event::ShutdownDelayOver),
            Event::Preflight(reply) => self.start_preflight(reply),
            Event::RecycleTick => self.on_recycle_tick(),
            Event::RecycleMemory(worker, rss) => self.on_recycle_memory(worker, rss),
            Event::PreflightDeadline(pid) => self.preflight_deadline(pid),
            Event::ReopenDeadline(id) => self.finish_reopen(id),
        }
    }

    /// Hand `ev` to the machine and perform what it decides (and what that leads to: a spawn
    /// that fails is fed back at once).
    fn feed(&mut self, ev: machine::Event<Reply>) {
        let mut queue = VecDeque::from([ev]);
        while let Some(ev) = queue.pop_front() {
            for action in self.machine.handle(ev) {
                if let Some(back) = self.perform(action) {
                    queue.push_back(back);
                }
            }
        }
    }

    /// Perform one action; an event for the machine when it could not be done.
    fn perform(&mut self, action: Action<Reply>) -> Option<machine::Event<Reply>> {
        match action {
            Action::Spawn {
                worker,
                generation,
                exe,
            } => return self.spawn(worker, generation, &exe),
            Action::Activate { worker, generation } => {
                // Sent before anything else is done or logged: the handoff waits on it.
                self.send_now(worker, Msg::Activate { generation });
                let g = self.workers.get(&worker)?;
                self.standby_file = None;
                tracing::info!(generation, pid = g.pid_u32(), exe = %self.machine.recorded_exe().display(), "worker started");
            }
            Action::Requested { via, exe, graceful } => {
                tracing::info!(via, exe = %exe.display(), graceful, "restart requested");
            }
            Action::Drain { worker, shutdown } => self.send_now(worker, Msg::Drain { shutdown }),
            Action::GoingAway { worker } => self.send_now(worker, Msg::GoingAway),
            Action::Kill { worker, why } => {
                if let Some(g) = self.workers.get(&worker).filter(|g| !g.exited) {
                    if why == KillReason::DrainTimeout {
                        tracing::warn!(
                            generation = self.machine.generation_of(worker),
                            pid = g.pid_u32(),
                            "still running past shutdown_timeout; killing it"
                        );
                    }
                    g.kill(Signal::KILL);
                }
            }
            Action::KillAll => {
                for g in self.workers.values() {
                    g.kill(Signal::KILL);
                }
            }
            Action::Arm { after, timer } => {
                let ev = match timer {
                    Timer::ReadyDeadline(w) => Event::ReadyDeadline(w),
                    Timer::DrainDeadline(w) => Event::DrainDeadline(w),
                    Timer::Respawn => Event::Respawn,
                    Timer::ForceExit => Event::ForceExit,
                    Timer::ShutdownDelay => Event::ShutdownDelayOver,
                    Timer::Standby => Event::StandbyDue,
                };
                self.after(after, ev);
            }
            Action::Reply { to, result } => self.reply(to, result),
            // Sockets whose address left the config: the new generation never took them; the
            // old one holds its own copy until it stops accepting.
            Action::KeepListeners(keys) => self.listeners.keep(&keys),
            Action::CloseListeners => self.listeners.close_all(),
            Action::SettingsChanged => {
                self.update_watch();
                self.update_recycle_watch();
            }
            Action::CheckUpgrade { exe } => self.start_upgrade_check(&exe),
            Action::Reexec { exe } => self.reexec = Some(exe),
            Action::Notify(n) => match n {
                Notify::FirstReady => {
                    systemd::notify(&format!("READY=1\nMAINPID={}", std::process::id()))
                }
                Notify::Ready => systemd::notify("READY=1"),
                Notify::Reloading => systemd::notify("RELOADING=1"),
                Notify::Stopping => systemd::notify("STOPPING=1"),
            },
            Action::Exit(code) => self.exit = Some(ExitCode::from(code)),
        }
        None
    }

    fn spawn(
        &mut self,
        worker: WorkerId,
        generation: Option<u64>,
        exe: &Path,
    ) -> Option<machine::Event<Reply>> {
        let fds = self.listeners.for_worker();
        // The machine has already moved: in a graceful restart `current` is the generation that
        // goes on serving while this one starts.
        let host_serving = self.machine.current().is_some();
        let slot = generation::Slot {
            worker,
            generation,
            host_serving,
        };
        let spawned = generation::spawn(
            slot,
            exe,
            &self.opts.launch,
            self.opts.config_path.as_deref(),
            &fds,
            self.events.clone(),
        );
        let mut g = match spawned {
            Ok(g) => g,
            Err(e) => {
                return Some(machine::Event::SpawnFailed {
                    worker,
                    reason: format!("cannot start {}: {e}", exe.display()),
                });
            }
        };
        match generation {
            Some(generation) => {
                tracing::info!(generation, pid = g.pid_u32(), exe = %exe.display(), "worker started")
            }
            None => {
                tracing::debug!(pid = g.pid_u32(), "standby worker started");
                self.watch_successor(g.accepting_rx.take());
                // What it runs, not what `exe` names: the file may be replaced between the
                // spawn and a look at it. `spawn` returns once the exec is done, so this is the
                // executable the kernel loaded (for a script, its interpreter: such a standby
                // never fits, and a restart starts a fresh worker).
                let runs = crate::watch::file_id(Path::new(&format!("/proc/{}/exe", g.pid_u32())));
                self.standby_file = Some((worker, runs));
            }
        }
        self.workers.insert(worker, g);
        self.machine.worker_started(generation);
        None
    }

    fn after(&self, d: Duration, ev: Event) {
        let tx = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let _ = tx.send(ev);
        });
    }

    /// Hand the serving worker the read end of a new standby's `accepting` pipe (see
    /// `worker::successor`); with nothing serving it is closed here.
    fn watch_successor(&self, rx: Option<OwnedFd>) {
        let current = self.machine.current().and_then(|w| self.workers.get(&w));
        let (Some(rx), Some(g)) = (rx, current.filter(|g| !g.exited)) else {
            return;
        };
        let chan = g.chan.clone();
        tokio::spawn(async move {
            let _ = chan.send(&Msg::WatchSuccessor, &[rx.as_fd()]).await;
        });
    }

    /// Send `msg` (`activate`, `drain`, `going_away`) to `worker`.
    fn send_now(&mut self, worker: WorkerId, msg: Msg) {
        let Some(g) = self.workers.get(&worker).filter(|g| !g.exited) else {
            return;
        };
        let chan = g.chan.clone();
        // Straight away when the socket takes it (the usual case): the old generation stops
        // accepting sooner, so new connections go to the new one.
        match chan.try_send_now(&msg) {
            Ok(true) => {}
            Ok(false) => {
                tokio::spawn(async move {
                    if let Err(e) = chan.send(&msg, &[]).await {
                        tracing::debug!("cannot send {msg:?}: {e}");
                    }
                });
            }
            Err(e) => tracing::debug!("cannot send {msg:?}: {e}"),
        }
    }

    fn on_worker_msg(&mut self, worker: WorkerId, msg: Msg, fds: Vec<OwnedFd>) {
        match msg {
            Msg::Bound { key } => {
                if let (Some(g), Some(fd)) = (self.workers.get_mut(&worker), fds.into_iter().next())
                {
                    g.bound.push((key, fd));
                }
            }
            Msg::Ready { pid, settings } => {
                let Some(g) = self.workers.get_mut(&worker) else {
                    return;
                };
                // Its sender has ended: nothing is drained for it (see `has_ended`).
                if g.has_ended() {
                    return;
                }
                for (key, fd) in std::mem::take(&mut g.bound) {
                    self.listeners.add_bound(key, fd);
                }
                self.feed(machine::Event::Ready {
                    worker,
                    pid,
                    settings,
                    now: Instant::now(),
                });
            }
            Msg::Failed { reason } => {
                tracing::debug!(worker, "worker reported failure: {reason}");
                self.fail_reasons.insert(worker, reason);
            }
            Msg::Request { id, op } => self.on_op(op, Reply::Worker { worker, id }),
            Msg::Counts { counts } => self.totals.report(worker, counts),
            Msg::MetricsRequest { id } => self.answer_metrics(worker, id),
            Msg::Recycle { reason } => self.on_worker_recycle(worker, reason),
            Msg::LogsReopened { id, files, failed } => {
                self.on_logs_reopened(worker, id, files, failed)
            }
            other => tracing::debug!(?other, "unexpected message from a worker"),
        }
    }

    /// (Re)start the file watch to match the serving generation's `watch` settings.
    fn update_watch(&mut self) {
        let (watch_exe, watch_config, settle) = match self.machine.worker_settings() {
            Some(w) => (
                w.watch_executable,
                w.watch_config,
                Duration::from_millis(w.watch_settle_ms),
            ),
            None => (
                self.opts.config.watch.executable,
                self.opts.config.watch.config,
                self.opts.config.watch.settle,
            ),
        };
        let spec = watchers::WatchSpec {
            exe: watch_exe.then(|| self.machine.recorded_exe().clone()),
            config: if watch_config {
                self.opts.config_path.clone()
            } else {
                None
            },
            settle,
        };
        if self.watch.as_ref().is_some_and(|(s, _)| *s == spec) {
            return;
        }
        if let Some((_, h)) = self.watch.take() {
            h.abort();
        }
        if let Some(h) = watchers::spawn(spec.clone(), self.events.clone()) {
            self.watch = Some((spec, h));
        }
    }
}
