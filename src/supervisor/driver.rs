//! The supervisor's driver: the thin shell around the restart [`Machine`]. It turns what happens
//! (a worker's message, a child's exit, a signal, an operation, a timer) into the machine's
//! events, and performs the actions the machine returns: it starts and signals worker
//! processes, holds the listening sockets, arms timers, answers askers, announces to systemd,
//! and runs the preflight checks and the file watch. It decides nothing about restarts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};

use super::events::{Event, PreflightResult, Reply};
use super::generation::{self, Generation};
use super::machine::{self, Action, KillReason, Machine, Notify, Timer, Trigger, WorkerId};
use super::{control, exe, systemd, watchers};
use crate::channel::{Msg, Op, OpReply, OpResult, Status};
use crate::config::Config;

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
    listeners: BTreeMap<String, OwnedFd>,
    /// Worker processes by id, until reaped.
    workers: BTreeMap<WorkerId, Generation>,
    /// What a worker reported before failing, for the failure's reason.
    fail_reasons: BTreeMap<WorkerId, String>,
    /// The standby and the identity of the executable file it was started from.
    standby_file: Option<(WorkerId, Option<crate::watch::FileId>)>,
    started: Instant,
    exit: Option<ExitCode>,
    preflights: BTreeMap<i32, Preflight>,
    watch: Option<(watchers::WatchSpec, tokio::task::AbortHandle)>,
}

/// A preflight run under way: who waits for it, and its stderr.
struct Preflight {
    reply: oneshot::Sender<PreflightResult>,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    timed_out: bool,
}

/// Run the supervisor until the host shuts down. Returns the process exit code.
pub(crate) fn run(opts: Options) -> ExitCode {
    // Whatever started us may have left descriptors open; workers get only what is passed.
    if let Err(e) = crate::sys::cloexec_from(3) {
        tracing::warn!("cannot mark inherited descriptors close-on-exec: {e}");
    }
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
        let settings = machine::Settings {
            graceful: opts.config.graceful,
            graceful_timeout: opts.config.graceful_timeout,
            shutdown_timeout: opts.config.shutdown_timeout,
            shutdown_delay: opts.config.shutdown_delay,
            warm_standby: false,
        };
        let mut d = Driver {
            machine: Machine::new(opts.exe.clone(), settings, crate::clock::now_unix),
            listeners: systemd::activated_sockets(),
            opts,
            events: tx,
            workers: BTreeMap::new(),
            fail_reasons: BTreeMap::new(),
            standby_file: None,
            started: Instant::now(),
            exit: None,
            preflights: BTreeMap::new(),
            watch: None,
        };
        d.main_loop(rx).await
    })
}

fn describe_status(st: WaitStatus) -> String {
    if let Some(code) = st.exit_status() {
        format!("exit status {code}")
    } else if let Some(sig) = st.terminating_signal() {
        let name = Signal::from_named_raw(sig)
            .map(|s| format!("{s:?}"))
            .unwrap_or_else(|| sig.to_string());
        format!("killed by signal {name}")
    } else {
        format!("{st:?}")
    }
}

impl Driver {
    async fn main_loop(&mut self, mut rx: mpsc::UnboundedReceiver<Event>) -> ExitCode {
        self.spawn_signal_tasks();
        tracing::info!(
            exe = %self.opts.exe.display(),
            config = %self.opts.config.source,
            graceful = self.machine.settings().graceful,
            "supervisor started"
        );
        // The control socket for `apphost status|restart|shutdown`.
        let control = control::ControlServer::start(&self.opts.config, self.events.clone());
        self.feed(machine::Event::Start {
            now: Instant::now(),
        });
        self.update_watch();
        while self.exit.is_none() {
            let Some(ev) = rx.recv().await else { break };
            self.handle(ev);
        }
        if let Some(c) = control {
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
            Event::ShutdownDelayOver => self.feed(machine::Event::ShutdownDelayOver),
            Event::Preflight(reply) => self.start_preflight(reply),
            Event::PreflightDeadline(pid) => {
                if let Some(p) = self.preflights.get_mut(&pid.as_raw_nonzero().get()) {
                    p.timed_out = true;
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
            }
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
                let g = self.workers.get(&worker)?;
                let chan = g.chan.clone();
                tokio::spawn(async move {
                    if let Err(e) = chan.send(&Msg::Activate { generation }, &[]).await {
                        tracing::debug!("cannot activate the standby: {e}");
                    }
                });
                self.standby_file = None;
                tracing::info!(generation, pid = g.pid_u32(), exe = %self.machine.recorded_exe().display(), "worker started");
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
                };
                self.after(after, ev);
            }
            Action::Reply { to, result } => self.reply(to, result),
            Action::KeepListeners(keys) => {
                // Sockets whose address left the config: the new generation never took them;
                // the old one holds its own copy until it stops accepting.
                let keep: BTreeSet<&String> = keys.iter().collect();
                let gone: Vec<String> = self
                    .listeners
                    .keys()
                    .filter(|k| !keep.contains(k))
                    .cloned()
                    .collect();
                for k in gone {
                    tracing::info!("listener [{k}] left the config; closing it");
                    self.listeners.remove(&k);
                }
            }
            Action::CloseListeners => {
                if !self.listeners.is_empty() {
                    tracing::info!("closing the listening sockets: new connections are refused");
                }
                self.listeners.clear();
            }
            Action::SettingsChanged => self.update_watch(),
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
        let fds: Vec<(String, &OwnedFd)> =
            self.listeners.iter().map(|(k, v)| (k.clone(), v)).collect();
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
        let g = match spawned {
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
                // What it runs, not what `exe` names: the file may be replaced between the
                // spawn and a look at it. `spawn` returns once the exec is done, so this is the
                // executable the kernel loaded (for a script, its interpreter: such a standby
                // never fits, and a restart starts a fresh worker).
                let runs = crate::watch::file_id(Path::new(&format!("/proc/{}/exe", g.pid_u32())));
                self.standby_file = Some((worker, runs));
            }
        }
        self.workers.insert(worker, g);
        None
    }

    fn after(&self, d: Duration, ev: Event) {
        let tx = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let _ = tx.send(ev);
        });
    }

    /// Send `msg` (`drain`, `going_away`) to `worker`.
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
                for (key, fd) in std::mem::take(&mut g.bound) {
                    self.listeners.entry(key).or_insert(fd);
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
            other => tracing::debug!(?other, "unexpected message from a worker"),
        }
    }

    fn on_exit(&mut self, pid: Pid, st: WaitStatus) {
        if let Some(p) = self.preflights.remove(&pid.as_raw_nonzero().get()) {
            let out = p
                .output
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .trim()
                .to_string();
            let r = if p.timed_out {
                Err(format!(
                    "preflight `check` did not finish within {} s",
                    crate::watch::PREFLIGHT_TIMEOUT.as_secs()
                ))
            } else if st.exit_status() == Some(0) {
                Ok(())
            } else {
                Err(format!(
                    "preflight `check` failed ({}): {out}",
                    describe_status(st)
                ))
            };
            let _ = p.reply.send(r);
            return;
        }
        let Some((&id, g)) = self
            .workers
            .iter_mut()
            .find(|(_, g)| g.pid == pid && !g.exited)
        else {
            tracing::debug!(pid = pid.as_raw_nonzero().get(), "reaped an orphan");
            return;
        };
        // Judge the exit only once its last stderr lines and channel messages (a `failed`
        // reason) are in: they may still be in flight behind the SIGCHLD.
        g.exited = true;
        let tasks = std::mem::take(&mut g.tasks);
        let events = self.events.clone();
        tokio::spawn(async move {
            for t in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
            }
            let _ = events.send(Event::Reaped(id, st));
        });
    }

    fn on_reaped(&mut self, worker: WorkerId, st: WaitStatus) {
        let Some(g) = self.workers.remove(&worker) else {
            return;
        };
        if self
            .standby_file
            .as_ref()
            .is_some_and(|(s, _)| *s == worker)
        {
            self.standby_file = None;
        }
        let status = describe_status(st);
        let reported = self.fail_reasons.remove(&worker);
        let tail = g.stderr_tail();
        let reason = match reported {
            Some(r) => format!("{r} ({status})"),
            None if tail.is_empty() => status.clone(),
            None => format!("{status}; last output:\n{tail}"),
        };
        self.feed(machine::Event::Exited {
            worker,
            status,
            reason,
            pid: g.pid_u32(),
            now: Instant::now(),
        });
    }

    fn on_op(&mut self, op: Op, reply: Reply) {
        match op {
            Op::Status => {
                let s = self.status();
                self.reply(reply, Ok(OpReply::Status(s)));
            }
            Op::Shutdown => self.feed(machine::Event::Shutdown { reply }),
            Op::ReopenLogs => {
                let workers = self.reopen_logs();
                self.reply(reply, Ok(OpReply::LogsReopened { workers }));
            }
            Op::Restart { exe, via } => {
                let trigger = Trigger::from_via(via.as_deref());
                let given = exe.filter(|s| !s.is_empty());
                let recorded = self.machine.recorded_exe().clone();
                let checked = match &given {
                    Some(p) => exe::check(Path::new(p)),
                    None => exe::check(&recorded),
                };
                // The standby runs the recorded executable as it was when the standby started.
                let standby_fits = given.is_none()
                    && checked.as_ref().is_ok_and(|e| *e == recorded)
                    && self.standby_file.as_ref().is_some_and(|(_, file)| {
                        file.is_some() && crate::watch::file_id(&recorded) == *file
                    });
                self.feed(machine::Event::Restart {
                    trigger,
                    exe: checked,
                    standby_fits,
                    reply,
                    now: Instant::now(),
                });
            }
        }
    }

    /// Run `EXE check [-c CONFIG]`; the answer goes to `reply` when it exits.
    fn start_preflight(&mut self, reply: oneshot::Sender<PreflightResult>) {
        let mut cmd = self.opts.launch.command(
            self.machine.recorded_exe(),
            crate::launch::Role::Check,
            self.opts.config_path.as_deref(),
        );
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .env_remove("NOTIFY_SOCKET");
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = reply.send(Err(format!(
                    "cannot run {}: {e}",
                    self.machine.recorded_exe().display()
                )));
                return;
            }
        };
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let out = output.clone();
            let fd: OwnedFd = err.into();
            if let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = Vec::new();
                    let _ = rx.take(16 * 1024).read_to_end(&mut buf).await;
                    *out.lock().unwrap_or_else(|e| e.into_inner()) =
                        String::from_utf8_lossy(&buf).into_owned();
                });
            }
        }
        let pid = child.id() as i32;
        // Reaped by the supervisor's own loop, like every child.
        drop(child);
        if let Some(p) = Pid::from_raw(pid) {
            self.after(crate::watch::PREFLIGHT_TIMEOUT, Event::PreflightDeadline(p));
        }
        self.preflights.insert(
            pid,
            Preflight {
                reply,
                output,
                timed_out: false,
            },
        );
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

    /// Tell every live worker (serving, draining, starting; not the warm standby, which has
    /// opened nothing yet) to reopen its access log files; how many were told. Not a restart:
    /// the machine is not involved, nothing waits.
    fn reopen_logs(&self) -> u32 {
        let standby = self.standby_file.as_ref().map(|(id, _)| *id);
        let mut told = 0;
        for (_, g) in self
            .workers
            .iter()
            .filter(|(id, g)| !g.exited && Some(**id) != standby)
        {
            let chan = g.chan.clone();
            told += 1;
            tokio::spawn(async move {
                let _ = chan.send(&Msg::ReopenLogs, &[]).await;
            });
        }
        told
    }

    fn status(&self) -> Status {
        let cur = self.machine.current();
        Status {
            supervisor_pid: std::process::id(),
            worker_pid: cur
                .and_then(|w| self.workers.get(&w))
                .map(Generation::pid_u32),
            generation: cur.and_then(|w| self.machine.generation_of(w)).unwrap_or(0),
            exe: self.machine.recorded_exe().display().to_string(),
            config: self.opts.config.source.to_string(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            generation_uptime_s: cur
                .and_then(|w| self.machine.ready_at(w))
                .map(|t| t.elapsed().as_secs_f64())
                .unwrap_or(0.0),
            graceful: self.machine.settings().graceful,
            listeners: self.listeners.keys().cloned().collect(),
            phase: self.machine.phase().name().into(),
            restarts: self.machine.restarts(),
            last_restart: self.machine.last_restart().cloned(),
        }
    }

    fn reply(&self, to: Reply, r: OpResult) {
        match to {
            Reply::Log => match &r {
                Ok(_) => {}
                Err(e) => tracing::warn!("{e}"),
            },
            Reply::Local(tx) => {
                let _ = tx.send(r);
            }
            Reply::Worker { worker, id } => {
                let Some(g) = self.workers.get(&worker) else {
                    return;
                };
                let chan = g.chan.clone();
                let result = serde_json::to_value(&r).unwrap_or(serde_json::Value::Null);
                tokio::spawn(async move {
                    let _ = chan.send(&Msg::Reply { id, result }, &[]).await;
                });
            }
        }
    }
}
