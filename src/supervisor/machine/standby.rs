//! The warm standby: a worker started ahead of the next restart, activated when it fits the
//! restart (same executable and config), stopped otherwise. After a handoff the next one starts
//! [`STANDBY_PAUSE`] later, not at once.

use super::*;

/// How long after a handoff the next standby starts. Its start-up (the supervisor's fork, the
/// child's exec and loading: milliseconds of CPU) would otherwise compete, on a small machine,
/// with the first connections of the generation just started and with the old one's reading of
/// its `drain` (it accepts until then). A restart asked for within the pause starts a fresh
/// worker, as without a standby.
pub(crate) const STANDBY_PAUSE: Duration = Duration::from_millis(20);

impl<R> Machine<R> {
    /// Activate the standby if it fits (else stop it); returns the worker now starting.
    pub(super) fn take_standby(&mut self, fits: bool) -> Option<WorkerId> {
        let worker = self.standby.take()?;
        let usable = fits && self.workers.get(&worker).is_some_and(|w| !w.draining);
        if !usable {
            self.stop_standby(worker);
            return None;
        }
        let generation = self.take_generation();
        if let Some(w) = self.workers.get_mut(&worker) {
            w.generation = Some(generation);
        }
        self.out.push(Action::Activate { worker, generation });
        self.arm(self.settings.graceful_timeout, Timer::ReadyDeadline(worker));
        Some(worker)
    }

    /// Stop a standby that was never activated: a kill of its process group, not a drain. It
    /// has served nothing, and what it runs may not be an apphost worker that would heed one.
    pub(super) fn stop_standby(&mut self, worker: WorkerId) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        if w.draining {
            return;
        }
        w.draining = true;
        self.out.push(Action::Kill {
            worker,
            why: KillReason::UnusedStandby,
        });
    }

    /// After a handoff: the next standby in [`STANDBY_PAUSE`] (when one is wanted).
    pub(super) fn standby_after_handoff(&mut self) {
        if self.settings.graceful && self.settings.warm_standby && self.standby.is_none() {
            self.arm(STANDBY_PAUSE, Timer::Standby);
        } else {
            self.spawn_standby();
        }
    }

    /// With `warm_standby` (and `graceful`), keep one worker started ahead of the next restart.
    pub(super) fn spawn_standby(&mut self) {
        let wanted = self.settings.graceful && self.settings.warm_standby;
        if !wanted {
            if let Some(s) = self.standby.take() {
                self.stop_standby(s);
            }
            return;
        }
        if self.standby.is_some() || !matches!(self.phase, Phase::Serving { .. }) {
            return;
        }
        let worker = self.new_worker(None);
        self.out.push(Action::Spawn {
            worker,
            generation: None,
            exe: self.recorded_exe.clone(),
        });
        self.standby = Some(worker);
    }
}
