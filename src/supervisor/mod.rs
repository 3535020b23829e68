//! The supervisor: the process `apphost run` starts, whose PID never changes. It owns the
//! listening sockets, starts workers (generations) from the executable, and runs the one restart
//! state machine every trigger goes through.
//!
//! ```text
//!            restart asked                    new ready
//! Serving(N) ─────────────▶ Starting(N+1) ─────────────▶ Serving(N+1)   (N drains, then exits)
//!     ▲                        │ exit / failed / not ready in graceful_timeout
//!     └────────────────────────┘ N+1 stopped; N serves on; the asker is told why
//! ```
//! With `graceful: false` a restart is a full one: `Stopping(N)` (N drains and exits) then
//! `Recovering(N+1)`; if N+1 fails, the recorded executable is started again, with backoff.
//! A worker that dies by itself is also replaced through `Recovering`, with backoff
//! (100 ms doubling to 10 s, reset once a generation has served a minute).
//!
//! Warm standby (`warm_standby`, on by default with `graceful`): right after each restart the
//! supervisor starts the next worker and leaves it waiting on its channel with its runtime up;
//! a graceful restart to the recorded executable then sends it `activate` instead of starting a
//! process (it reads the config at that moment). It is used only while the executable is still
//! the file it was started from, and never for another executable.
//!
//! One operation at a time: a restart asked for while another is under way is refused with
//! [`OpError::Busy`] (not queued or merged), whatever asked for it.
//!
//! Sockets: the supervisor holds one descriptor per listener key. Each generation inherits all
//! of them; a generation binds the addresses it did not inherit and hands them over (`bound`),
//! and once it is ready the supervisor closes the keys it no longer serves (the draining
//! generation holds its own copies until it stops accepting). No socket is closed or re-bound
//! while its address stays in the config, so no connection is ever refused.
//!
//! The supervisor reaps every child itself (`waitpid(-1)` on SIGCHLD): as PID 1 in a container it
//! also reaps orphans, and it is a child subreaper otherwise. Signals: SIGUSR1 restarts; SIGINT,
//! SIGTERM, SIGQUIT and SIGHUP shut down (every generation drains, then exit 0); a second one
//! during the shutdown kills the workers and exits 1 at once.

pub(crate) mod control;
pub(crate) mod events;
pub(crate) mod exe;
pub(crate) mod generation;
pub(crate) mod systemd;
pub(crate) mod watchers;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};

use crate::channel::{Msg, Op, WorkerSettings};
use crate::config::Config;
use crate::ops::{LastRestart, OpError, OpReply, OpResult, RestartOutcome, Status};
use events::{Event, Reply};
use generation::Generation;

/// What the supervisor needs to start.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// The executable recorded at start; restarts run it unless told otherwise.
    pub exe: PathBuf,
    /// The config file (absolute), `None` for the embedded default.
    pub config_path: Option<PathBuf>,
    /// The config as loaded at start (its settings apply until a worker reports its own).
    pub config: Config,
}

#[derive(Debug)]
struct Pending {
    trigger: Instant,
    waiters: Vec<Reply>,
    via: String,
    exe: PathBuf,
}

#[derive(Debug)]
enum Phase {
    Serving,
    /// Graceful restart: `new` is starting while the current generation serves.
    Starting {
        new: u64,
        p: Pending,
    },
    /// Full restart: the current generation `old` is draining; then `p.exe` starts.
    Stopping {
        old: u64,
        p: Pending,
    },
    /// `new` is starting with nothing serving (first start, full restart, crash recovery).
    Recovering {
        new: u64,
        p: Pending,
        first: bool,
    },
    ShuttingDown,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::Starting { .. } | Phase::Stopping { .. } => "restarting",
            Phase::Recovering { .. } => "recovering",
            Phase::ShuttingDown => "shutting_down",
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    graceful: bool,
    graceful_timeout: Duration,
    shutdown_timeout: Duration,
    worker: Option<WorkerSettings>,
}

struct Supervisor {
    opts: Options,
    events: mpsc::UnboundedSender<Event>,
    listeners: BTreeMap<String, OwnedFd>,
    gens: BTreeMap<u64, Generation>,
    fail_reasons: BTreeMap<u64, String>,
    current: Option<u64>,
    next_id: u64,
    phase: Phase,
    settings: Settings,
    started: Instant,
    restarts: u64,
    last_restart: Option<LastRestart>,
    backoff: Duration,
    exit: Option<ExitCode>,
    preflights: BTreeMap<i32, Preflight>,
    /// The warm standby worker: its id and the identity of the executable it was started from.
    standby: Option<(u64, Option<crate::watch::FileId>)>,
    watch: Option<(watchers::WatchSpec, tokio::task::AbortHandle)>,
}

/// A preflight run under way: who waits for it, and its stderr.
struct Preflight {
    reply: oneshot::Sender<events::PreflightResult>,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    timed_out: bool,
}

/// Ids of standby workers start here (generation numbers never get this high).
const STANDBY_IDS: u64 = 1 << 48;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Run the supervisor until the host shuts down. Returns the process exit code.
pub(crate) fn run(opts: Options) -> ExitCode {
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
        let settings = Settings {
            graceful: opts.config.graceful,
            graceful_timeout: opts.config.graceful_timeout,
            shutdown_timeout: opts.config.shutdown_timeout,
            worker: None,
        };
        let mut sup = Supervisor {
            listeners: systemd::activated_sockets(),
            opts,
            events: tx,
            gens: BTreeMap::new(),
            fail_reasons: BTreeMap::new(),
            current: None,
            next_id: 1,
            phase: Phase::Serving,
            settings,
            started: Instant::now(),
            restarts: 0,
            last_restart: None,
            backoff: BACKOFF_MIN,
            exit: None,
            preflights: BTreeMap::new(),
            standby: None,
            watch: None,
        };
        sup.main_loop(rx).await
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

impl Supervisor {
    async fn main_loop(&mut self, mut rx: mpsc::UnboundedReceiver<Event>) -> ExitCode {
        self.spawn_signal_tasks();
        tracing::info!(
            exe = %self.opts.exe.display(),
            config = %self.opts.config.source,
            graceful = self.settings.graceful,
            "supervisor started"
        );
        // The control socket for `apphost status|restart|shutdown` (src/control.rs).
        let control = control::ControlServer::start(&self.opts.config, self.events.clone());
        let exe = self.opts.exe.clone();
        self.start_recovering(exe, Vec::new(), "start".into(), true);
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
            Event::ChannelClosed(id) => tracing::debug!(generation = id, "worker channel closed"),
            Event::Exited(pid, st) => self.on_exit(pid, st),
            Event::Reaped(id, st) => self.on_reaped(id, st),
            Event::Op(op, reply) => self.on_op(op, reply),
            Event::Stop(name) => self.on_stop_signal(name),
            Event::ReadyDeadline(id) => self.on_ready_deadline(id),
            Event::DrainDeadline(id) => {
                if let Some(g) = self.gens.get(&id).filter(|g| !g.exited) {
                    tracing::warn!(
                        generation = id,
                        pid = g.pid_u32(),
                        "still running past shutdown_timeout; killing it"
                    );
                    g.kill(Signal::KILL);
                }
            }
            Event::Respawn => {
                if self.current.is_none() && matches!(self.phase, Phase::Serving) {
                    let exe = self.opts.exe.clone();
                    self.start_recovering(exe, Vec::new(), "recovery".into(), false);
                }
            }
            Event::Preflight(reply) => self.start_preflight(reply),
            Event::PreflightDeadline(pid) => {
                if let Some(p) = self.preflights.get_mut(&pid.as_raw_nonzero().get()) {
                    p.timed_out = true;
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
            }
            Event::ForceExit => {
                tracing::error!("shutdown took longer than shutdown_timeout; killing the workers");
                for g in self.gens.values() {
                    g.kill(Signal::KILL);
                }
                self.exit = Some(ExitCode::from(1));
            }
        }
    }

    fn after(&self, d: Duration, ev: Event) {
        let tx = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let _ = tx.send(ev);
        });
    }

    fn spawn_gen(&mut self, exe: &std::path::Path, standby: bool) -> Result<u64, String> {
        // A standby gets an id outside the generation numbers; it takes the next generation
        // number only when activated.
        let id = if standby {
            STANDBY_IDS + self.next_id
        } else {
            self.next_id
        };
        let fds: Vec<(String, &OwnedFd)> =
            self.listeners.iter().map(|(k, v)| (k.clone(), v)).collect();
        let g = generation::spawn(
            id,
            exe,
            self.opts.config_path.as_deref(),
            &fds,
            standby,
            self.events.clone(),
        )
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        if standby {
            tracing::debug!(pid = g.pid_u32(), "standby worker started");
        } else {
            self.next_id += 1;
            tracing::info!(generation = id, pid = g.pid_u32(), exe = %exe.display(), "worker started");
        }
        self.gens.insert(id, g);
        Ok(id)
    }

    fn start_recovering(&mut self, exe: PathBuf, waiters: Vec<Reply>, via: String, first: bool) {
        let trigger = Instant::now();
        match self.spawn_gen(&exe, false) {
            Ok(new) => {
                self.after(self.settings.graceful_timeout, Event::ReadyDeadline(new));
                self.phase = Phase::Recovering {
                    new,
                    p: Pending {
                        trigger,
                        waiters,
                        via,
                        exe,
                    },
                    first,
                };
            }
            Err(reason) => {
                tracing::error!("{reason}");
                for w in waiters {
                    self.reply(w, Err(OpError::Failed(reason.clone())));
                }
                self.phase = Phase::Serving;
                if first {
                    self.exit = Some(ExitCode::from(1));
                } else {
                    self.schedule_respawn();
                }
            }
        }
    }

    fn schedule_respawn(&mut self) {
        let d = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        tracing::warn!("starting a new worker in {} ms", d.as_millis());
        self.after(d, Event::Respawn);
    }

    fn on_worker_msg(&mut self, id: u64, msg: Msg, fds: Vec<OwnedFd>) {
        match msg {
            Msg::Bound { key } => {
                if let (Some(g), Some(fd)) = (self.gens.get_mut(&id), fds.into_iter().next()) {
                    g.bound.push((key, fd));
                }
            }
            Msg::Ready { pid, settings } => self.on_ready(id, pid, settings),
            Msg::Failed { reason } => {
                tracing::debug!(generation = id, "worker reported failure: {reason}");
                self.fail_reasons.insert(id, reason);
            }
            Msg::Request { id: rid, op } => self.on_op(
                op,
                Reply::Worker {
                    generation: id,
                    id: rid,
                },
            ),
            other => tracing::debug!(?other, "unexpected message from a worker"),
        }
    }

    fn on_ready(&mut self, id: u64, pid: u32, settings: WorkerSettings) {
        let Some(g) = self.gens.get_mut(&id) else {
            return;
        };
        g.ready_at = Some(Instant::now());
        g.listeners = settings.listeners.clone();
        for (key, fd) in std::mem::take(&mut g.bound) {
            self.listeners.entry(key).or_insert(fd);
        }
        let phase = std::mem::replace(&mut self.phase, Phase::Serving);
        let (p, mode) = match phase {
            Phase::Starting { new, p } if new == id => (p, "graceful"),
            Phase::Recovering { new, p, first } if new == id => {
                if first {
                    tracing::info!(
                        generation = id,
                        pid,
                        ready_ms = format!("{:.2}", p.trigger.elapsed().as_secs_f64() * 1000.0),
                        "worker ready"
                    );
                    systemd::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
                }
                (p, "full")
            }
            Phase::ShuttingDown => {
                self.phase = Phase::ShuttingDown;
                self.drain(id, true);
                return;
            }
            other => {
                self.phase = other;
                tracing::warn!(
                    generation = id,
                    "unexpected ready report; stopping that worker"
                );
                self.drain(id, true);
                return;
            }
        };
        let old = self.current.replace(id);
        let old_pid = old.and_then(|o| self.gens.get(&o)).map(Generation::pid_u32);
        // The old generation stops accepting at once; an asker inside it still hears the
        // outcome (a draining worker keeps reading replies).
        if let Some(o) = old {
            self.drain(o, false);
        }
        // Sockets whose address left the config: the new generation never took them; the old
        // one holds its own copy until it stops accepting.
        let keep: std::collections::BTreeSet<&String> = settings.listeners.iter().collect();
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
        self.settings = Settings {
            graceful: settings.graceful,
            graceful_timeout: Duration::from_millis(settings.graceful_timeout_ms),
            shutdown_timeout: Duration::from_millis(settings.shutdown_timeout_ms),
            worker: Some(settings),
        };
        self.update_watch();
        let handoff = p.trigger.elapsed();
        let initial = p.via == "start";
        if !initial {
            self.restarts += 1;
            let outcome = RestartOutcome {
                generation: id,
                pid,
                old_pid,
                exe: p.exe.display().to_string(),
                handoff_ms: handoff.as_secs_f64() * 1000.0,
                mode: mode.into(),
            };
            tracing::info!(
                generation = id,
                pid,
                handoff_ms = format!("{:.2}", outcome.handoff_ms),
                via = %p.via,
                "restart done ({mode})"
            );
            self.record(
                true,
                &p.via,
                format!(
                    "generation {id} (pid {pid}) serving after {:.1} ms",
                    outcome.handoff_ms
                ),
            );
            for w in p.waiters {
                self.reply(w, Ok(OpReply::Restarted(outcome.clone())));
            }
            systemd::notify("READY=1");
        }
        self.spawn_standby();
    }

    /// With `warm_standby` (and `graceful`), keep one worker process started ahead of the next
    /// restart, waiting on its channel: the restart then skips process start-up (exec, loader,
    /// runtime). It reads the config only when activated, and is used only while the executable
    /// is still the file it was started from.
    fn spawn_standby(&mut self) {
        let wanted = self.settings.graceful
            && self
                .settings
                .worker
                .as_ref()
                .is_some_and(|w| w.warm_standby);
        if !wanted {
            if let Some((id, _)) = self.standby.take() {
                self.drain(id, true);
            }
            return;
        }
        if self.standby.is_some() || !matches!(self.phase, Phase::Serving) {
            return;
        }
        let exe = self.opts.exe.clone();
        let file = crate::watch::file_id(&exe);
        match self.spawn_gen(&exe, true) {
            Ok(id) => self.standby = Some((id, file)),
            Err(e) => tracing::debug!("no standby worker: {e}"),
        }
    }

    /// Activate the standby for a restart to `exe` if it runs that very file (else stop it);
    /// returns its new generation id.
    fn take_standby(&mut self, exe: &std::path::Path, exe_given: bool) -> Option<u64> {
        let (sid, file) = self.standby.take()?;
        let usable = !exe_given
            && exe == self.opts.exe
            && file.is_some()
            && crate::watch::file_id(exe) == file
            && self
                .gens
                .get(&sid)
                .is_some_and(|g| !g.exited && !g.draining);
        if !usable {
            self.drain(sid, true);
            return None;
        }
        let mut g = self.gens.remove(&sid)?;
        let id = self.next_id;
        self.next_id += 1;
        g.id = id;
        g.standby = false;
        g.started = Instant::now();
        g.id_cell.store(id, std::sync::atomic::Ordering::Relaxed);
        let chan = g.chan.clone();
        tokio::spawn(async move {
            if let Err(e) = chan.send(&Msg::Activate { generation: id }, &[]).await {
                tracing::debug!("cannot activate the standby: {e}");
            }
        });
        tracing::info!(generation = id, pid = g.pid_u32(), exe = %exe.display(), "worker started");
        self.gens.insert(id, g);
        Some(id)
    }

    /// Run `EXE check [-c CONFIG]`; the answer goes to `reply` when it exits.
    fn start_preflight(&mut self, reply: oneshot::Sender<events::PreflightResult>) {
        let mut cmd = std::process::Command::new(&self.opts.exe);
        cmd.arg("check");
        if let Some(c) = &self.opts.config_path {
            cmd.arg("-c").arg(c);
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .env_remove("NOTIFY_SOCKET");
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = reply.send(Err(format!("cannot run {}: {e}", self.opts.exe.display())));
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
        let (watch_exe, watch_config, settle) = match &self.settings.worker {
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
            exe: watch_exe.then(|| self.opts.exe.clone()),
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

    fn record(&mut self, ok: bool, via: &str, detail: String) {
        self.last_restart = Some(LastRestart {
            at_unix: crate::clock::now_unix(),
            ok,
            trigger: via.into(),
            detail,
        });
    }

    fn drain(&mut self, id: u64, shutdown: bool) {
        let Some(g) = self.gens.get_mut(&id) else {
            return;
        };
        if g.draining || g.exited {
            return;
        }
        g.draining = true;
        let chan = g.chan.clone();
        let msg = Msg::Drain { shutdown };
        // Straight away when the socket takes it (the usual case): the old generation stops
        // accepting sooner, so new connections go to the new one.
        match chan.try_send_now(&msg) {
            Ok(true) => {}
            Ok(false) => {
                tokio::spawn(async move {
                    if let Err(e) = chan.send(&msg, &[]).await {
                        tracing::debug!("cannot send drain: {e}");
                    }
                });
            }
            Err(e) => tracing::debug!("cannot send drain: {e}"),
        }
        self.after(
            self.settings.shutdown_timeout + Duration::from_secs(2),
            Event::DrainDeadline(id),
        );
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
        let Some(g) = self.gens.values_mut().find(|g| g.pid == pid && !g.exited) else {
            tracing::debug!(pid = pid.as_raw_nonzero().get(), "reaped an orphan");
            return;
        };
        // Judge the exit only once its last stderr lines and channel messages (a `failed`
        // reason) are in: they may still be in flight behind the SIGCHLD.
        g.exited = true;
        let tasks = std::mem::take(&mut g.tasks);
        let id = g.id;
        let events = self.events.clone();
        tokio::spawn(async move {
            for t in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
            }
            let _ = events.send(Event::Reaped(id, st));
        });
    }

    fn on_reaped(&mut self, id: u64, st: WaitStatus) {
        let Some(g) = self.gens.remove(&id) else {
            return;
        };
        if g.standby {
            if self.standby.as_ref().is_some_and(|(s, _)| *s == id) {
                self.standby = None;
            }
            tracing::debug!("standby worker exited ({})", describe_status(st));
            if matches!(self.phase, Phase::ShuttingDown) && self.gens.is_empty() {
                tracing::info!("supervisor exiting");
                self.exit = Some(ExitCode::SUCCESS);
            }
            return;
        }
        let status = describe_status(st);
        let reported = self.fail_reasons.remove(&id);
        let tail = g.stderr_tail();
        let reason = match reported {
            Some(r) => format!("{r} ({status})"),
            None if tail.is_empty() => status.clone(),
            None => format!("{status}; last output:\n{tail}"),
        };
        tracing::debug!(
            generation = id,
            pid = g.pid_u32(),
            "worker exited: {status}"
        );
        let phase = std::mem::replace(&mut self.phase, Phase::Serving);
        match phase {
            Phase::Starting { new, p } if new == id => {
                self.fail_restart(
                    p,
                    OpError::Failed(format!("exited before it was ready: {reason}")),
                );
            }
            Phase::Recovering { new, p, first } if new == id => {
                tracing::error!(generation = id, "worker failed to start: {reason}");
                self.record(false, &p.via, reason.clone());
                for w in p.waiters {
                    self.reply(w, Err(OpError::Failed(reason.clone())));
                }
                if first {
                    self.exit = Some(ExitCode::from(1));
                } else {
                    self.schedule_respawn();
                }
            }
            Phase::Stopping { old, p } if old == id => {
                tracing::info!(generation = id, "drained; starting the new worker");
                self.current = None;
                self.start_recovering(p.exe, p.waiters, p.via, false);
            }
            Phase::ShuttingDown => {
                self.phase = Phase::ShuttingDown;
                if self.gens.is_empty() {
                    tracing::info!("supervisor exiting");
                    self.exit = Some(ExitCode::SUCCESS);
                }
            }
            other => {
                self.phase = other;
                if self.current == Some(id) {
                    self.current = None;
                    tracing::error!(
                        generation = id,
                        pid = g.pid_u32(),
                        "worker died unexpectedly: {reason}"
                    );
                    if g.ready_at
                        .is_some_and(|t| t.elapsed() > Duration::from_secs(60))
                    {
                        self.backoff = BACKOFF_MIN;
                    }
                    if let Phase::Starting { new, p } =
                        std::mem::replace(&mut self.phase, Phase::Serving)
                    {
                        // A graceful restart was under way: let the new generation take over as a
                        // recovery (it becomes current when ready).
                        self.phase = Phase::Recovering {
                            new,
                            p,
                            first: false,
                        };
                    } else {
                        self.schedule_respawn();
                    }
                } else {
                    tracing::info!(
                        generation = id,
                        pid = g.pid_u32(),
                        "old worker exited ({status})"
                    );
                }
            }
        }
    }

    fn fail_restart(&mut self, p: Pending, err: OpError) {
        tracing::error!("restart failed: {err}; the serving generation keeps serving");
        self.record(false, &p.via, err.to_string());
        for w in p.waiters {
            self.reply(w, Err(err.clone()));
        }
        self.phase = Phase::Serving;
        systemd::notify("READY=1");
    }

    fn on_ready_deadline(&mut self, id: u64) {
        let timeout = self.settings.graceful_timeout;
        let phase = std::mem::replace(&mut self.phase, Phase::Serving);
        match phase {
            Phase::Starting { new, p } if new == id => {
                let tail = self
                    .gens
                    .get(&id)
                    .map(Generation::stderr_tail)
                    .unwrap_or_default();
                if let Some(g) = self.gens.get(&id) {
                    g.kill(Signal::KILL);
                }
                let mut why = format!(
                    "not ready within graceful_timeout ({})",
                    crate::config::duration::format_duration(timeout)
                );
                if !tail.is_empty() {
                    why.push_str(&format!("; last output:\n{tail}"));
                }
                self.fail_restart(p, OpError::Timeout(why));
            }
            Phase::Recovering { new, p, first } if new == id => {
                tracing::error!(
                    generation = id,
                    "worker not ready within graceful_timeout; killing it"
                );
                if let Some(g) = self.gens.get(&id) {
                    g.kill(Signal::KILL);
                }
                // Its exit is handled as a failed start.
                self.phase = Phase::Recovering { new, p, first };
            }
            other => self.phase = other,
        }
    }

    fn on_op(&mut self, op: Op, reply: Reply) {
        match op {
            Op::Status => {
                let s = self.status();
                self.reply(reply, Ok(OpReply::Status(s)));
            }
            Op::Shutdown => {
                self.reply(reply, Ok(OpReply::ShuttingDown));
                self.begin_shutdown("request");
            }
            Op::Restart { exe, via } => {
                let via = via.unwrap_or_else(|| "request".into());
                if let Err(e) = self.begin_restart(exe, reply, &via) {
                    let (w, e) = e;
                    tracing::warn!(via = %via, "restart refused: {e}");
                    if !matches!(e, OpError::Busy(_) | OpError::ShuttingDown) {
                        self.record(false, &via, e.to_string());
                    }
                    self.reply(w, Err(e));
                }
            }
        }
    }

    fn begin_restart(
        &mut self,
        exe: Option<String>,
        reply: Reply,
        via: &str,
    ) -> Result<(), (Reply, OpError)> {
        match &self.phase {
            Phase::Serving => {}
            Phase::ShuttingDown => return Err((reply, OpError::ShuttingDown)),
            Phase::Starting { new, .. } | Phase::Recovering { new, .. } => {
                return Err((
                    reply,
                    OpError::Busy(format!("generation {new} is starting")),
                ));
            }
            Phase::Stopping { old, .. } => {
                return Err((
                    reply,
                    OpError::Busy(format!("generation {old} is draining for a full restart")),
                ));
            }
        }
        let exe = exe.filter(|s| !s.is_empty());
        let exe_given = exe.is_some();
        let exe = match exe {
            Some(p) => exe::check(std::path::Path::new(&p)),
            None => exe::check(&self.opts.exe),
        };
        let exe = match exe {
            Ok(e) => e,
            Err(why) => return Err((reply, OpError::BadExecutable(why))),
        };
        tracing::info!(via, exe = %exe.display(), graceful = self.settings.graceful, "restart requested");
        systemd::notify("RELOADING=1");
        let p = Pending {
            trigger: Instant::now(),
            waiters: vec![reply],
            via: via.into(),
            exe,
        };
        match self.current {
            None => {
                self.start_recovering(p.exe, p.waiters, p.via, false);
            }
            Some(old) if !self.settings.graceful => {
                self.drain(old, false);
                self.phase = Phase::Stopping { old, p };
            }
            Some(_) => match self
                .take_standby(&p.exe, exe_given)
                .map_or_else(|| self.spawn_gen(&p.exe, false), Ok)
            {
                Ok(new) => {
                    self.after(self.settings.graceful_timeout, Event::ReadyDeadline(new));
                    self.phase = Phase::Starting { new, p };
                }
                Err(why) => {
                    self.fail_restart(p, OpError::Failed(why));
                }
            },
        }
        Ok(())
    }

    fn on_stop_signal(&mut self, name: &'static str) {
        if matches!(self.phase, Phase::ShuttingDown) {
            tracing::warn!("second {name} during the shutdown: stopping now");
            for g in self.gens.values() {
                g.kill(Signal::KILL);
            }
            self.exit = Some(ExitCode::from(1));
            return;
        }
        tracing::info!("{name} received");
        self.begin_shutdown(name);
    }

    fn begin_shutdown(&mut self, why: &str) {
        if matches!(self.phase, Phase::ShuttingDown) {
            return;
        }
        tracing::info!("shutting down ({why})");
        systemd::notify("STOPPING=1");
        let phase = std::mem::replace(&mut self.phase, Phase::ShuttingDown);
        let waiters = match phase {
            Phase::Starting { p, .. } | Phase::Stopping { p, .. } | Phase::Recovering { p, .. } => {
                p.waiters
            }
            _ => Vec::new(),
        };
        for w in waiters {
            self.reply(w, Err(OpError::ShuttingDown));
        }
        let ids: Vec<u64> = self.gens.keys().copied().collect();
        for id in ids {
            // A generation not yet seen ready may already be serving (it accepts before it
            // reports): it reads the drain right after its report, so nothing is cut.
            self.drain(id, true);
        }
        self.after(
            self.settings.shutdown_timeout + Duration::from_secs(5),
            Event::ForceExit,
        );
        if self.gens.is_empty() {
            self.exit = Some(ExitCode::SUCCESS);
        }
    }

    fn status(&self) -> Status {
        let cur = self.current.and_then(|c| self.gens.get(&c));
        Status {
            supervisor_pid: std::process::id(),
            worker_pid: cur.map(Generation::pid_u32),
            generation: self.current.unwrap_or(0),
            exe: self.opts.exe.display().to_string(),
            config: self.opts.config.source.to_string(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            generation_uptime_s: cur
                .and_then(|g| g.ready_at)
                .map(|t| t.elapsed().as_secs_f64())
                .unwrap_or(0.0),
            graceful: self.settings.graceful,
            listeners: self.listeners.keys().cloned().collect(),
            phase: self.phase.name().into(),
            restarts: self.restarts,
            last_restart: self.last_restart.clone(),
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
            Reply::Worker { generation, id } => {
                let Some(g) = self.gens.get(&generation) else {
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
