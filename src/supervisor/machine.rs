//! The restart state machine, without I/O: an [`Event`] goes in ([`Machine::handle`]), the
//! [`Action`]s to perform come out. The driver (`super::driver`) turns processes, sockets,
//! signals and timers into events and performs the actions; everything decided here is
//! unit-tested without a process.
//!
//! ```text
//!                 restart asked (graceful)                  new ready
//! Serving(N) ─────────────────────────▶ Starting(N, N+1) ─────────────▶ Serving(N+1)  (N drains)
//!   │  ▲                                   │ exit / failed / not ready in graceful_timeout
//!   │  └───────────────────────────────────┘ N+1 stopped; N serves on; the asker is told why
//!   │ restart asked (graceful: false)          N exited                   N+1 ready
//!   ├─────────────────────────▶ Stopping(N) ───────────▶ Recovering(N+1) ───────────▶ Serving(N+1)
//!   │ N died                                                 │ failed
//!   └─────────────────────────▶ Down ──── backoff ──▶ Recovering(N+1) ◀─┘ (Down again, backoff)
//! any phase ── stop signal / shutdown ──▶ ShuttingDown(delaying) ── shutdown_delay ──▶
//!     ShuttingDown ── all exited ──▶ exit 0
//!       └── second stop signal (also while delaying), or shutdown_timeout ──▶ exit 1
//! ```
//!
//! - **Graceful** (`graceful: true`): the old generation is told to drain only once the new one
//!   has reported ready; any failure before that leaves the old one serving.
//! - **Full** (`graceful: false`): the old generation drains and exits first, then the new one
//!   starts with nothing serving; if it fails, the recorded executable is started again, with
//!   backoff. The first start (`Recovering`, `first`) failing ends the host (exit 1).
//! - **Crash**: a serving worker that dies is replaced through `Down` → `Recovering`, with backoff
//!   (100 ms doubling to 10 s, reset once a generation has served a minute). If a graceful
//!   restart was under way, its new worker takes over as the recovery.
//! - **One at a time**: a restart asked for while another is under way is refused
//!   ([`OpError::Busy`]), not queued, whatever asked for it.
//! - **Going away** (`shutdown_delay`, see `shutdown`): a stop first tells every worker the host
//!   is going away (its `ready` answers 503) and keeps them serving for `shutdown_delay`, so
//!   balancers stop sending before anything stops accepting; then every worker drains.
//! - **Warm standby** (`warm_standby` with `graceful`): after each restart a worker is started
//!   ahead (after a handoff, a moment later: `standby::STANDBY_PAUSE`), with no generation number; a graceful
//!   restart to the same executable activates it (it gets the next number then) instead of
//!   spawning.
//!
//! The executable of the last successful restart becomes the recorded one: later plain
//! restarts, crash recovery, the standby and the executable watch run it.
//!
//! Workers are named by a [`WorkerId`], a process slot that never changes (a standby keeps its
//! id when it becomes a generation); generation numbers are what users see.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::channel::{LastRestart, OpError, OpReply, OpResult, RestartOutcome, WorkerSettings};
use crate::tally::RestartStats;

mod exits;
mod recycle;
mod shutdown;
mod standby;
mod upgrade;
mod vocab;

use vocab::BACKOFF_RESET_AFTER;
pub(crate) use vocab::{
    Action, BACKOFF_MAX, BACKOFF_MIN, DRAIN_KILL_MARGIN, Event, KillReason, Notify, Pending, Phase,
    RECYCLE_RETRY_MAX, RECYCLE_RETRY_MIN, SHUTDOWN_EXIT_MARGIN, Settings, Timer, Trigger, WorkerId,
};

/// What the machine knows of one worker process.
#[derive(Debug, Clone)]
struct Worker {
    /// `None` while a standby.
    generation: Option<u64>,
    /// Its pid, from its ready report.
    pid: Option<u32>,
    ready_at: Option<Instant>,
    draining: bool,
    /// When it was told to drain (its deadline is re-armed from it after a re-exec).
    drain_since: Option<Instant>,
}

/// The restart state machine (see the module doc). `R` is where an answer goes.
#[derive(Debug)]
pub(crate) struct Machine<R> {
    phase: Phase<R>,
    settings: Settings,
    worker_settings: Option<WorkerSettings>,
    workers: BTreeMap<WorkerId, Worker>,
    next_worker: WorkerId,
    next_generation: u64,
    standby: Option<WorkerId>,
    /// The executable restarts run unless told otherwise.
    recorded_exe: PathBuf,
    backoff: Duration,
    restarts: u64,
    last_restart: Option<LastRestart>,
    /// Restarts by trigger and outcome, worker starts, the last handoff (for the metrics).
    stats: RestartStats,
    /// The unix time now, for the record of a restart (a function, so tests fix it).
    clock: fn() -> u64,
    /// When the last recycle was started, and how long after it the next may start (zero
    /// unless recycles have failed: see `recycle`).
    recycle_tried_at: Option<Instant>,
    recycle_retry: Duration,
    out: Vec<Action<R>>,
}

impl<R> Machine<R> {
    /// A machine that will start `exe` with `settings`; nothing happens before
    /// [`Event::Start`].
    pub(crate) fn new(exe: PathBuf, settings: Settings, clock: fn() -> u64) -> Machine<R> {
        Machine {
            phase: Phase::Down,
            settings,
            worker_settings: None,
            workers: BTreeMap::new(),
            next_worker: 1,
            next_generation: 1,
            standby: None,
            recorded_exe: exe,
            backoff: BACKOFF_MIN,
            restarts: 0,
            last_restart: None,
            stats: RestartStats::default(),
            clock,
            recycle_tried_at: None,
            recycle_retry: Duration::ZERO,
            out: Vec::new(),
        }
    }

    /// Where the machine is.
    pub(crate) fn phase(&self) -> &Phase<R> {
        &self.phase
    }

    /// The worker whose generation serves.
    pub(crate) fn current(&self) -> Option<WorkerId> {
        self.phase.current()
    }

    /// The generation number of `worker` (`None` for a standby or an unknown worker).
    pub(crate) fn generation_of(&self, worker: WorkerId) -> Option<u64> {
        self.workers.get(&worker).and_then(|w| w.generation)
    }

    /// When `worker` reported ready.
    pub(crate) fn ready_at(&self, worker: WorkerId) -> Option<Instant> {
        self.workers.get(&worker).and_then(|w| w.ready_at)
    }

    /// The settings in force.
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The serving generation's reported settings (watch, TLS files), once one is ready.
    pub(crate) fn worker_settings(&self) -> Option<&WorkerSettings> {
        self.worker_settings.as_ref()
    }

    /// The executable restarts run unless told otherwise.
    pub(crate) fn recorded_exe(&self) -> &PathBuf {
        &self.recorded_exe
    }

    /// The warm standby worker, if one is started.
    #[cfg(test)]
    pub(crate) fn standby(&self) -> Option<WorkerId> {
        self.standby
    }

    /// Restarts done since start.
    pub(crate) fn restarts(&self) -> u64 {
        self.restarts
    }

    /// How the last restart ended.
    pub(crate) fn last_restart(&self) -> Option<&LastRestart> {
        self.last_restart.as_ref()
    }

    /// Restarts by trigger and outcome, worker starts, the last handoff.
    pub(crate) fn stats(&self) -> &RestartStats {
        &self.stats
    }

    /// The driver started the process of [`Action::Spawn`] for `generation` (`None`: a
    /// standby): count it, by why it was started.
    pub(crate) fn worker_started(&mut self, generation: Option<u64>) {
        let reason = match (&self.phase, generation) {
            (_, None) => "standby",
            (Phase::Recovering { pending, .. }, _) if pending.trigger == Trigger::Start => "start",
            (Phase::Recovering { pending, .. }, _) if pending.trigger == Trigger::Recovery => {
                "recovery"
            }
            _ => "restart",
        };
        self.stats.worker_started(reason);
    }

    /// Decide on `ev`; returns what to do, in order.
    pub(crate) fn handle(&mut self, ev: Event<R>) -> Vec<Action<R>> {
        match ev {
            Event::Start { now } => {
                let exe = self.recorded_exe.clone();
                self.start_recovering(exe, Vec::new(), Trigger::Start, true, now);
            }
            Event::Restart {
                trigger,
                exe,
                standby_fits,
                upgrade,
                reply,
                now,
            } => self.on_restart(trigger, exe, standby_fits, upgrade, reply, now),
            Event::Shutdown { reply } => {
                self.reply(reply, Ok(OpReply::ShuttingDown));
                self.begin_shutdown("request");
            }
            Event::StopSignal { name } => self.on_stop_signal(name),
            Event::Ready {
                worker,
                pid,
                settings,
                now,
            } => self.on_ready(worker, pid, settings, now),
            Event::Exited {
                worker,
                status,
                reason,
                pid,
                now,
            } => self.on_exited(worker, &status, reason, pid, now),
            Event::SpawnFailed { worker, reason } => self.on_spawn_failed(worker, reason),
            Event::ReadyDeadline { worker, tail } => self.on_ready_deadline(worker, &tail),
            Event::DrainDeadline { worker } => {
                if self.workers.contains_key(&worker) {
                    self.out.push(Action::Kill {
                        worker,
                        why: KillReason::DrainTimeout,
                    });
                }
            }
            Event::Respawn { now } => {
                if matches!(self.phase, Phase::Down) {
                    let exe = self.recorded_exe.clone();
                    self.start_recovering(exe, Vec::new(), Trigger::Recovery, false, now);
                }
            }
            Event::Recycle {
                worker,
                reason,
                exe,
                standby_fits,
                upgrade,
                reply,
                now,
            } => self.on_recycle(worker, reason, (exe, standby_fits, upgrade), reply, now),
            Event::ForceExit => {
                tracing::error!("shutdown took longer than shutdown_timeout; killing the workers");
                self.out.push(Action::KillAll);
                self.out.push(Action::Exit(1));
            }
            Event::ShutdownDelayOver => self.end_shutdown_delay(),
            Event::StandbyDue => self.spawn_standby(),
            Event::UpgradeChecked { result } => self.on_upgrade_checked(result),
            Event::ReexecFailed { reason } => self.upgrade_skipped(&reason),
            Event::Resumed {
                takeover_failed,
                now,
            } => self.on_resumed(takeover_failed, now),
        }
        std::mem::take(&mut self.out)
    }

    fn reply(&mut self, to: R, result: OpResult) {
        self.out.push(Action::Reply { to, result });
    }

    fn arm(&mut self, after: Duration, timer: Timer) {
        self.out.push(Action::Arm { after, timer });
    }

    /// Record a restart's outcome: the last restart, and the count by trigger (its name,
    /// [`Trigger::as_str`], is the label) and outcome.
    fn record(&mut self, ok: bool, trigger: &Trigger, detail: String) {
        self.stats
            .restart(trigger.as_str(), if ok { "ok" } else { "failed" });
        self.note(ok, trigger, detail);
    }

    /// Record the last restart's outcome, without counting it.
    fn note(&mut self, ok: bool, trigger: &Trigger, detail: String) {
        self.recycle_ended(trigger, ok);
        self.last_restart = Some(LastRestart {
            at_unix: (self.clock)(),
            ok,
            trigger: trigger.to_string(),
            detail,
        });
    }

    /// A new worker id, for generation `generation` (or a standby).
    fn new_worker(&mut self, generation: Option<u64>) -> WorkerId {
        let id = self.next_worker;
        self.next_worker += 1;
        self.workers.insert(
            id,
            Worker {
                generation,
                pid: None,
                ready_at: None,
                draining: false,
                drain_since: None,
            },
        );
        id
    }

    fn take_generation(&mut self) -> u64 {
        let g = self.next_generation;
        self.next_generation += 1;
        g
    }

    /// Spawn a worker for generation N+1 and arm its ready deadline.
    fn spawn_generation(&mut self, exe: PathBuf) -> WorkerId {
        let generation = self.take_generation();
        let worker = self.new_worker(Some(generation));
        self.out.push(Action::Spawn {
            worker,
            generation: Some(generation),
            exe,
        });
        self.arm(self.settings.graceful_timeout, Timer::ReadyDeadline(worker));
        worker
    }

    fn start_recovering(
        &mut self,
        exe: PathBuf,
        waiters: Vec<R>,
        trigger: Trigger,
        first: bool,
        now: Instant,
    ) {
        let new = self.spawn_generation(exe.clone());
        self.phase = Phase::Recovering {
            new,
            pending: Pending {
                asked_at: now,
                waiters,
                trigger,
                exe,
                old_pid: None,
            },
            first,
        };
    }

    fn schedule_respawn(&mut self) {
        let d = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        tracing::warn!("starting a new worker in {} ms", d.as_millis());
        self.arm(d, Timer::Respawn);
    }

    fn drain(&mut self, worker: WorkerId, shutdown: bool) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        if w.draining {
            return;
        }
        w.draining = true;
        w.drain_since = Some(Instant::now());
        self.out.push(Action::Drain { worker, shutdown });
        self.arm(
            self.settings.shutdown_timeout + DRAIN_KILL_MARGIN,
            Timer::DrainDeadline(worker),
        );
    }

    fn on_restart(
        &mut self,
        trigger: Trigger,
        exe: Result<PathBuf, String>,
        standby_fits: bool,
        upgrade: bool,
        reply: R,
        now: Instant,
    ) {
        let refused = match &self.phase {
            Phase::ShuttingDown { .. } => Some(OpError::ShuttingDown),
            Phase::Starting { new, .. } | Phase::Recovering { new, .. } => {
                Some(OpError::Busy(format!(
                    "generation {} is starting",
                    self.generation_of(*new).unwrap_or(0)
                )))
            }
            Phase::Stopping { old, .. } => Some(OpError::Busy(format!(
                "generation {} is draining for a full restart",
                self.generation_of(*old).unwrap_or(0)
            ))),
            Phase::Upgrading { pending, .. } => Some(OpError::Busy(format!(
                "the supervisor is being upgraded to {}",
                pending.exe.display()
            ))),
            Phase::Serving { .. } | Phase::Down => None,
        };
        let exe = match (refused, exe) {
            (Some(e), _) => return self.refuse(&trigger, reply, e),
            (None, Err(why)) => return self.refuse(&trigger, reply, OpError::BadExecutable(why)),
            (None, Ok(exe)) => exe,
        };
        // Logged once the restart has started (the driver performs actions in order).
        let requested = Action::Requested {
            via: trigger.to_string(),
            exe: exe.clone(),
            graceful: self.settings.graceful,
        };
        self.out.push(Action::Notify(Notify::Reloading));
        let old_pid = self
            .current()
            .and_then(|c| self.workers.get(&c))
            .and_then(|w| w.pid);
        let pending = Pending {
            asked_at: now,
            waiters: vec![reply],
            trigger,
            exe,
            old_pid,
        };
        match self.phase {
            Phase::Serving { current } if upgrade => {
                self.out.push(Action::CheckUpgrade {
                    exe: pending.exe.clone(),
                });
                self.phase = Phase::Upgrading { current, pending };
            }
            Phase::Serving { current } => self.continue_restart(current, pending, standby_fits),
            _ => self.restart_with_nothing_serving(pending),
        }
        self.out.push(requested);
    }

    /// Go on with `pending` while `current` serves: a graceful restart starts the new
    /// generation (the standby if it fits), a full one drains `current` first.
    fn continue_restart(&mut self, current: WorkerId, pending: Pending<R>, standby_fits: bool) {
        if !self.settings.graceful {
            self.drain(current, false);
            self.phase = Phase::Stopping {
                old: current,
                pending,
            };
            return;
        }
        let new = match self.take_standby(standby_fits) {
            Some(new) => new,
            None => self.spawn_generation(pending.exe.clone()),
        };
        self.phase = Phase::Starting {
            current,
            new,
            pending,
        };
    }

    /// Start `pending`'s executable with nothing serving (a full restart whose old generation
    /// is gone). The restart keeps its `asked_at` and `old_pid`, so the asker is told the time
    /// from its request to the new worker serving, and which pid it replaced.
    fn restart_with_nothing_serving(&mut self, pending: Pending<R>) {
        let new = self.spawn_generation(pending.exe.clone());
        self.phase = Phase::Recovering {
            new,
            pending,
            first: false,
        };
    }

    fn refuse(&mut self, trigger: &Trigger, reply: R, e: OpError) {
        tracing::warn!(via = %trigger, "restart refused: {e}");
        self.stats.restart(trigger.as_str(), "refused");
        if !matches!(e, OpError::Busy(_) | OpError::ShuttingDown) {
            self.note(false, trigger, e.to_string());
        }
        self.reply(reply, Err(e));
    }

    fn on_ready(&mut self, worker: WorkerId, pid: u32, settings: WorkerSettings, now: Instant) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        w.ready_at = Some(now);
        w.pid = Some(pid);
        let generation = w.generation.unwrap_or(0);
        let phase = std::mem::replace(&mut self.phase, Phase::Down);
        let (pending, mode, old) = match phase {
            Phase::Starting {
                current,
                new,
                pending,
            } if new == worker => (pending, "graceful", Some(current)),
            Phase::Recovering {
                new,
                pending,
                first,
            } if new == worker => {
                if first {
                    tracing::info!(
                        generation,
                        pid,
                        ready_ms =
                            format!("{:.2}", (now - pending.asked_at).as_secs_f64() * 1000.0),
                        "worker ready"
                    );
                    self.out.push(Action::Notify(Notify::FirstReady));
                }
                (pending, "full", None)
            }
            other => {
                if !matches!(other, Phase::ShuttingDown { .. }) {
                    tracing::warn!(generation, "unexpected ready report; stopping that worker");
                }
                self.phase = other;
                self.drain(worker, true);
                return;
            }
        };
        self.phase = Phase::Serving { current: worker };
        let old_pid = old
            .and_then(|o| self.workers.get(&o))
            .and_then(|w| w.pid)
            .or(pending.old_pid);
        // The old generation stops accepting now, not before: the new one is ready.
        if let Some(o) = old {
            self.drain(o, false);
        }
        self.out
            .push(Action::KeepListeners(settings.listeners.clone()));
        self.settings = Settings {
            graceful: settings.graceful,
            graceful_timeout: Duration::from_millis(settings.graceful_timeout_ms),
            shutdown_timeout: Duration::from_millis(settings.shutdown_timeout_ms),
            shutdown_delay: Duration::from_millis(settings.shutdown_delay_ms),
            warm_standby: settings.warm_standby,
        };
        self.worker_settings = Some(settings);
        self.out.push(Action::SettingsChanged);
        if pending.trigger != Trigger::Start {
            // The executable that now serves is the one later restarts, crash recovery, the
            // standby and the executable watch use (`restart --exe v2` is an upgrade, not a
            // one-off).
            self.recorded_exe = pending.exe.clone();
            self.restarts += 1;
            let outcome = RestartOutcome {
                generation,
                pid,
                old_pid,
                exe: pending.exe.display().to_string(),
                handoff_ms: (now - pending.asked_at).as_secs_f64() * 1000.0,
                mode: mode.into(),
            };
            tracing::info!(
                generation,
                pid,
                handoff_ms = format!("{:.2}", outcome.handoff_ms),
                via = %pending.trigger,
                "restart done ({mode})"
            );
            self.stats.last_handoff_s = Some(outcome.handoff_ms / 1000.0);
            self.record(
                true,
                &pending.trigger,
                format!(
                    "generation {generation} (pid {pid}) serving after {:.1} ms",
                    outcome.handoff_ms
                ),
            );
            for w in pending.waiters {
                self.reply(w, Ok(OpReply::Restarted(outcome.clone())));
            }
            self.out.push(Action::Notify(Notify::Ready));
        }
        if old.is_some() {
            self.standby_after_handoff();
        } else {
            self.spawn_standby();
        }
    }
}

#[cfg(test)]
mod tests;
