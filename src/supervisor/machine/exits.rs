//! How the machine meets failures: a restart or recovery that failed, a worker that could not
//! be spawned, a worker that exited (a crash, a drained generation, a failed start), and a
//! worker that was not ready by its deadline.

use super::*;

impl<R> Machine<R> {
    pub(super) fn fail_restart(&mut self, current: WorkerId, pending: Pending<R>, err: OpError) {
        tracing::error!("restart failed: {err}; the serving generation keeps serving");
        self.record(false, &pending.trigger, err.to_string());
        for w in pending.waiters {
            self.reply(w, Err(err.clone()));
        }
        self.phase = Phase::Serving { current };
        self.out.push(Action::Notify(Notify::Ready));
    }

    /// A start with nothing serving failed: tell the askers, then end the host (first start) or
    /// try again after the backoff. `record`: whether it counts as the outcome of a restart (a
    /// worker that could not even be spawned does not: only the askers hear it).
    pub(super) fn fail_recovery(
        &mut self,
        pending: Pending<R>,
        first: bool,
        reason: String,
        record: bool,
    ) {
        if record {
            self.record(false, &pending.trigger, reason.clone());
        }
        for w in pending.waiters {
            self.reply(w, Err(OpError::Failed(reason.clone())));
        }
        self.phase = Phase::Down;
        if first {
            self.out.push(Action::Exit(1));
        } else {
            self.schedule_respawn();
        }
    }

    pub(super) fn on_spawn_failed(&mut self, worker: WorkerId, reason: String) {
        self.workers.remove(&worker);
        if self.standby == Some(worker) {
            self.standby = None;
            tracing::debug!("no standby worker: {reason}");
            return;
        }
        let phase = std::mem::replace(&mut self.phase, Phase::Down);
        match phase {
            Phase::Starting {
                current,
                new,
                pending,
            } if new == worker => self.fail_restart(current, pending, OpError::Failed(reason)),
            Phase::Recovering {
                new,
                pending,
                first,
            } if new == worker => {
                tracing::error!("{reason}");
                self.fail_recovery(pending, first, reason, false);
            }
            other => self.phase = other,
        }
    }

    pub(super) fn on_exited(
        &mut self,
        worker: WorkerId,
        status: &str,
        reason: String,
        pid: u32,
        now: Instant,
    ) {
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        if self.standby == Some(worker) || w.generation.is_none() {
            if self.standby == Some(worker) {
                self.standby = None;
            }
            tracing::debug!("standby worker exited ({status})");
            self.exit_if_shut_down();
            return;
        }
        let generation = w.generation.unwrap_or(0);
        tracing::debug!(generation, pid, "worker exited: {status}");
        let phase = std::mem::replace(&mut self.phase, Phase::Down);
        match phase {
            Phase::Starting {
                current,
                new,
                pending,
            } if new == worker => self.fail_restart(
                current,
                pending,
                OpError::Failed(format!("exited before it was ready: {reason}")),
            ),
            Phase::Recovering {
                new,
                pending,
                first,
            } if new == worker => {
                tracing::error!(generation, "worker failed to start: {reason}");
                self.fail_recovery(pending, first, reason, true);
            }
            Phase::Stopping { old, pending } if old == worker => {
                tracing::info!(generation, "drained; starting the new worker");
                self.restart_with_nothing_serving(pending);
            }
            Phase::ShuttingDown { current, delaying } => {
                self.phase = Phase::ShuttingDown {
                    current: current.filter(|c| *c != worker),
                    delaying,
                };
                self.exit_if_shut_down();
            }
            other if other.current() == Some(worker) => {
                tracing::error!(generation, pid, "worker died unexpectedly: {reason}");
                if w.ready_at
                    .is_some_and(|t| now.saturating_duration_since(t) > BACKOFF_RESET_AFTER)
                {
                    self.backoff = BACKOFF_MIN;
                }
                if let Phase::Upgrading { pending, .. } = other {
                    // The upgrade is dropped: the machine recovers first.
                    let why = OpError::Failed(format!(
                        "the serving worker died while the supervisor was being upgraded: {reason}"
                    ));
                    self.record(false, &pending.trigger, why.to_string());
                    for w in pending.waiters {
                        self.reply(w, Err(why.clone()));
                    }
                    self.phase = Phase::Down;
                    self.schedule_respawn();
                } else if let Phase::Starting { new, pending, .. } = other {
                    // A graceful restart was under way: its new worker takes over as a recovery
                    // (it becomes current when ready).
                    self.phase = Phase::Recovering {
                        new,
                        pending,
                        first: false,
                    };
                } else {
                    self.phase = Phase::Down;
                    self.schedule_respawn();
                }
            }
            other => {
                self.phase = other;
                tracing::info!(generation, pid, "old worker exited ({status})");
            }
        }
    }

    pub(super) fn on_ready_deadline(&mut self, worker: WorkerId, tail: &str) {
        let phase = std::mem::replace(&mut self.phase, Phase::Down);
        match phase {
            Phase::Starting {
                current,
                new,
                pending,
            } if new == worker => {
                self.out.push(Action::Kill {
                    worker,
                    why: KillReason::NotReady,
                });
                let mut why = format!(
                    "not ready within graceful_timeout ({})",
                    crate::config::duration::format_duration(self.settings.graceful_timeout)
                );
                if !tail.is_empty() {
                    why.push_str(&format!("; last output:\n{tail}"));
                }
                self.fail_restart(current, pending, OpError::Timeout(why));
            }
            Phase::Recovering { new, .. } if new == worker => {
                tracing::error!(
                    generation = self.generation_of(worker),
                    "worker not ready within graceful_timeout; killing it"
                );
                self.out.push(Action::Kill {
                    worker,
                    why: KillReason::NotReady,
                });
                // Its exit is handled as a failed start.
                self.phase = phase;
            }
            other => self.phase = other,
        }
    }
}
