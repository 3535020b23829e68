//! The machine's part in upgrading the supervisor itself (the driver's part, the exec and the
//! handover, is `super::super::reexec`).
//!
//! ```text
//! Serving(N) ── restart to another file ──▶ Upgrading(N) ── CheckUpgrade ──▶ preflight
//!    preflight fails / execve fails ──▶ the restart goes on with this supervisor (Starting…)
//!    preflight passes ──▶ Reexec ──▶ (new image) restore + Resumed ──▶ Starting(N, N+1) …
//!                                    (new image fails) previous image: Resumed(failed) ──▶
//!                                    Serving(N), the asker told why
//! ```
//!
//! A preflight that refuses (an older apphost that does not know the handover, a wrapper that
//! is not apphost, a handover version it does not read) is no reason to refuse the restart:
//! workers from another build speak the versioned channel, as they did before supervisors were
//! upgraded. A new image that passed its preflight and then failed to take over is: it is
//! broken, and the previous image, back in place, fails the restart.

use std::time::{Duration, Instant};

use super::{Action, DRAIN_KILL_MARGIN, Machine, Pending, Phase, Settings, Timer, Trigger, Worker};
use crate::channel::OpError;
use crate::supervisor::handover::{MachineHandover, MachineWorker, PendingHandover, Waiter};

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl<R> Machine<R> {
    pub(super) fn on_upgrade_checked(&mut self, result: Result<(), String>) {
        match (&self.phase, result) {
            (Phase::Upgrading { pending, .. }, Ok(())) => {
                let exe = pending.exe.clone();
                self.out.push(Action::Reexec { exe });
            }
            (_, Ok(())) => {}
            (_, Err(why)) => self.upgrade_skipped(&why),
        }
    }

    /// The supervisor cannot re-execute itself from the new file: the restart goes on with this
    /// supervisor's code.
    pub(super) fn upgrade_skipped(&mut self, why: &str) {
        let phase = std::mem::replace(&mut self.phase, Phase::Down);
        let Phase::Upgrading { current, pending } = phase else {
            self.phase = phase;
            return;
        };
        tracing::warn!(
            exe = %pending.exe.display(),
            "the supervisor is not upgraded ({why}); restarting the workers with the current \
             supervisor"
        );
        self.continue_restart(current, pending, false);
    }

    pub(super) fn on_resumed(&mut self, takeover_failed: Option<String>, now: Instant) {
        // The previous image's timers went with it.
        let limit = self.settings.shutdown_timeout + DRAIN_KILL_MARGIN;
        let draining: Vec<(u64, Duration)> = self
            .workers
            .iter()
            .filter_map(|(id, w)| {
                let since = w.drain_since?;
                Some((
                    *id,
                    limit.saturating_sub(now.saturating_duration_since(since)),
                ))
            })
            .collect();
        for (worker, after) in draining {
            self.arm(after, Timer::DrainDeadline(worker));
        }
        let phase = std::mem::replace(&mut self.phase, Phase::Down);
        let Phase::Upgrading { current, pending } = phase else {
            self.phase = phase;
            return;
        };
        match takeover_failed {
            None => {
                tracing::info!(exe = %pending.exe.display(), "supervisor upgraded in place");
                self.continue_restart(current, pending, false);
            }
            Some(why) => {
                let err = OpError::Failed(format!(
                    "the new executable could not take over the supervisor ({why}); the \
                     previous supervisor and worker serve on"
                ));
                self.fail_restart(current, pending, err);
            }
        }
    }

    /// The machine's state for a handover, with each waiter as `waiter` says; `None` unless an
    /// upgrade is under way (the only time the supervisor re-executes itself).
    pub(crate) fn snapshot(
        &self,
        now: Instant,
        waiter: impl Fn(&R) -> Waiter,
    ) -> Option<MachineHandover> {
        let Phase::Upgrading { current, pending } = &self.phase else {
            return None;
        };
        let ago = |t: Instant| ms(now.saturating_duration_since(t));
        Some(MachineHandover {
            current: *current,
            pending: PendingHandover {
                asked_ms_ago: ago(pending.asked_at),
                waiters: pending.waiters.iter().map(waiter).collect(),
                trigger: pending.trigger.to_string(),
                exe: pending.exe.clone(),
                old_pid: pending.old_pid,
            },
            graceful: self.settings.graceful,
            graceful_timeout_ms: ms(self.settings.graceful_timeout),
            shutdown_timeout_ms: ms(self.settings.shutdown_timeout),
            shutdown_delay_ms: ms(self.settings.shutdown_delay),
            warm_standby: self.settings.warm_standby,
            worker_settings: self.worker_settings.clone(),
            workers: self
                .workers
                .iter()
                .map(|(id, w)| MachineWorker {
                    id: *id,
                    generation: w.generation,
                    pid: w.pid,
                    ready_ms_ago: w.ready_at.map(ago),
                    draining_ms_ago: if w.draining {
                        Some(w.drain_since.map_or(0, ago))
                    } else {
                        None
                    },
                })
                .collect(),
            next_worker: self.next_worker,
            next_generation: self.next_generation,
            standby: self.standby,
            recorded_exe: self.recorded_exe.clone(),
            backoff_ms: ms(self.backoff),
            restarts: self.restarts,
            last_restart: self.last_restart.clone(),
            stats: self.stats.clone(),
            recycle_tried_ms_ago: self.recycle_tried_at.map(ago),
            recycle_retry_ms: ms(self.recycle_retry),
        })
    }

    /// The machine a re-executed supervisor resumes with (in `Upgrading`; feed
    /// [`super::Event::Resumed`] next). `waiters` are the pending restart's, in order.
    pub(crate) fn restore(
        h: MachineHandover,
        waiters: Vec<R>,
        clock: fn() -> u64,
        now: Instant,
    ) -> Machine<R> {
        let back = |ms_ago: u64| {
            now.checked_sub(Duration::from_millis(ms_ago))
                .unwrap_or(now)
        };
        let workers = h
            .workers
            .iter()
            .map(|w| {
                (
                    w.id,
                    Worker {
                        generation: w.generation,
                        pid: w.pid,
                        ready_at: w.ready_ms_ago.map(back),
                        draining: w.draining_ms_ago.is_some(),
                        drain_since: w.draining_ms_ago.map(back),
                    },
                )
            })
            .collect();
        let p = h.pending;
        Machine {
            phase: Phase::Upgrading {
                current: h.current,
                pending: Pending {
                    asked_at: back(p.asked_ms_ago),
                    waiters,
                    trigger: Trigger::from_via(Some(&p.trigger)),
                    exe: p.exe,
                    old_pid: p.old_pid,
                },
            },
            settings: Settings {
                graceful: h.graceful,
                graceful_timeout: Duration::from_millis(h.graceful_timeout_ms),
                shutdown_timeout: Duration::from_millis(h.shutdown_timeout_ms),
                shutdown_delay: Duration::from_millis(h.shutdown_delay_ms),
                warm_standby: h.warm_standby,
            },
            worker_settings: h.worker_settings,
            workers,
            next_worker: h.next_worker,
            next_generation: h.next_generation,
            standby: h.standby,
            recorded_exe: h.recorded_exe,
            backoff: Duration::from_millis(h.backoff_ms),
            restarts: h.restarts,
            last_restart: h.last_restart,
            stats: h.stats,
            clock,
            // A failed recycle's wait goes on in the new image.
            recycle_tried_at: h.recycle_tried_ms_ago.map(back),
            recycle_retry: Duration::from_millis(h.recycle_retry_ms),
            out: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
